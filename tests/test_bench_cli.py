"""The measurement service (`LatencyService`: what the search, bench, finalize and devices check
ask) and the `bench`, `export` and `latency` commands."""

from __future__ import annotations

import json
import random
import time

import pytest
from click.testing import CliRunner

from akd_base.errors import DatabaseError, DeviceError
from akd_mobile.export import export_model
from akd_mobile.latency import LatencyService, runtime_version
from akd_mobile.space import get_space
from cli import cli
from akd_base.measurement import DeviceInfo, MeasureSettings
from devices.local import LocalDevice
from latency_db import open_db

SMALL = get_space("mnasnet-small").sample(random.Random(1))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_the_service_measures_once_then_answers_from_the_db(tmp_path, monkeypatch):
    device = LocalDevice()
    with open_db(tmp_path / "l.sqlite") as db:
        lookups = []
        real_lookup = db.lookup
        monkeypatch.setattr(db, "lookup", lambda *key: (lookups.append(key), real_lookup(*key))[1])
        service = LatencyService(device, db, MeasureSettings(threads=1, warmup=2, runs=10))
        assert service.lookup(SMALL) is None  # the search's prefetch asks first ...
        first = service.latency(SMALL)  # ... and its evaluation does not ask the database again
        assert len(lookups) == 1
        assert not first.cached and first.artifact is not None and first.measure_s > 0
        assert first.result.count == 10 and first.arch_key == SMALL.key
        again = service.latency(SMALL)
        assert again.cached and again.artifact is None and again.export_s == again.measure_s == 0.0
        assert again.result == first.result and len(lookups) == 1
        assert db.stats().measurements == 1
        (m,) = db.query()
        assert (m.arch_key, m.runtime_version, m.threads, m.warmup, m.runs) == (SMALL.key, first.runtime_version, 1, 2, 10)
        assert db.artifacts()[0]["arch_json"]["arch"] == SMALL.canonical
        # another service (another process) finds the stored measurement, with other counts too
        other = LatencyService(device, db, MeasureSettings(threads=1, warmup=0, runs=3)).latency(SMALL)
        assert other.cached and other.result == first.result and db.stats().measurements == 1
        # measure() always measures and stores nothing until store()
        service.measure(SMALL)
        assert db.stats().measurements == 1
    only_measures = LatencyService(device, None, MeasureSettings(runs=2, warmup=0))
    assert only_measures.lookup(SMALL) is None
    with pytest.raises(DatabaseError, match="no database"):
        only_measures.store(only_measures.measure(SMALL))


def test_measurement_settings_resolve_from_profile_then_options(tmp_path):
    """One resolution: the defaults, the profile's keys over them, the command's options over those."""
    from devices.profiles import load_profile

    assert load_profile("local").measure == MeasureSettings("tflite", 1, 5, 30, 3.0)  # local.toml's values
    profile = tmp_path / "quick.toml"
    profile.write_text('backend = "local"\nprocesses = 1\nthreads = 2\nwarmup = 1\nruns = 4\nmin_time_s = 0\n')
    assert load_profile(profile).measure == MeasureSettings(threads=2, warmup=1, runs=4)
    assert load_profile(profile).measure.with_options(fmt="pte", runs=None, warmup=0) == MeasureSettings("pte", 2, 0, 4, 0.0)
    db = tmp_path / "s.sqlite"
    d = json.loads(run("bench", SMALL.canonical, "--device", profile, "--warmup", 0, "--db", db, "--json").stdout)
    assert (d["threads"], d["warmup"], d["runs"], d["min_time_s"], d["count"]) == (2, 0, 4, 0.0, 4)
    d = json.loads(run("bench", SMALL.canonical, "--device", profile, "--runs", 6, "--threads", 1, "--db", db,
                       "--json").stdout)
    assert (d["threads"], d["warmup"], d["runs"], d["count"]) == (1, 1, 6, 6)


def test_runtime_version_names_the_runtime():
    info = DeviceInfo("local", "x", "x", "x86_64", 1, runtimes={"litert": "2.3.0"})
    assert runtime_version(info, "tflite") == "litert 2.3.0"
    with pytest.raises(DeviceError, match="no executorch runtime"):
        runtime_version(info, "pte")


def test_bench_arch_and_file_store_and_print(tmp_path):
    from devices.profiles import load_profile

    db = tmp_path / "b.sqlite"
    r = run("bench", SMALL.canonical, "--format", "pte", "--runs", 5, "--warmup", 1, "--db", db, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["arch_key"], d["format"], d["device"], d["cached"]) == (SMALL.key, "pte", "local", False)
    assert 0 < d["min_ms"] <= d["median_ms"] <= d["max_ms"]
    # the profile's minimum time applies: the tiny model ran well past its 5 runs
    profile_min = load_profile("local").measure.min_time_s
    assert profile_min > 0 and d["min_time_s"] == profile_min
    assert d["count"] > 5 and sum(d["samples_ms"]) >= profile_min * 1e3
    model = export_model(SMALL, "pte").path  # a cache lookup: bench exported it
    r = run("bench", model, "--runs", 5, "--warmup", 1, "--min-time", 0, "--db", db, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["arch_key"] == SMALL.key and d["count"] == 5  # arch known from the earlier export's bytes
    text = run("bench", model, "--runs", 3, "--warmup", 0, "--min-time", 0.2, "--db", db)
    assert text.exit_code == 0 and text.stdout.startswith(f"{SMALL.key}  pte  local  threads 1  median ")
    rows = json.loads(run("latency", "query", "--db", db, "--format", "pte", "--json").stdout)
    assert len(rows) == 3 and {row["arch_key"] for row in rows} == {SMALL.key}
    assert sorted(row["min_time_s"] for row in rows) == sorted([profile_min, 0.0, 0.2])
    assert all(row["count"] == len(row["samples_ms"]) > 0 for row in rows)


def test_export_command(tmp_path):
    out = tmp_path / "m.tflite"
    r = run("export", SMALL.canonical, "--format", "tflite", "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert out.stat().st_size == d["size_bytes"] and d["arch_key"] == SMALL.key and d["max_abs_diff"] < 1e-3


def test_latency_commands(tmp_path):
    from akd_base.measurement import LatencyResult

    db_path = tmp_path / "q.sqlite"
    info = DeviceInfo("local", "Xeon", "Xeon", "x86_64", 2)
    with open_db(db_path) as db:
        for key, ms in [("aa", 4.0), ("bb", 12.0), ("cc", 25.0)]:
            db.record(info, LatencyResult.from_samples([ms]), fmt="tflite", threads=1, warmup=0, runs=1,
                      runtime_version="litert 2.3.0", arch_key=key, device_name="local")
    rows = json.loads(run("latency", "query", "--db", db_path, "--min-ms", 5, "--max-ms", 20, "--json").stdout)
    assert [r["arch_key"] for r in rows] == ["bb"]
    assert "aa" in run("latency", "query", "--db", db_path, "--device", "local", "--limit", 1).stdout
    assert run("latency", "query", "--db", db_path, "--device", "pixel").stdout.strip() == "no measurements match"
    stats = json.loads(run("latency", "stats", "--db", db_path, "--json").stdout)
    assert (stats["measurements"], stats["archs"], stats["devices"]) == (3, 3, 1)
    assert "3 measurements" in run("latency", "stats", "--db", db_path).stdout
    for flag, name in [("--csv", "x.csv"), ("--json", "x.json")]:
        r = run("latency", "export", flag, tmp_path / name, "--db", db_path)
        assert r.exit_code == 0 and r.stdout.startswith("exported 3 measurements")
        imported = json.loads(run("latency", "import", tmp_path / name, "--db", tmp_path / f"{name}.sqlite",
                                  "--json").stdout)
        assert imported == {"added": 3, "skipped": 0}
        assert run("latency", "import", tmp_path / name, "--db", db_path).stdout.startswith("added 0, skipped 3")


@pytest.mark.parametrize(
    "args, message",
    [
        (["latency", "query", "--max-ms", "-1"], "--max-ms must be a non-negative"),
        (["latency", "query", "--min-ms", "9", "--max-ms", "2"], "is above --max-ms"),
        (["latency", "query", "--min-ms", "nan"], "--min-ms must be a non-negative"),
        (["latency", "query", "--limit", "0"], "--limit must be at least 1"),
        (["latency", "query", "--format", "onnx"], "Invalid value for '--format'"),
        (["latency", "query", "--max-ms", "fast"], "Invalid value for '--max-ms'"),
        (["latency", "import", "missing.csv"], "import file missing.csv does not exist"),
        (["latency", "export"], "give exactly one of --csv FILE or --json FILE"),
        (["latency", "export", "--csv", "a.csv", "--json", "a.json"], "give exactly one of"),
        (["bench", "missing.tflite"], "model file missing.tflite does not exist"),
        (["bench", "model.onnx"], "unknown token|blocks joined by"),
        (["bench", "empty.tflite"], "model file empty.tflite is empty"),
        (["bench", "empty.tflite", "--format", "pte"], "--format pte does not match the file"),
        (["bench", "x", "--device", "pixel9"], "unknown device 'pixel9'; known: .*local"),
        (["bench", "x", "--format", "onnx"], "Invalid value for '--format'"),
        (["bench", "x", "--runs", "0"], "Invalid value for '--runs'"),
        (["bench", "x", "--min-time", "-1"], "--min-time must be a number of seconds >= 0, got -1.0"),
        (["bench", "x", "--min-time", "nan"], "--min-time must be a number of seconds >= 0, got nan"),
        (["export", "mb6", "--format", "tflite", "--out", "m.tflite"], "blocks joined by"),
        (["export", "mb6", "--format", "onnx", "--out", "m.onnx"], "Invalid value for '--format'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, monkeypatch, args, message):
    import re

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.tflite").write_bytes(b"")
    r = run(*args, "--db", tmp_path / "l.sqlite") if args[0] == "latency" and args[1] != "import" else run(*args)
    assert r.exit_code == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    assert re.search(message, r.stderr), r.stderr


def test_export_out_is_checked_before_exporting(tmp_path):
    start = time.perf_counter()
    r = run("export", SMALL.canonical, "--format", "pte", "--out", tmp_path / "m.tflite")
    assert r.exit_code == 2 and "must end in .pte" in r.stderr
    r = run("export", SMALL.canonical, "--format", "pte", "--out", tmp_path / "no" / "m.pte")
    assert r.exit_code == 2 and "does not exist; create it first" in r.stderr
    assert time.perf_counter() - start < 2.0
