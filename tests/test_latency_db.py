"""The SQLite latency database: schema, record/lookup/query, crashes, concurrency, import/export."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from akd_base.errors import DatabaseError
from akd_base.measurement import DeviceInfo, LatencyResult
from latency_db import open_db
from latency_db import schema
from latency_db.store import Artifact, check_query, default_db_path
from latency_db.transfer import export_measurements, import_measurements

PHONE = DeviceInfo("adb", "Pixel 8", "Tensor G3", "arm64-v8a", 9, (1700000,) * 4, {"litert": "2.3.0"})
HOST = DeviceInfo("local", "Xeon", "Xeon", "x86_64", 2, (), {"litert": "2.3.0", "executorch": "1.5.1"})

# A writer process: record N rows (a short pause after each with "pace"), then with "hang"
# stop inside an open transaction.
WRITER = """
import sys, time
from akd_base.measurement import DeviceInfo, LatencyResult
from latency_db import open_db
import os
path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
info = DeviceInfo("local", "Xeon", "Xeon", "x86_64", 2)
while not os.path.exists(path + ".go"):  # start line: writers open and write at the same moment
    time.sleep(0.005)
db = open_db(path)
for i in range(n):
    r = LatencyResult.from_samples([1.0 + i % 7, 2.0, 3.0])
    db.record(info, r, fmt="tflite", threads=1, warmup=0, runs=3, runtime_version="litert 2.3.0",
              arch_key=f"{tag}{i:05d}")
    print(i, flush=True)
    if sys.argv[4:] == ["pace"]:
        time.sleep(0.002)
if sys.argv[4:] == ["hang"]:
    with db.transaction() as conn:
        conn.execute("INSERT INTO measurements (uid, arch_key, format, device_fingerprint, runtime_version, "
                     "threads, warmup, runs, median_ms, mean_ms, std_ms, min_ms, max_ms, samples_json, measured_at) "
                     "VALUES ('half', 'half', 'tflite', ?, 'litert', 1, 0, 1, 1, 1, 0, 1, 1, '[1]', 'now')",
                     (info.fingerprint,))
        print("inside", flush=True)
        time.sleep(600)
"""


def _writer(path, tag, n, *extra, go=True):
    if go:
        open(f"{path}.go", "w").close()
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(n), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _record(db, info=HOST, arch_key="a1", fmt="tflite", threads=1, runtime="litert 2.3.0", samples=(1.0, 2.0, 4.0),
            artifact=None, min_time_s=None):
    r = LatencyResult.from_samples(list(samples))
    return db.record(info, r, fmt=fmt, threads=threads, warmup=2, runs=len(samples), runtime_version=runtime,
                     arch_key=arch_key, artifact=artifact, device_name=info.backend, min_time_s=min_time_s)


def test_new_database_is_wal_at_latest_version(tmp_path):
    with open_db(tmp_path / "sub" / "l.sqlite") as db:
        assert db.schema_version == len(schema.MIGRATIONS)
        assert db.read("PRAGMA journal_mode")[0][0] == "wal"
        assert db.read("PRAGMA busy_timeout")[0][0] >= 10_000
        assert db.read("PRAGMA user_version")[0][0] == len(schema.MIGRATIONS)
    assert open_db(tmp_path / "sub" / "l.sqlite").schema_version == len(schema.MIGRATIONS)


def test_default_path_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AKD_DB", str(tmp_path / "x.sqlite"))
    assert default_db_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("AKD_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db_path() == tmp_path / "akd-mobile" / "latency.sqlite"


def test_appended_migration_upgrades_and_keeps_rows(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite"
    with open_db(path) as db:
        _record(db)
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, "CREATE TABLE test_extra (id INTEGER PRIMARY KEY);"])
    with open_db(path) as db:
        assert db.schema_version == len(schema.MIGRATIONS)
        assert db.read("SELECT count(*) FROM test_extra")[0][0] == 0
        assert db.lookup("a1", "tflite", HOST.fingerprint, 1, "litert 2.3.0") is not None
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    with pytest.raises(DatabaseError, match="newer than this akd-mobile"):
        open_db(path)


def test_version_2_database_gains_min_time_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path)
    for script in schema.MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute("INSERT INTO devices VALUES (?, 'local', 'local', 'Xeon', 'Xeon', 'x86_64', 2, '{}', 'then', 'then')",
                 (HOST.fingerprint,))
    conn.execute("INSERT INTO measurements (uid, arch_key, format, device_fingerprint, runtime_version, threads, "
                 "warmup, runs, median_ms, mean_ms, std_ms, min_ms, max_ms, samples_json, measured_at) "
                 "VALUES ('old', 'a1', 'tflite', ?, 'litert 2.3.0', 1, 0, 2, 1.5, 1.5, 0.5, 1, 2, '[1, 2]', 'then')",
                 (HOST.fingerprint,))
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with open_db(path) as db:
        assert db.schema_version == len(schema.MIGRATIONS) >= 3
        (old,) = db.query()
        assert old.uid == "old" and old.min_time_s is None and old.result.count == 2
        _record(db, arch_key="a2", min_time_s=3.0)
        assert {m.arch_key: m.min_time_s for m in db.query()} == {"a1": None, "a2": 3.0}


def test_stored_count_is_the_samples_not_the_runs_asked_for(tmp_path):
    with open_db(tmp_path / "l.sqlite") as db:
        db.record(HOST, LatencyResult.from_samples([1.0] * 9), fmt="tflite", threads=1, warmup=0, runs=3,
                  runtime_version="litert 2.3.0", arch_key="a1", min_time_s=0.5)
        hit = db.lookup("a1", "tflite", HOST.fingerprint, 1, "litert 2.3.0")
        assert hit.count == 9
        (m,) = db.query()
        assert (m.runs, m.min_time_s, m.result.count) == (3, 0.5, 9)


def test_statement_splitting_keeps_semicolons_in_strings():
    script = "CREATE TABLE t (a TEXT DEFAULT 'x;y'); -- note; here\nINSERT INTO t VALUES ('1;2');\n"
    assert schema._statements(script) == ["CREATE TABLE t (a TEXT DEFAULT 'x;y');",
                                          "-- note; here\nINSERT INTO t VALUES ('1;2');"]


def test_not_a_database_is_one_line_error(tmp_path):
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="is not a usable latency database") as err:
        open_db(bad)
    assert "\n" not in str(err.value)


def test_record_and_lookup(tmp_path):
    with open_db(tmp_path / "l.sqlite") as db:
        assert db.lookup("a1", "tflite", HOST.fingerprint, 1, "litert 2.3.0") is None
        art = Artifact("f" * 64, "tflite", 1234, {"space": "mnasnet-small", "key": "a1"}, "litert-torch 0.10.0")
        _record(db, samples=(3.0, 1.0, 2.0), artifact=art)
        hit = db.lookup("a1", "tflite", HOST.fingerprint, 1, "litert 2.3.0")
        assert hit == LatencyResult.from_samples([3.0, 1.0, 2.0])
        for other in [("a2", "tflite", HOST.fingerprint, 1, "litert 2.3.0"),
                      ("a1", "pte", HOST.fingerprint, 1, "litert 2.3.0"),
                      ("a1", "tflite", PHONE.fingerprint, 1, "litert 2.3.0"),
                      ("a1", "tflite", HOST.fingerprint, 2, "litert 2.3.0"),
                      ("a1", "tflite", HOST.fingerprint, 1, "litert 2.4.0")]:
            assert db.lookup(*other) is None
        _record(db, samples=(5.0,))
        assert db.lookup("a1", "tflite", HOST.fingerprint, 1, "litert 2.3.0").median_ms == 5.0
        assert db.arch_key_of("f" * 64) == "a1" and db.arch_key_of("0" * 64) is None
        (device,) = db.devices()
        assert device["info"]["fingerprint"] == HOST.fingerprint and device["name"] == "local"
        assert db.artifacts()[0]["arch_json"]["key"] == "a1"


def test_query_filters_and_stats(tmp_path):
    with open_db(tmp_path / "l.sqlite") as db:
        _record(db, arch_key="slow", samples=(30.0,))
        _record(db, arch_key="fast", samples=(3.0,))
        _record(db, arch_key="mid", samples=(10.0,), fmt="pte", runtime="executorch 1.5.1")
        _record(db, PHONE, arch_key="phone", samples=(7.0,))
        assert [m.arch_key for m in db.query()] == ["fast", "phone", "mid", "slow"]
        assert [m.arch_key for m in db.query(device="adb")] == ["phone"]
        assert [m.arch_key for m in db.query(device=HOST.fingerprint, fmt="tflite")] == ["fast", "slow"]
        assert [m.arch_key for m in db.query(min_ms=7.0, max_ms=10.0)] == ["phone", "mid"]
        assert [m.arch_key for m in db.query(limit=1)] == ["fast"]
        assert db.query(device="nowhere") == []
        s = db.stats()
        assert (s.measurements, s.devices, s.archs, s.artifacts) == (4, 2, 4, 0)
        assert {(g["device"], g["format"], g["n"]) for g in s.by_device_format} == {
            ("local", "tflite", 2), ("local", "pte", 1), ("adb", "tflite", 1)}


@pytest.mark.parametrize(
    "args, message",
    [(("onnx", None, None, None), "unknown format"), ((None, -1.0, None, None), "--min-ms must be non-negative"),
     ((None, None, -0.5, None), "--max-ms must be non-negative"), ((None, 5.0, 1.0, None), "above --max-ms"),
     ((None, None, None, 0), "--limit must be at least 1"), ((None, float("nan"), None, None), "--min-ms")],
)
def test_bad_query_arguments(args, message):
    with pytest.raises(DatabaseError, match=message.replace("must be non-negative", "must be a non-negative")):
        check_query(*args)


def test_writer_killed_mid_transaction_leaves_whole_rows(tmp_path):
    path = tmp_path / "l.sqlite"
    proc = _writer(path, "k", 20, "hang")
    lines = []
    while "inside" not in lines:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        lines.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open_db(path) as db:
        assert db.read("PRAGMA integrity_check")[0][0] == "ok"
        keys = [m.arch_key for m in db.query()]
        assert sorted(keys) == [f"k{i:05d}" for i in range(20)]  # the open transaction left nothing
        _record(db, arch_key="after")  # and the database is writable at once
        assert db.stats().measurements == 21


def test_writer_killed_at_a_random_moment_leaves_whole_rows(tmp_path):
    path = tmp_path / "l.sqlite"
    proc = _writer(path, "r", 100_000)
    for _ in range(30):
        assert proc.stdout.readline(), proc.stderr.read()
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open_db(path) as db:
        assert db.read("PRAGMA integrity_check")[0][0] == "ok"
        rows = db.query()
        assert len(rows) >= 30
        assert sorted(m.arch_key for m in rows) == [f"r{i:05d}" for i in range(len(rows))]
        assert all(len(m.result.samples_ms) == m.runs == 3 for m in rows)


def test_two_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "l.sqlite"
    procs = [_writer(path, tag, 300, "pace", go=False) for tag in ("x", "y")]
    open(f"{path}.go", "w").close()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "locked" not in err
    with open_db(path) as db:
        in_order = [k for (k,) in db.read("SELECT arch_key FROM measurements ORDER BY id")]
    assert sorted(in_order) == sorted([f"x{i:05d}" for i in range(300)] + [f"y{i:05d}" for i in range(300)])
    switches = sum(a[0] != b[0] for a, b in zip(in_order, in_order[1:]))
    assert switches >= 2, "the writers did not overlap"


# A process that opens a new file the moment the start line is drawn.
OPENER = """
import os, sys, time
from latency_db import open_db
path = sys.argv[1]
print("ready", flush=True)
while not os.path.exists(path + ".go"):
    time.sleep(0.0005)
with open_db(path) as db:
    print(db.schema_version, db.read("PRAGMA journal_mode")[0][0])
"""


def test_two_processes_opening_a_new_file_at_once_both_get_it(tmp_path):
    # Converting a new file to WAL runs no busy handler: about one pair in 15 collided
    # before open_db retried it, so 40 pairs show a regression nearly every time.
    for round_ in range(40):
        path = tmp_path / f"l{round_}.sqlite"
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        open(f"{path}.go", "w").close()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            assert out.split() == [str(len(schema.MIGRATIONS)), "wal"]


@pytest.mark.parametrize("as_csv", [True, False])
def test_export_import_round_trip(tmp_path, as_csv):
    art = Artifact("e" * 64, "pte", 999, {"space": "mnasnet-small", "key": "b2"}, "executorch 1.5.1")
    with open_db(tmp_path / "a.sqlite") as a:
        _record(a, arch_key="a1", samples=(1.5, 2.5), min_time_s=3.0)
        _record(a, PHONE, arch_key="b2", fmt="pte", runtime="executorch 1.5.1", artifact=art)
        _record(a, arch_key=None, samples=(9.0,))
        out = tmp_path / ("m.csv" if as_csv else "m.json")
        assert export_measurements(a, out, as_csv=as_csv) == 3
        original = [m.to_dict() for m in a.query()]
        assert import_measurements(a, out).skipped == 3
    with open_db(tmp_path / "b.sqlite") as b:
        _record(b, arch_key="own")
        r = import_measurements(b, out)
        assert (r.added, r.skipped) == (3, 0)
        merged = [m.to_dict() for m in b.query() if m.arch_key != "own"]
        assert [_no_id(m) for m in merged] == [_no_id(m) for m in original]
        assert sorted(m["min_time_s"] or 0 for m in merged) == [0, 0, 3.0]
        assert b.lookup("b2", "pte", PHONE.fingerprint, 1, "executorch 1.5.1") is not None
        assert b.arch_key_of("e" * 64) == "b2"
        assert {d["fingerprint"] for d in b.devices()} == {HOST.fingerprint, PHONE.fingerprint}
        again = import_measurements(b, out)
        assert (again.added, again.skipped) == (0, 3) and b.stats().measurements == 4


def _no_id(d):
    return {k: v for k, v in d.items() if k != "id"}


@pytest.mark.parametrize("as_csv", [True, False])
def test_export_from_before_min_time_imports(tmp_path, as_csv):
    import csv

    with open_db(tmp_path / "a.sqlite") as a:
        _record(a, min_time_s=2.0)
        out = tmp_path / ("m.csv" if as_csv else "m.json")
        export_measurements(a, out, as_csv=as_csv)
    if as_csv:
        rows = list(csv.DictReader(out.read_text().splitlines()))
        fields = [f for f in rows[0] if f != "min_time_s"]
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    else:
        data = json.loads(out.read_text())
        for row in data["measurements"]:
            del row["min_time_s"]
        out.write_text(json.dumps(data))
    with open_db(tmp_path / "b.sqlite") as b:
        assert import_measurements(b, out).added == 1
        (m,) = b.query()
        assert m.min_time_s is None and m.result.median_ms == 2.0


def test_bad_import_files_import_nothing(tmp_path):
    with open_db(tmp_path / "a.sqlite") as a:
        _record(a)
        export_measurements(a, tmp_path / "good.json", as_csv=False)
    data = json.loads((tmp_path / "good.json").read_text())
    bad_row = {**data["measurements"][0], "uid": "x", "threads": "many"}
    broken = dict(data, measurements=[*data["measurements"], bad_row])
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    negative = dict(data, measurements=[{**data["measurements"][0], "min_time_s": -1}])
    (tmp_path / "negative.json").write_text(json.dumps(negative))
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else"}))
    (tmp_path / "short.csv").write_text("uid,format\nabc,tflite\n")
    (tmp_path / "notjson.json").write_text("{")
    with open_db(tmp_path / "b.sqlite") as b:
        for name, message in [("broken.json", "broken.json row 2: threads must be a whole number, got 'many'"),
                              ("negative.json", "negative.json row 1: min_time_s must be a finite number >= 0, got -1"),
                              ("other.json", "not a latency export"), ("short.csv", "missing column"),
                              ("notjson.json", "neither a .csv nor a JSON"), ("absent.csv", "does not exist")]:
            with pytest.raises(DatabaseError, match=message):
                import_measurements(b, tmp_path / name)
        assert b.stats().measurements == 0


def test_database_is_plain_sqlite(tmp_path):
    with open_db(tmp_path / "l.sqlite") as db:
        _record(db)
    conn = sqlite3.connect(tmp_path / "l.sqlite")
    assert conn.execute("SELECT arch_key, format, threads FROM measurements").fetchall() == [("a1", "tflite", 1)]
    conn.close()
