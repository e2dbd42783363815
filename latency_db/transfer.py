"""Export and import measurements, so a team can share one set of numbers.

Both formats carry the same flat rows: one per measurement, with its device's and
artifact's columns alongside (`device_*`, `artifact_*`), so an import can recreate them.
JSON: `{"schema": "akd-mobile-latency/1", "measurements": [row, ...]}` with
`samples_ms` a list; CSV: a header and one line per row, `samples_ms`, `device_info` and
`artifact_arch` as JSON text. An import merges in one transaction: measurements whose
`uid` is already present are skipped, device and artifact rows already present are kept.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from akd_mobile.errors import DatabaseError
from latency_db.store import FORMATS, LatencyDB, insert_measurement_sql

SCHEMA = "akd-mobile-latency/1"

_INT, _FLOAT, _TEXT = int, float, str
# column -> (type, required)
COLUMNS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "uid": (_TEXT, True),
    "arch_key": (_TEXT, False),
    "format": (_TEXT, True),
    "device_fingerprint": (_TEXT, True),
    "device_name": (_TEXT, True),
    "device_backend": (_TEXT, True),
    "device_model": (_TEXT, True),
    "device_soc": (_TEXT, True),
    "device_abi": (_TEXT, True),
    "device_cores": (_INT, True),
    "device_info": (_TEXT, True),
    "artifact_sha256": (_TEXT, False),
    "artifact_size_bytes": (_INT, False),
    "artifact_arch": (_TEXT, False),
    "runtime_version": (_TEXT, True),
    "converter_version": (_TEXT, False),
    "threads": (_INT, True),
    "warmup": (_INT, True),
    "runs": (_INT, True),
    "min_time_s": (_FLOAT, False),
    "median_ms": (_FLOAT, True),
    "mean_ms": (_FLOAT, True),
    "std_ms": (_FLOAT, True),
    "min_ms": (_FLOAT, True),
    "max_ms": (_FLOAT, True),
    "p90_ms": (_FLOAT, False),
    "samples_ms": (_TEXT, True),
    "thermal": (_TEXT, False),
    "measured_at": (_TEXT, True),
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


def export_measurements(db: LatencyDB, path: Path, as_csv: bool) -> int:
    """Write every measurement to `path` as CSV or JSON; returns the row count."""
    path = Path(path)
    rows = [dict(row) for row in db.read(_EXPORT_SQL)]
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
        DatabaseError: a missing or malformed file (nothing is imported then).
    """
    rows = _read(Path(path))
    clean = [_clean(row, i) for i, row in enumerate(rows, start=1)]
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


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatabaseError(f"import file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatabaseError(f"cannot read {path}: {exc}") from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        missing = {name for name, (_, required) in COLUMNS.items() if required} - set(rows[0]) if rows else set()
        if missing:
            raise DatabaseError(f"{path} is not a latency export: missing column(s) {', '.join(sorted(missing))}")
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatabaseError(f"{path} is neither a .csv nor a JSON latency export: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("measurements"), list):
        raise DatabaseError(f"{path} is not a latency export (expected schema {SCHEMA!r})")
    return data["measurements"]


def _clean(row: Any, line: int) -> dict[str, Any]:
    """Typed values of one exported row; DatabaseError naming the row and column otherwise."""
    if not isinstance(row, dict):
        raise DatabaseError(f"row {line} of the import is not an object")
    out: dict[str, Any] = {}
    for name, (kind, required) in COLUMNS.items():
        value = row.get(name)
        if value is None or value == "":
            if required:
                raise DatabaseError(f"row {line} of the import lacks {name}")
            out[name] = None
            continue
        if name == "samples_ms" and isinstance(value, list):
            value = json.dumps(value)
        try:
            out[name] = kind(value)
        except (TypeError, ValueError):
            raise DatabaseError(f"row {line} of the import: {name} = {value!r} is not a {kind.__name__}") from None
        if kind is _FLOAT and not math.isfinite(out[name]):
            raise DatabaseError(f"row {line} of the import: {name} is not a finite number")
    if out["format"] not in FORMATS:
        raise DatabaseError(f"row {line} of the import: unknown format {out['format']!r}")
    if out["min_time_s"] is not None and out["min_time_s"] < 0:
        raise DatabaseError(f"row {line} of the import: min_time_s is negative")
    try:
        samples = json.loads(out["samples_ms"])
    except json.JSONDecodeError:
        samples = None
    if not isinstance(samples, list):
        raise DatabaseError(f"row {line} of the import: samples_ms is not a list of numbers")
    return out
