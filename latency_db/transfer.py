"""Export and import measurements, so a team can share one set of numbers.

Both formats carry the same flat rows: one per measurement, with its device's and
artifact's columns alongside (`device_*`, `artifact_*`), so an import can recreate them.
JSON: `{"schema": "akd-mobile-latency/1", "measurements": [row, ...]}` with
`samples_ms` a list; CSV: a header and one line per row, `samples_ms`, `device_info` and
`artifact_arch` as JSON text. An import checks every value's type and range, and the
order of each row's statistics, before it writes anything: one bad value and nothing is
imported. It then merges in one transaction: measurements whose `uid` is already present
are skipped, device and artifact rows already present are kept.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from akd_base.errors import DatabaseError
from akd_base.formats import FORMATS
from latency_db.store import LatencyDB, insert_measurement_sql, timestamp

SCHEMA = "akd-mobile-latency/1"

class _Bad(ValueError):
    """What is wrong with one value; the message follows the column's name."""


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: Any, from_csv: bool) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_show(value)}")
    return value


def _fmt(value: Any, from_csv: bool) -> str:
    if value not in FORMATS:
        raise _Bad(f"must be one of {', '.join(FORMATS)}, got {_show(value)}")
    return value


def _sha256(value: Any, from_csv: bool) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise _Bad(f"must be 64 lowercase hex digits, got {_show(value)}")
    return value


def _count(minimum: int) -> Callable[[Any, bool], int]:
    def parse(value: Any, from_csv: bool) -> int:
        if from_csv and isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be a whole number, got {_show(value)}")
        if value < minimum:
            raise _Bad(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(value: Any, from_csv: bool) -> float:
    """A finite number >= 0 (milliseconds, seconds)."""
    if from_csv and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"must be a number, got {_show(value)}")
    if not math.isfinite(value) or value < 0:
        raise _Bad(f"must be a finite number >= 0, got {value}")
    return float(value)


def _samples(value: Any, from_csv: bool) -> str:
    """JSON text of a list of finite numbers >= 0 (a list in JSON, its JSON text in CSV)."""
    samples = value
    if from_csv and isinstance(value, str):
        try:
            samples = json.loads(value)
        except json.JSONDecodeError:
            pass
    try:
        if not isinstance(samples, list):
            raise _Bad("not a list")
        return json.dumps([_number(v, False) for v in samples])
    except _Bad:
        raise _Bad(f"must be a list of finite numbers >= 0, got {_show(value)}") from None


def _json_object(value: Any, from_csv: bool) -> str:
    """JSON text of an object (the text itself, or in JSON input also the object)."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _Bad(f"must be a JSON object, got {_show(value)}")
    return value


def _timestamp(value: Any, from_csv: bool) -> str:
    """An ISO 8601 time with a zone, stored as the database writes its own (UTC)."""
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _Bad(f"must be an ISO 8601 time with a zone, such as 2026-01-31T12:00:00+00:00; got {_show(value)}")
    return timestamp(moment)


# column -> (parser, required); a parser takes the file's value (text in CSV) and returns
# what is stored, or raises _Bad.
COLUMNS: dict[str, tuple[Callable[[Any, bool], Any], bool]] = {
    "uid": (_text, True),
    "arch_key": (_text, False),
    "format": (_fmt, True),
    "device_fingerprint": (_text, True),
    "device_name": (_text, True),
    "device_backend": (_text, True),
    "device_model": (_text, True),
    "device_soc": (_text, True),
    "device_abi": (_text, True),
    "device_cores": (_count(1), True),
    "device_info": (_json_object, True),
    "artifact_sha256": (_sha256, False),
    "artifact_size_bytes": (_count(1), False),
    "artifact_arch": (_json_object, False),
    "runtime_version": (_text, True),
    "converter_version": (_text, False),
    "threads": (_count(1), True),
    "warmup": (_count(0), True),
    "runs": (_count(1), True),
    "min_time_s": (_number, False),
    "median_ms": (_number, True),
    "mean_ms": (_number, True),
    "std_ms": (_number, True),
    "min_ms": (_number, True),
    "max_ms": (_number, True),
    "p90_ms": (_number, False),
    "samples_ms": (_samples, True),
    "thermal": (_text, False),
    "measured_at": (_timestamp, True),
}


_EXPORT_SQL = """
SELECT m.uid, m.arch_key, m.format, m.device_fingerprint, d.name AS device_name,
       d.backend AS device_backend, d.model AS device_model, d.soc AS device_soc,
       d.abi AS device_abi, d.cores AS device_cores, d.info_json AS device_info,
       m.artifact_sha256, a.size_bytes AS artifact_size_bytes, a.arch_json AS artifact_arch,
       m.runtime_version, m.converter_version, m.threads, m.warmup, m.runs, m.min_time_s, m.median_ms,
       m.mean_ms, m.std_ms, m.min_ms, m.max_ms, m.p90_ms, m.samples_json AS samples_ms,
       m.thermal, m.measured_at
FROM measurements m
JOIN devices d ON d.fingerprint = m.device_fingerprint
LEFT JOIN artifacts a ON a.sha256 = m.artifact_sha256
ORDER BY m.measured_at, m.id
"""


@dataclass(frozen=True)
class ImportResult:
    """What an import did.

    Attributes:
        added: measurements inserted.
        skipped: measurements already present (same uid).
    """

    added: int
    skipped: int


def export_measurements(db: LatencyDB, path: Path, as_csv: bool, samples: bool = True) -> int:
    """Write every measurement to `path` as CSV or JSON; returns the row count. Without
    `samples` each row's per-run latencies are left out (an empty list; the statistics stay):
    a measurement with a minimum time holds thousands of them."""
    path = Path(path)
    rows = [dict(row) for row in db.read(_EXPORT_SQL)]
    if not samples:
        for row in rows:
            row["samples_ms"] = "[]"
    try:
        if as_csv:
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
                writer.writeheader()
                writer.writerows(rows)
        else:
            for row in rows:
                row["samples_ms"] = json.loads(row["samples_ms"])
            path.write_text(json.dumps({"schema": SCHEMA, "measurements": rows}, indent=1))
    except OSError as exc:
        raise DatabaseError(f"cannot write {path}: {exc}") from None
    return len(rows)


def import_measurements(db: LatencyDB, path: Path) -> ImportResult:
    """Merge the measurements of a CSV or JSON export into `db`, skipping ones it has.

    Raises:
        DatabaseError: a missing or malformed file, or a bad value in any row (its line or
            row, column and what is wrong); nothing is imported then.
    """
    from_csv, rows = _read(Path(path))
    clean = [_clean(row, where, from_csv) for where, row in rows]
    try:
        added = _merge(db, clean)
    except sqlite3.IntegrityError as exc:
        raise DatabaseError(f"{path} holds a row this database rejects ({exc}); nothing was imported") from None
    return ImportResult(added=added, skipped=len(clean) - added)


def _merge(db: LatencyDB, clean: list[dict[str, Any]]) -> int:
    added = 0
    with db.transaction() as conn:
        for r in clean:
            conn.execute(
                "INSERT OR IGNORE INTO devices (fingerprint, name, backend, model, soc, abi, cores, info_json, "
                "first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (r["device_fingerprint"], r["device_name"], r["device_backend"], r["device_model"], r["device_soc"],
                 r["device_abi"], r["device_cores"], r["device_info"], r["measured_at"], r["measured_at"]),
            )
            if r["artifact_sha256"] is not None and r["artifact_size_bytes"] is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO artifacts (sha256, arch_key, arch_json, format, size_bytes, "
                    "converter_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (r["artifact_sha256"], r["arch_key"], r["artifact_arch"], r["format"],
                     r["artifact_size_bytes"], r["converter_version"], r["measured_at"]),
                )
            sha = r["artifact_sha256"]
            known = sha is not None and conn.execute("SELECT 1 FROM artifacts WHERE sha256 = ?", (sha,)).fetchone()
            cur = conn.execute(
                insert_measurement_sql("INSERT OR IGNORE"),
                (r["uid"], r["arch_key"], r["format"], r["device_fingerprint"], sha if known else None,
                 r["runtime_version"], r["converter_version"], r["threads"], r["warmup"], r["runs"], r["min_time_s"],
                 r["median_ms"], r["mean_ms"], r["std_ms"], r["min_ms"], r["max_ms"], r["p90_ms"], r["samples_ms"],
                 r["thermal"], r["measured_at"]),
            )
            added += cur.rowcount
    return added


def _read(path: Path) -> tuple[bool, list[tuple[str, Any]]]:
    """Whether the file is CSV, and its rows, each with where it is (`PATH line N`, `PATH row N`)."""
    if not path.is_file():
        raise DatabaseError(f"import file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatabaseError(f"cannot read {path}: {exc}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [(f"{path} line {reader.line_num}", row) for row in reader]
        missing = {name for name, (_, required) in COLUMNS.items() if required} - set(reader.fieldnames or ())
        if rows and missing:
            raise DatabaseError(f"{path} is not a latency export: missing column(s) {', '.join(sorted(missing))}")
        return True, rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatabaseError(f"{path} is neither a .csv nor a JSON latency export: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("measurements"), list):
        raise DatabaseError(f"{path} is not a latency export (expected schema {SCHEMA!r})")
    return False, [(f"{path} row {i}", row) for i, row in enumerate(data["measurements"], start=1)]


def _clean(row: Any, where: str, from_csv: bool) -> dict[str, Any]:
    """The stored values of one exported row; DatabaseError naming where, the column and the fault."""
    if not isinstance(row, dict):
        raise DatabaseError(f"{where} is not an object; nothing was imported")
    out: dict[str, Any] = {}
    for name, (parse, required) in COLUMNS.items():
        value = row.get(name)
        if value is None or value == "":
            if required:
                raise DatabaseError(f"{where} lacks {name}; nothing was imported")
            out[name] = None
            continue
        try:
            out[name] = parse(value, from_csv)
        except _Bad as exc:
            raise DatabaseError(f"{where}: {name} {exc}; nothing was imported") from None
    order = [(name, out[name]) for name in ("min_ms", "median_ms", "p90_ms", "max_ms") if out[name] is not None]
    for (low, x), (high, y) in itertools.pairwise(order):
        if x > y:
            raise DatabaseError(f"{where}: {low} {x:g} is above {high} {y:g}; nothing was imported")
    slack = 1e-9 * out["max_ms"]  # a mean of equal samples can round a hair past them
    if not out["min_ms"] - slack <= out["mean_ms"] <= out["max_ms"] + slack:
        raise DatabaseError(f"{where}: mean_ms {out['mean_ms']:g} is outside min_ms .. max_ms "
                            f"({out['min_ms']:g} .. {out['max_ms']:g}); nothing was imported")
    return out
