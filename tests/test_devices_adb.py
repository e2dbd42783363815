"""The `adb` backend, end to end against the loopback daemon, and its failure paths."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from akd_base.errors import DeviceError, DeviceUnavailable, ParseError
from akd_base.measurement import MeasureSettings
from devices.adb import AdbDevice, AdbSettings
from devices.adb_keys import generate_key, load_signer, public_key_line
from akd_mobile.device_check import check_model
from devices_support import KillingProxy, SilentServer, free_port, loopback_device, make_key


@pytest.fixture(scope="module")
def tiny_tflite() -> Path:
    return check_model("tflite")


@pytest.fixture()
def device(served, key: Path):
    dev = loopback_device(served.port, key)
    dev.setup()
    yield dev
    dev.close()


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown setting"),
        ({"serial": "ABC"}, "exactly one of address"),
        ({"address": ""}, "exactly one of address"),
        ({"address": "localhost"}, "host:port"),
        ({"retries": "2"}, "retries must be a int"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"threads": 1}, "unknown setting"),  # measurement settings are the profile's, not the backend's
        ({"cpu_mask": "zz"}, "cpu_mask"),
        ({"remote_dir": "data/tmp"}, "remote_dir"),
        ({"tools": {"onnx": {"path": "x", "kind": "benchmark_model"}}}, "formats are"),
        ({"tools": {"tflite": {"path": "x", "kind": "perf"}}}, "kind = one of"),
        ({"tools": {"tflite": {"path": "x", "kind": "benchmark_model", "flags": "-v"}}}, "unknown key"),
    ],
)
def test_bad_settings_are_refused(change: dict, message: str) -> None:
    data = {"address": "127.0.0.1:5555", **change}
    with pytest.raises(DeviceError, match=message):
        AdbSettings.from_dict(data, "profile x")


# ---------------------------------------------------------------- over loopback


def test_info_over_loopback(device: AdbDevice) -> None:
    info = device.info()
    assert info.backend == "adb"
    assert info.model == "akd-loopback"
    assert info.cores >= 1
    assert set(info.runtimes) == {"litert", "executorch"}
    assert info.extra["build_fingerprint"].startswith("akd-mobile/loopback/")
    assert info.fingerprint == loopback_device(int(device.target.split(":")[1]), Path(device.settings.key)).info().fingerprint


def test_setup_pushes_once_and_measure_needs_it(served, key: Path, tiny_tflite: Path) -> None:
    dev = loopback_device(served.port, key)
    with pytest.raises(DeviceError, match="devices setup"):
        dev.measure(tiny_tflite, MeasureSettings(threads=1, warmup=1, runs=3))
    first = dev.setup()
    assert [r["pushed"] for r in first] == [True, False]  # one runner serves both formats
    tool = served.root / first[0]["remote"].lstrip("/")
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert [r["pushed"] for r in loopback_device(served.port, key).setup()] == [False, False]
    tool.write_text("#!/bin/sh\necho tampered\n")
    with pytest.raises(DeviceError, match="differs"):
        loopback_device(served.port, key).measure(tiny_tflite, MeasureSettings(threads=1, warmup=1, runs=3))
    dev.close()


def test_measure_over_loopback_removes_the_model(device: AdbDevice, served, tiny_tflite: Path, monkeypatch) -> None:
    mask = 1 << min(os.sched_getaffinity(0))
    pinned = loopback_device(served.port, Path(device.settings.key), cpu_mask=f"{mask:x}")
    commands: list[str] = []
    shell = AdbDevice._shell
    monkeypatch.setattr(AdbDevice, "_shell", lambda self, c, t=30.0: (commands.append(c), shell(self, c, t))[1])
    measured = pinned.measure(tiny_tflite, MeasureSettings(threads=1, warmup=2, runs=7))
    result = measured.result
    assert result.count == 7
    assert 0 < result.min_ms <= result.median_ms <= result.max_ms
    run = next(c for c in commands if "--graph=" in c)
    assert f"taskset {mask:x} " in run and "--num_threads=1" in run and "--num_runs=7" in run and "--warmup_runs=2" in run
    assert "--min_secs=0 " in f"{run} "
    assert measured.conditions["cpu_mask"] == f"{mask:x}" and measured.conditions["attempts"] == 1
    left = [p.name for p in (served.root / "data/local/tmp/akd").iterdir()]
    assert left == ["tools"]
    pinned.close()


def test_min_time_is_benchmark_models_min_secs(device: AdbDevice, tiny_tflite: Path, monkeypatch) -> None:
    commands: list[str] = []
    shell = AdbDevice._shell
    monkeypatch.setattr(AdbDevice, "_shell", lambda self, c, t=30.0: (commands.append(c), shell(self, c, t))[1])
    result = device.measure(tiny_tflite, MeasureSettings(threads=1, warmup=1, runs=3, min_time_s=0.3)).result
    assert "--min_secs=0.3" in next(c for c in commands if "--graph=" in c)
    # the loopback runner honours it as benchmark_model does: the tiny model ran far past 3 runs
    assert result.count > 3 and result.count * result.mean_ms >= 299  # the tool prints the mean rounded


def test_loopback_runner_reads_benchmark_models_flags(tiny_tflite: Path, capsys) -> None:
    from devices.loopback_runner import main
    from devices.parsers import parse_tool_output

    assert main([f"--graph={tiny_tflite}", "--num_runs=2", "--warmup_runs=1", "--min_secs=0.2"]) == 0
    result = parse_tool_output("benchmark_model", capsys.readouterr().out)
    assert result.count > 2 and result.count * result.mean_ms >= 199  # the mean is printed rounded
    assert main([f"--graph={tiny_tflite}", "--num_runs=2", "--min_secs=-1"]) == 1
    assert "ERROR: need --num_runs >= 1, --warmup_runs >= 0, --num_threads >= 1, --min_secs >= 0" in capsys.readouterr().out


def test_push_is_skipped_when_the_same_file_is_there(device: AdbDevice, served, tiny_tflite: Path, monkeypatch) -> None:
    from akd_base.files import file_sha256

    remote = served.root / f"data/local/tmp/akd/{file_sha256(tiny_tflite)[:16]}.tflite"
    remote.write_bytes(tiny_tflite.read_bytes())
    pushes: list[str] = []
    monkeypatch.setattr(AdbDevice, "_push", lambda self, local, r, mode=0o644: pushes.append(r))
    assert device.measure(tiny_tflite, MeasureSettings(threads=1, warmup=1, runs=3)).result.count == 3
    assert pushes == []
    assert not remote.exists()


def test_thermal_gate_waits_then_records(device: AdbDevice, tiny_tflite: Path, monkeypatch) -> None:
    readings = iter([{"cpu": 99.0}, {"cpu": 99.0}, {"cpu": 40.0}])
    monkeypatch.setattr(device, "thermal", lambda: next(readings))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    conditions = device.measure(tiny_tflite, MeasureSettings(threads=1, warmup=1, runs=3)).conditions
    assert conditions["thermal_c"] == 40.0 and not conditions["thermal_over_limit"]
    monkeypatch.setattr(device, "thermal", lambda: {"cpu": 99.0, "battery": 30.0})
    conditions = device.measure(tiny_tflite, MeasureSettings(threads=1, warmup=1, runs=3)).conditions
    assert conditions["thermal_c"] == 99.0 and conditions["thermal_over_limit"]
    assert conditions["thermal_waited_s"] >= 0


def test_tool_without_timing_is_a_parse_error_quoting_it(served, key: Path, tiny_tflite: Path, tmp_path: Path) -> None:
    tool = tmp_path / "benchmark_model"
    tool.write_text("#!/bin/sh\necho 'INFO: Loaded model'\necho 'ERROR: Node number 3 (CONV_2D) failed to invoke.'\nexit 3\n")
    dev = loopback_device(served.port, key, tools={"tflite": {"path": str(tool), "kind": "benchmark_model"}})
    dev.setup()
    with pytest.raises(ParseError, match=r"exited with status 3: no timing .*Loaded model \| ERROR: Node number 3"):
        dev.measure(tiny_tflite, MeasureSettings(threads=1, warmup=1, runs=3))
    assert [p.name for p in (served.root / "data/local/tmp/akd").iterdir()] == ["tools"]
    dev.close()


def test_executor_runner_flags_and_warmup_drop(served, key: Path, tmp_path: Path, monkeypatch) -> None:
    pte = check_model("pte")
    tool = tmp_path / "executor_runner"
    tool.write_text(
        "#!/bin/sh\n"
        'echo "args: $*"\n'
        'n=$(echo "$*" | sed -n "s/.*--num_executions=\\([0-9]*\\).*/\\1/p")\n'
        "i=1\n"
        'while [ $i -le $n ]; do echo "I 00:00:01.0 executorch:executor_runner.cpp:705] Iteration $i of $n: $((i * 10)).5 ms"; i=$((i + 1)); done\n'
    )
    dev = loopback_device(served.port, key, tools={"pte": {"path": str(tool), "kind": "executor_runner"}})
    dev.setup()
    commands: list[str] = []
    shell = AdbDevice._shell
    monkeypatch.setattr(AdbDevice, "_shell", lambda self, c, t=30.0: (commands.append(c), shell(self, c, t))[1])
    result = dev.measure(pte, MeasureSettings(threads=2, warmup=2, runs=3)).result
    assert result.samples_ms == (30.5, 40.5, 50.5)  # the two warm-up iterations dropped
    run = next(c for c in commands if "--model_path=" in c)
    assert "--num_executions=5" in run and "--cpu_threads=2" in run
    # no --min_secs in executor_runner: a second pass with the count the first implies
    commands.clear()
    result = dev.measure(pte, MeasureSettings(threads=1, warmup=2, runs=3, min_time_s=1.0)).result
    runs = [c for c in commands if "--model_path=" in c]
    assert len(runs) == 2 and "--num_executions=5" in runs[0]
    assert "--num_executions=27" in runs[1]  # 2 warm-up + ceil(1000 ms / 40.5 ms mean of the first pass)
    assert result.count == 25 and result.samples_ms[0] == 30.5 and sum(result.samples_ms) >= 1000
    commands.clear()
    assert dev.measure(pte, MeasureSettings(threads=1, warmup=2, runs=3, min_time_s=0.1)).result.count == 3  # 121.5 ms already
    assert len([c for c in commands if "--model_path=" in c]) == 1
    dev.close()


def test_pte_over_loopback_with_the_runner(device: AdbDevice) -> None:
    result = device.measure(check_model("pte"), MeasureSettings(threads=1, warmup=1, runs=4)).result
    assert result.count == 4 and result.median_ms > 0


# ---------------------------------------------------------------- faults


def _db(tmp_path: Path):
    from latency_db import open_db

    return open_db(tmp_path / "latency.sqlite")


def test_connection_killed_mid_measurement_is_retried_then_reported(served, key: Path, tiny_tflite: Path, tmp_path: Path) -> None:
    from akd_mobile.latency import LatencyService

    loopback_device(served.port, key).setup()
    proxy = KillingProxy(served.port, b"--graph=")
    dev = loopback_device(proxy.port, key, retries=2)
    with _db(tmp_path) as db:
        service = LatencyService(dev, db, MeasureSettings(threads=1, warmup=1, runs=3))
        with pytest.raises(DeviceUnavailable, match="failed after 3 attempt"):
            service.measure_file(tiny_tflite)
        assert db.stats().measurements == 0
    assert proxy.kills == 3
    proxy.close()


def test_connection_killed_once_is_retried(served, key: Path, tiny_tflite: Path, tmp_path: Path) -> None:
    import json
    import sqlite3

    from akd_mobile.latency import LatencyService

    loopback_device(served.port, key).setup()
    proxy = KillingProxy(served.port, b"--graph=", kills=1)
    dev = loopback_device(proxy.port, key)
    with _db(tmp_path) as db:
        service = LatencyService(dev, db, MeasureSettings(threads=1, warmup=1, runs=3))
        new = service.measure_file(tiny_tflite)
        out = service.store(new)
        assert out.result.count == 3 and new.conditions["attempts"] == 2
        assert db.stats().measurements == 1
    stored = sqlite3.connect(tmp_path / "latency.sqlite").execute("SELECT thermal FROM measurements").fetchone()[0]
    assert json.loads(stored) == new.conditions
    proxy.close()


def test_device_that_never_answers_times_out(key: Path) -> None:
    silent = SilentServer()
    dev = loopback_device(silent.port, key, connect_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(DeviceUnavailable, match=r"did not answer within 0.5 s"):
        dev.info()
    assert time.monotonic() - start < 5
    silent.close()


def test_nothing_listening(key: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="nothing listens"):
        loopback_device(free_port(), key).info()


def test_unknown_key_is_a_clear_error(served, tmp_path: Path) -> None:
    stranger = make_key(tmp_path / "stranger")
    with pytest.raises(DeviceError, match="did not accept the ADB key"):
        loopback_device(served.port, stranger, connect_timeout_s=2).info()


def test_usb_held_by_the_adb_server_says_how_to_fix(key: Path, monkeypatch) -> None:
    import adb_shell.adb_device

    class Busy:
        def __init__(self, **kwargs):
            pass

        def connect(self, **kwargs):
            raise OSError("LIBUSB_ERROR_BUSY [-6]")

        def close(self):
            pass

    monkeypatch.setattr(adb_shell.adb_device, "AdbDeviceUsb", Busy)
    dev = AdbDevice("pixel", AdbSettings.from_dict({"serial": "", "key": str(key)}, "p"))
    with pytest.raises(DeviceError, match="adb kill-server"):
        dev.connect()


# ---------------------------------------------------------------- keys


def test_keygen_writes_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key = generate_key(tmp_path / "k" / "adbkey")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Path(f"{key}.pub").read_text() == public_key_line(key)
    with pytest.raises(DeviceError, match="--force"):
        generate_key(key)
    before = key.read_bytes()
    generate_key(key, force=True)
    assert key.read_bytes() != before and stat.S_IMODE(key.stat().st_mode) == 0o600
    Path(f"{key}.pub").unlink()
    assert load_signer(key).GetPublicKey().startswith(public_key_line(key).split()[0])


def test_missing_keys_say_what_to_do(tmp_path: Path, monkeypatch) -> None:
    from devices.adb_keys import default_key_path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("ANDROID_USER_HOME", raising=False)
    with pytest.raises(DeviceError, match="devices keygen"):
        default_key_path()
    (tmp_path / "bad").write_text("junk")
    with pytest.raises(DeviceError, match="cannot"):
        load_signer(tmp_path / "bad")


# ---------------------------------------------------------------- a real device


@pytest.mark.device
def test_real_device_check() -> None:
    """Against a real phone or emulator: AKD_DEVICE=pixel (or a .toml path) pytest -m device."""
    name = os.environ.get("AKD_DEVICE")
    if not name:
        pytest.skip("set AKD_DEVICE to a device profile to run against a real phone or emulator")
    from akd_mobile.device_check import check_device
    from devices.manage import setup_device
    from devices.profiles import open_device

    info = open_device(name).info()
    assert info.model and info.abi
    setup_device(name)
    r = check_device(name, "tflite")
    assert r["latency"]["count"] == r["runs"]
