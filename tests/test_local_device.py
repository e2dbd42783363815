"""Device profiles and the local backend: info, measurement in a child process, failures."""

from __future__ import annotations

import math
import random
import sys

import pytest

from akd_base.errors import DeviceError
from akd_base.measurement import MeasureSettings
from akd_mobile.export import export_model
from akd_mobile.space import get_space
from devices import local_runner
from devices.base import Device
from devices.local import LocalDevice
from devices.profiles import BACKENDS, list_profiles, load_profile, open_device

SMALL = get_space("mnasnet-small").sample(random.Random(1))


@pytest.fixture(scope="module")
def models():
    """The small arch in both formats (the session cache makes this a lookup after test_export)."""
    return {fmt: export_model(SMALL, fmt).path for fmt in ("tflite", "pte")}


def test_profiles_resolve_by_name_and_path(tmp_path):
    names = [p.name for p in list_profiles()]
    assert "local" in names
    device = open_device("local")
    assert isinstance(device, LocalDevice) and isinstance(device, Device) and device.name == "local"
    custom = tmp_path / "fast.toml"
    custom.write_text('backend = "local"\ndescription = "quick"\ntimeout_s = 7\nprocesses = 2\n')
    dev = open_device(str(custom))
    assert (dev.name, dev.timeout_s, dev.processes) == ("fast", 7.0, 2)
    assert load_profile(custom).description == "quick"


@pytest.mark.parametrize(
    "text, message",
    [
        ('backend = "local"\ntimeout_s = "soon"\n', "timeout_s must be a number"),
        ('backend = "local"\ncolour = "red"\n', r"unknown setting\(s\) colour"),
        ('backend = "telepathy"\n', "unknown backend 'telepathy'; known: .*local"),
        ('description = "no backend"\n', "needs backend = one of .*local"),
        ("backend = local\n", "not valid TOML"),
        ('backend = "local"\ntimeout_s = -1\n', "timeout_s must be positive"),
        ('backend = "local"\nprocesses = 0\n', "processes must be an integer >= 1"),
        ('backend = "local"\nprocesses = "3"\n', "processes must be an integer >= 1"),
        ('backend = "local"\nmin_time_s = -1\n', "bad.toml: min_time_s must be a number of seconds >= 0, got -1"),
        ('backend = "local"\nmin_time_s = "3"\n', "min_time_s must be a number of seconds >= 0"),
        ('backend = "local"\nmin_time_s = nan\n', "min_time_s must be a number of seconds >= 0"),
        ('backend = "local"\nruns = 0\n', "bad.toml: runs must be an integer >= 1, got 0"),
        ('backend = "local"\nthreads = 1.5\n', "bad.toml: threads must be an integer >= 1, got 1.5"),
        ('backend = "local"\nwarmup = -1\n', "bad.toml: warmup must be an integer >= 0, got -1"),
    ],
)
def test_bad_profiles_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DeviceError, match=message) as err:
        open_device(str(path))
    assert "\n" not in str(err.value)


def test_unknown_device_lists_known_ones(tmp_path):
    with pytest.raises(DeviceError, match=r"unknown device 'pixel9'; known: .*local"):
        open_device("pixel9")
    with pytest.raises(DeviceError, match="does not exist"):
        open_device(str(tmp_path / "missing.toml"))


def test_a_backend_is_one_registry_entry(monkeypatch, tmp_path):
    monkeypatch.setitem(BACKENDS, "twin", "devices.local:LocalDevice")
    (tmp_path / "twin.toml").write_text('backend = "twin"\n')
    assert isinstance(open_device(str(tmp_path / "twin.toml")), LocalDevice)


def test_info_describes_the_host():
    info = LocalDevice().info()
    assert info.backend == "local" and info.model and info.abi and info.cores >= 1
    assert set(info.runtimes) == {"litert", "executorch"}
    assert all(v[0].isdigit() for v in info.runtimes.values())
    assert info.fingerprint == LocalDevice("other-name").info().fingerprint
    assert len(info.fingerprint) == 16


@pytest.mark.parametrize("fmt", ["tflite", "pte"])
def test_measure_gives_sane_statistics(models, fmt):
    r = LocalDevice().measure(models[fmt], MeasureSettings(threads=1, warmup=3, runs=15)).result
    assert r.count == len(r.samples_ms) == 15
    assert all(math.isfinite(s) and s > 0 for s in r.samples_ms)
    assert 0 < r.min_ms <= r.median_ms <= r.p90_ms <= r.max_ms < 1000
    assert r.min_ms <= r.mean_ms <= r.max_ms and r.std_ms >= 0


@pytest.fixture
def child_commands(monkeypatch):
    """The command lines of the local device's child processes, recorded as they run."""
    import subprocess

    commands = []
    real_run = subprocess.run

    def recording_run(cmd, **kwargs):
        commands.append(cmd)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr("devices.local.subprocess.run", recording_run)
    return commands


def test_runs_are_split_over_processes_and_pooled(models, child_commands):
    r = LocalDevice(processes=3).measure(models["tflite"], MeasureSettings(threads=1, warmup=1, runs=7)).result
    assert [int(cmd[-3]) for cmd in child_commands] == [3, 2, 2] and r.count == 7  # each child's share of the runs
    child_commands.clear()
    assert LocalDevice(processes=3).measure(models["tflite"], MeasureSettings(threads=1, warmup=0, runs=2)).result.count == 2
    assert [int(cmd[-3]) for cmd in child_commands] == [1, 1]  # never an empty share
    with pytest.raises(DeviceError, match="processes must be an integer >= 1"):
        LocalDevice(processes=0)


@pytest.mark.parametrize("fmt", ["tflite", "pte"])
def test_timed_runs_go_on_until_the_minimum_time(models, child_commands, fmt):
    r = LocalDevice(processes=2).measure(models[fmt], MeasureSettings(threads=1, warmup=1, runs=2, min_time_s=0.4)).result
    assert [float(cmd[-2]) for cmd in child_commands] == [0.2, 0.2]  # each child's share of the minimum time
    # the tiny model takes well under 0.1 s a run: far more than 2 runs were needed
    assert r.count == len(r.samples_ms) > 4 and sum(r.samples_ms) >= 400
    # the runs are a minimum too: a model slower than the minimum time still runs `runs` times
    _, timed = local_runner.time_model(models[fmt], 1, 0, 3, min_time_s=1e-6)
    assert len(timed) == 3


def test_runner_reports_its_warmup_apart(models):
    warm, timed = local_runner.time_model(models["tflite"], 1, 2, 3)
    assert len(warm) == 2 and len(timed) == 3 and all(s > 0 for s in warm + timed)


def test_executorch_threads_are_set(models):
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    invoke = local_runner._pte(models["pte"], threads=2)
    assert _threadpool_get_thread_count() == 2
    invoke()
    _unsafe_reset_threadpool(1)


@pytest.mark.parametrize("suffix", [".tflite", ".pte"])
def test_corrupt_and_empty_models_are_one_line_errors(tmp_path, suffix):
    device = LocalDevice()
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(DeviceError, match="is empty"):
        device.measure(empty, MeasureSettings(threads=1, warmup=0, runs=1))
    corrupt = tmp_path / f"corrupt{suffix}"
    corrupt.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(DeviceError, match=f"corrupt{suffix} is not a .* model") as err:
        device.measure(corrupt, MeasureSettings(threads=1, warmup=0, runs=1))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fmt", ["tflite", "pte"])
def test_truncated_model_fails_in_the_child_not_here(models, tmp_path, fmt):
    truncated = tmp_path / f"truncated.{fmt}"
    truncated.write_bytes(models[fmt].read_bytes()[:2048])
    with pytest.raises(DeviceError, match=f"(local cannot run|the runtime crashed measuring) truncated.{fmt}") as err:
        LocalDevice().measure(truncated, MeasureSettings(threads=1, warmup=0, runs=1))
    assert "\n" not in str(err.value)


def test_bad_arguments(tmp_path, models):
    device = LocalDevice()
    with pytest.raises(DeviceError, match="does not exist"):
        device.measure(tmp_path / "none.tflite", MeasureSettings(threads=1, warmup=0, runs=1))
    with pytest.raises(DeviceError, match="expected a .tflite or .pte file"):
        device.measure(tmp_path / "model.onnx", MeasureSettings(threads=1, warmup=0, runs=1))
    with pytest.raises(DeviceError, match="threads must be an integer >= 1, got 0"):
        MeasureSettings(threads=0)
    for bad in (-0.5, math.nan, math.inf, "1", True):
        with pytest.raises(DeviceError, match="min_time_s must be a number of seconds >= 0"):
            MeasureSettings(min_time_s=bad)


def test_runner_is_ours_whatever_the_cwd(models, monkeypatch, tmp_path):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "__init__.py").write_text("raise SystemExit('imported the wrong devices package')\n")
    monkeypatch.chdir(tmp_path)
    assert LocalDevice().measure(models["tflite"], MeasureSettings(threads=1, warmup=0, runs=2)).result.count == 2


def test_hang_is_killed_after_the_timeout(models):
    with pytest.raises(DeviceError, match=r"took over 0.5 s and was stopped"):
        LocalDevice(timeout_s=0.5).measure(models["tflite"], MeasureSettings(threads=1, warmup=0, runs=1_000_000))


def test_crash_is_reported_not_propagated(models, monkeypatch, tmp_path):
    crasher = tmp_path / "crash.sh"
    crasher.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crasher.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crasher))
    with pytest.raises(DeviceError, match=r"the runtime crashed measuring .* \(killed by SIGSEGV\)"):
        LocalDevice().measure(models["tflite"], MeasureSettings(threads=1, warmup=0, runs=1))
