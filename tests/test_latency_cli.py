"""The latency commands a user can trust: checked imports, unwritable databases, noisy rows."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from akd_base.measurement import DeviceInfo, LatencyResult
from latency_db import open_db, schema
from latency_db.store import NOISY_P90_RATIO

REPO = Path(__file__).resolve().parent.parent
HOST = DeviceInfo("local", "Xeon", "Xeon", "x86_64", 2, runtimes={"litert": "2.3.0"})


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(exit_code: int, stderr: str, *fragments: str) -> None:
    assert exit_code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _record(db, arch_key: str, samples: list[float]) -> None:
    db.record(HOST, LatencyResult.from_samples(samples), fmt="tflite", threads=1, warmup=0, runs=len(samples),
              runtime_version="litert 2.3.0", arch_key=arch_key, device_name="local")


def _database(path: Path) -> Path:
    with open_db(path) as db:
        _record(db, "aa", [1.0, 2.0, 4.0])
        _record(db, "bb", [3.0, 3.5, 5.0])
    return path


# ---------------------------------------------------------------- import checks every value


@pytest.fixture()
def exported(tmp_path: Path) -> dict[str, Path]:
    """A two-row database exported as JSON and CSV."""
    db = _database(tmp_path / "source.sqlite")
    files = {"json": tmp_path / "good.json", "csv": tmp_path / "good.csv"}
    for kind, path in files.items():
        assert run("latency", "export", f"--{kind}", path, "--db", db).exit_code == 0
    return files


def _with_bad_second_row(good: Path, column: str, value, out: Path) -> Path:
    """`good` with `column` of its second row set to `value` (as CSV text in a CSV)."""
    if good.suffix == ".json":
        data = json.loads(good.read_text())
        data["measurements"][1][column] = value
        out.write_text(json.dumps(data))
    else:
        rows = list(csv.DictReader(good.read_text().splitlines()))
        rows[1][column] = value if isinstance(value, str) else json.dumps(value)
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return out


@pytest.mark.parametrize("kind", ["json", "csv"])
@pytest.mark.parametrize(
    "column, value, message",
    [
        ("median_ms", True, "median_ms must be a number, got"),
        ("median_ms", "fast", "median_ms must be a number, got"),
        ("max_ms", float("nan"), "max_ms must be a finite number >= 0, got nan"),
        ("min_ms", -0.5, "min_ms must be a finite number >= 0, got -0.5"),
        ("measured_at", "yesterday", "measured_at must be an ISO 8601 time with a zone"),
        ("measured_at", "2026-01-31 12:00:00", "measured_at must be an ISO 8601 time with a zone"),
        ("device_info", [1, 2], "device_info must be a JSON object, got"),
        ("artifact_arch", "not json", "artifact_arch must be a JSON object, got"),
        ("threads", 0, "threads must be at least 1, got 0"),
        ("runs", 2.5, "runs must be a whole number, got"),
        ("device_cores", True, "device_cores must be a whole number, got"),
        ("warmup", -1, "warmup must be at least 0, got -1"),
        ("samples_ms", [1.0, "x"], "samples_ms must be a list of finite numbers >= 0, got"),
        ("samples_ms", {"a": 1}, "samples_ms must be a list of finite numbers >= 0, got"),
        ("artifact_sha256", "abc", "artifact_sha256 must be 64 lowercase hex digits"),
        ("format", "onnx", "format must be one of tflite, pte"),
        ("uid", "", "lacks uid"),
        ("p90_ms", 50.0, "p90_ms 50 is above max_ms 5"),
        ("median_ms", 0.5, "min_ms 3 is above median_ms 0.5"),
        ("mean_ms", 40.0, "mean_ms 40 is outside min_ms .. max_ms (3 .. 5)"),
    ],
)
def test_import_rejects_a_bad_value_and_imports_nothing(exported, tmp_path, kind, column, value, message):
    bad = _with_bad_second_row(exported[kind], column, value, tmp_path / f"bad.{kind}")
    target = tmp_path / "team.sqlite"
    with open_db(target) as db:
        _record(db, "own", [9.0])
    r = run("latency", "import", bad, "--db", target)
    where = "row 2" if kind == "json" else "line 3"
    _one_line_error(r.exit_code, r.stderr, f"{bad} {where}", message, "nothing was imported")
    assert r.stdout == ""
    with open_db(target) as db:
        assert [m.arch_key for m in db.query()] == ["own"]
        assert len(db.devices()) == 1 and db.artifacts() == []


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_a_good_export_imports_whole(exported, tmp_path, kind):
    target = tmp_path / "team.sqlite"
    r = run("latency", "import", exported[kind], "--db", target, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"added": 2, "skipped": 0}
    with open_db(tmp_path / "source.sqlite") as a, open_db(target) as b:
        assert [m.to_dict() for m in b.query()] == [m.to_dict() for m in a.query()]


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_equal_samples_whose_mean_rounds_past_them_import(tmp_path, kind):
    with open_db(tmp_path / "source.sqlite") as db:
        _record(db, "cc", [0.1, 0.1, 0.1])  # their float mean is 0.10000000000000002
    path = tmp_path / f"equal.{kind}"
    assert run("latency", "export", f"--{kind}", path, "--db", tmp_path / "source.sqlite").exit_code == 0
    r = run("latency", "import", path, "--db", tmp_path / "team.sqlite", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"added": 1, "skipped": 0}, r.stderr


def test_import_stores_times_in_utc(exported, tmp_path):
    data = json.loads(exported["json"].read_text())
    data["measurements"][0]["measured_at"] = "2026-01-31T14:00:00+02:00"
    (tmp_path / "zoned.json").write_text(json.dumps(data))
    assert run("latency", "import", tmp_path / "zoned.json", "--db", tmp_path / "t.sqlite").exit_code == 0
    with open_db(tmp_path / "t.sqlite") as db:
        assert min(m.measured_at for m in db.query()) == "2026-01-31T12:00:00.000000+00:00"


# ---------------------------------------------------------------- a database that cannot be written


# Drops the capabilities that let root ignore file modes, then runs argv: what a user runs.
AS_A_USER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
        sys.exit(f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def _bound_by_modes(*argv) -> subprocess.CompletedProcess:
    """`argv` in a child process that file modes bind, as they bind a user (as root: without
    the capabilities that override them)."""
    as_user = [sys.executable, "-c", AS_A_USER] if os.geteuid() == 0 else []
    return subprocess.run([*as_user, *map(str, argv)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)


def _cli_bound_by_modes(*args) -> subprocess.CompletedProcess:
    return _bound_by_modes(sys.executable, "-c", "from cli import main; main()", *args)


@pytest.fixture()
def read_only(tmp_path: Path, request):
    """A database that cannot be written: the file 0444 ("file"; "old file": at the schema
    version before this code's), or its folder 0555 ("folder"); modes restored after."""
    folder = tmp_path / "shared"
    folder.mkdir()
    db = _database(folder / "team.sqlite") if request.param != "old file" else _old_database(folder / "team.sqlite")
    made = folder if request.param == "folder" else db
    made.chmod(0o555 if request.param == "folder" else 0o444)
    probe = _bound_by_modes(sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')" if made == folder
                            else f"open({str(db)!r}, 'a')")
    if probe.returncode == 0:
        made.chmod(stat.S_IRWXU)
        pytest.skip("file modes do not bind a child process here (root keeps its overriding capabilities)")
    yield db
    made.chmod(stat.S_IRWXU)


def _old_database(path: Path) -> Path:
    conn = sqlite3.connect(path)
    for script in schema.MIGRATIONS[:-1]:
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version = {len(schema.MIGRATIONS) - 1}")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("read_only", ["old file"], indirect=True)
def test_unwritable_database_older_than_the_code_is_one_line_error(read_only, exported):
    db = read_only
    old, new = len(schema.MIGRATIONS) - 1, len(schema.MIGRATIONS)
    r = _cli_bound_by_modes("latency", "stats", "--db", db)
    _one_line_error(r.returncode, r.stderr, f"latency database {db} is at schema version {old}, older than this "
                    f"akd-mobile ({new}), and cannot be written to upgrade it: make it and its folder writable once")
    r = _cli_bound_by_modes("latency", "import", exported["json"], "--db", db)
    _one_line_error(r.returncode, r.stderr, f"cannot write the latency database {db}")


@pytest.mark.parametrize("read_only", ["file", "folder"], indirect=True)
def test_unwritable_database_is_one_line_error_and_reads_still_work(read_only, exported, tmp_path):
    db = read_only
    r = _cli_bound_by_modes("latency", "import", exported["json"], "--db", db)
    _one_line_error(r.returncode, r.stderr, f"cannot write the latency database {db}",
                    f"make the file and its folder {db.parent} writable, or choose another file with --db or $AKD_DB")
    query = _cli_bound_by_modes("latency", "query", "--db", db, "--json")
    assert query.returncode == 0, query.stderr
    assert [row["arch_key"] for row in json.loads(query.stdout)] == ["aa", "bb"]
    stats = _cli_bound_by_modes("latency", "stats", "--db", db, "--json")
    assert stats.returncode == 0 and json.loads(stats.stdout)["measurements"] == 2, stats.stderr
    out = tmp_path / "copy.csv"
    export = _cli_bound_by_modes("latency", "export", "--csv", out, "--db", db)
    assert export.returncode == 0 and len(out.read_text().splitlines()) == 3, export.stderr
    with open_db(db, read_only=True) as check:
        assert check.stats().measurements == 2


# a folder SQLite cannot write fails the opening already: bench stops before measuring
@pytest.mark.parametrize("read_only, measures", [("file", True), ("folder", False)], indirect=["read_only"])
def test_bench_prints_its_measurement_before_saying_it_cannot_store_it(read_only, measures):
    from akd_mobile.device_check import check_model

    db = read_only
    model = check_model("tflite")
    for extra in ([], ["--json"]):
        r = _cli_bound_by_modes("bench", model, "--runs", 3, "--warmup", 0, "--min-time", 0, "--db", db, *extra)
        if not measures:
            _one_line_error(r.returncode, r.stderr, f"cannot write the latency database {db}")
            assert r.stdout == ""
            continue
        _one_line_error(r.returncode, r.stderr, f"cannot write the latency database {db}",
                        "the measurement printed above was not stored")
        if extra:
            assert json.loads(r.stdout)["count"] == 3
        else:
            assert r.stdout.startswith(f"{model.name}  tflite  local  threads 1  median ")
    with open_db(db, read_only=True) as check:
        assert check.stats().measurements == 2


# ---------------------------------------------------------------- query: a header, and noisy rows flagged


def test_query_has_a_header_and_flags_noisy_rows(tmp_path):
    db_path = tmp_path / "q.sqlite"
    with open_db(db_path) as db:
        _record(db, "quiet", [1.0, 1.1, 1.2, 1.0, 1.1])
        _record(db, "noisy", [1.0] * 8 + [30.0, 40.0])  # p90 about 31 ms over a 1 ms median
    rows = json.loads(run("latency", "query", "--db", db_path, "--json").stdout)
    flags = {r["arch_key"]: r["noisy"] for r in rows}
    assert flags == {"quiet": False, "noisy": True}
    noisy = next(r for r in rows if r["noisy"])
    assert noisy["p90_ms"] > NOISY_P90_RATIO * noisy["median_ms"]
    lines = run("latency", "query", "--db", db_path).stdout.splitlines()
    assert lines[0].split() == ["id", "device", "format", "threads", "arch", "median_ms", "p90_ms", "measured_at",
                                "note"]
    by_arch = {line.split()[4]: line for line in lines[1:3]}
    assert by_arch["noisy"].endswith("  noisy") and not by_arch["quiet"].endswith("noisy")
    assert lines[3] == f"noisy: p90 above {NOISY_P90_RATIO:g}x the median; measure it again on a quiet device"
    assert len(lines) == 4


def test_query_without_noisy_rows_has_no_legend(tmp_path):
    db_path = tmp_path / "q.sqlite"
    with open_db(db_path) as db:
        _record(db, "quiet", [1.0, 1.1, 1.2])
    lines = run("latency", "query", "--db", db_path).stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("    id  device") and "noisy" not in lines[1]


@pytest.mark.parametrize("args", [["runs", "list"], ["runs", "show", "1"], ["report", "1", "--out", "r"],
                                  ["latency", "query"], ["latency", "stats"], ["latency", "export", "--csv", "x.csv"],
                                  ["latency", "eval", "--device", "local"]])
def test_reading_a_database_that_does_not_exist_is_an_error_and_creates_nothing(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "typo.sqlite"
    r = CliRunner().invoke(cli, [*args, "--db", str(missing)])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"error: latency database {missing} does not exist; check --db"
    assert list(tmp_path.iterdir()) == []
