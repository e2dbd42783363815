"""The latency database: open, record, look up, query.

SQLite in WAL mode with a busy timeout. Every write is one `BEGIN IMMEDIATE` transaction:
the write lock is taken before anything is read, so concurrent writers queue on the busy
timeout instead of failing with `database is locked`, and a process killed mid-write
leaves the last committed state (whole rows only). A database that cannot be written
(file or folder read-only) is a one-line DatabaseError saying so at the first write, or
at opening when SQLite needs to write even to read (a folder it cannot create the `-shm`
file in); `open_db(read_only=True)` opens such a database read-only instead.

The file is `$AKD_DB`, else `$XDG_DATA_HOME/akd-mobile/latency.sqlite` (default
`~/.local/share/akd-mobile/latency.sqlite`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from akd_base.errors import DatabaseError
from akd_base.formats import FORMATS
from akd_base.measurement import DeviceInfo, LatencyResult
from latency_db.schema import MIGRATIONS, migrate

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 60.0
# A measurement whose p90 exceeds this many times its median is flagged noisy by `latency
# query`: on a quiet device p90 stays within some 10-30% of the median, so at 2x a tenth of
# the runs took twice as long (throttling, a background load, a core switch) and the median
# itself may be off.
NOISY_P90_RATIO = 2.0
# The columns a measurement row is written with, in this order (by `record` and by an import).
MEASUREMENT_COLUMNS = (
    "uid", "arch_key", "format", "device_fingerprint", "artifact_sha256", "runtime_version", "converter_version",
    "threads", "warmup", "runs", "min_time_s", "median_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p90_ms",
    "samples_json", "thermal", "measured_at",
)


def insert_measurement_sql(verb: str = "INSERT") -> str:
    """`verb INTO measurements (MEASUREMENT_COLUMNS) VALUES (?, ...)`; verb e.g. `INSERT OR IGNORE`."""
    return (f"{verb} INTO measurements ({', '.join(MEASUREMENT_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(MEASUREMENT_COLUMNS))})")


@dataclass(frozen=True)
class Artifact:
    """A measured model file.

    Attributes:
        sha256: hex digest of the file.
        fmt: `tflite` or `pte`.
        size_bytes: file size.
        arch_json: `ArchSpec.to_json()` of its architecture, None when unknown.
        converter_version: what exported it, None when not akd-mobile.
    """

    sha256: str
    fmt: str
    size_bytes: int
    arch_json: dict[str, Any] | None = None
    converter_version: str | None = None


@dataclass(frozen=True)
class Measurement:
    """One stored measurement (a row of `measurements` with its device's name).

    Attributes mirror the table's columns; `result` holds the statistics and samples.
    """

    id: int
    uid: str
    arch_key: str | None
    fmt: str
    device_fingerprint: str
    device_name: str
    artifact_sha256: str | None
    runtime_version: str
    converter_version: str | None
    threads: int
    warmup: int
    runs: int
    min_time_s: float | None
    thermal: str | None
    measured_at: str
    result: LatencyResult

    @property
    def noisy(self) -> bool:
        """p90 above NOISY_P90_RATIO times the median (False when p90 is unknown)."""
        p90, median = self.result.p90_ms, self.result.median_ms
        return p90 is not None and p90 > NOISY_P90_RATIO * median

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with the statistics flattened in, and `noisy`."""
        d = asdict(self)
        d.pop("result")
        d.update(self.result.to_dict())
        d["noisy"] = self.noisy
        return d


@dataclass(frozen=True)
class DBStats:
    """Counts and spread of a database.

    Attributes:
        path: the database file.
        schema_version: applied migrations.
        measurements: rows in `measurements`.
        devices: rows in `devices`.
        artifacts: rows in `artifacts`.
        archs: distinct architecture keys measured.
        by_device_format: per (device name, format): count, min/median-of-medians/max ms.
    """

    path: str
    schema_version: int
    measurements: int
    devices: int
    artifacts: int
    archs: int
    by_device_format: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def default_db_path() -> Path:
    """`$AKD_DB`, else `$XDG_DATA_HOME/akd-mobile/latency.sqlite` (default under ~/.local/share)."""
    if os.environ.get("AKD_DB"):
        return Path(os.environ["AKD_DB"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "akd-mobile" / "latency.sqlite"


def db_flag(path: Path) -> str:
    """The ` --db PATH` (shell-quoted) that names `path` in a suggested command, or '' for the default database."""
    import shlex

    path = Path(path).resolve()
    return "" if path == default_db_path().resolve() else f" --db {shlex.quote(str(path))}"


def open_db(path: Path | None = None, read_only: bool = False) -> LatencyDB:
    """Open (creating and migrating as needed) the latency database at `path` or the default.

    Args:
        path: the file (default `default_db_path()`).
        read_only: the caller only reads: a database that cannot be written is then opened
            read-only (it must be at this code's schema version) instead of failing, and a
            `path` that does not exist is an error rather than a new, empty database.

    Raises:
        DatabaseError: a file that is not an SQLite database, a database or folder that
            cannot be written (unless `read_only`), a missing `path` to read, or a schema
            newer than this code.
    """
    if read_only and path is not None and not Path(path).exists():
        raise DatabaseError(f"latency database {path} does not exist; check --db")
    return LatencyDB(Path(path) if path is not None else default_db_path(), read_only)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode (a property of the file, kept across opens).

    Converting needs the file to itself and SQLite runs no busy handler for it, so two
    processes opening a new file at once would see "database is locked": retry within
    the busy timeout, and take a conversion done meanwhile by the other process.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = 0.005
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked: another process kept it past the busy timeout")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


class LatencyDB:
    """A connection to the latency database; use as a context manager or call `close()`."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except OSError as exc:
            raise DatabaseError(f"cannot create the folder of latency database {self.path}: {exc}; "
                                "choose another file with --db or $AKD_DB") from None
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000):d}")
            _use_wal(self._conn)
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self.schema_version = migrate(self._conn)
        except (sqlite3.Error, DatabaseError) as exc:
            self._conn.close()
            cause = exc if isinstance(exc, sqlite3.Error) else exc.__context__  # migrate wraps SQLite's errors
            unwritable = isinstance(cause, sqlite3.Error) and _unwritable(cause)
            if unwritable and read_only:
                self._open_read_only()
            elif unwritable or isinstance(exc, sqlite3.Error):
                raise self._error(cause) from None
            else:
                raise

    def _open_read_only(self) -> None:
        """Connect read-only; without a `-wal` file (no commits outside the main file) as
        immutable, which SQLite can read in a folder it cannot create its `-shm` file in."""
        wal = self.path.with_name(f"{self.path.name}-wal")
        uri = f"{self.path.resolve().as_uri()}?mode=ro{'' if wal.exists() else '&immutable=1'}"
        try:
            self._conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version < len(MIGRATIONS):
                raise DatabaseError(
                    f"latency database {self.path} is at schema version {version}, older than this akd-mobile "
                    f"({len(MIGRATIONS)}), and cannot be written to upgrade it: make it and its folder writable once"
                )
            self.schema_version = migrate(self._conn)  # reads only: it is at the latest version or newer
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error(exc) from None
        except DatabaseError:
            self._conn.close()
            raise
        log.info("opened %s read-only: it cannot be written", self.path)

    def _error(self, exc: sqlite3.Error) -> DatabaseError:
        """The DatabaseError of a failed SQLite call: one that says what to do for a database
        that cannot be written, else that the file is not a usable database."""
        if _unwritable(exc):
            return DatabaseError(
                f"cannot write the latency database {self.path} ({exc}): make the file and its folder "
                f"{self.path.parent} writable, or choose another file with --db or $AKD_DB"
            )
        return DatabaseError(f"{self.path} is not a usable latency database: {exc}")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> LatencyDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (`BEGIN IMMEDIATE`): committed whole on success, else rolled back.

        Raises:
            DatabaseError: the database is busy past the timeout, or cannot be written.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise (self._error(exc) if _unwritable(exc) else
                   DatabaseError(f"latency database {self.path} is busy: {exc}")) from None
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and _unwritable(exc):
                raise self._error(exc) from None
            raise

    def lookup(
        self, arch_key: str, fmt: str, device_fingerprint: str, threads: int, runtime_version: str
    ) -> LatencyResult | None:
        """The latest measurement of this (arch, format, device, threads, runtime), or None."""
        row = self._conn.execute(
            "SELECT * FROM measurements WHERE arch_key = ? AND format = ? AND device_fingerprint = ? "
            "AND threads = ? AND runtime_version = ? ORDER BY measured_at DESC, id DESC LIMIT 1",
            (arch_key, fmt, device_fingerprint, threads, runtime_version),
        ).fetchone()
        return _result(row) if row is not None else None

    def record(
        self,
        device: DeviceInfo,
        result: LatencyResult,
        *,
        fmt: str,
        threads: int,
        warmup: int,
        runs: int,
        runtime_version: str,
        min_time_s: float | None = None,
        arch_key: str | None = None,
        artifact: Artifact | None = None,
        device_name: str | None = None,
        thermal: str | None = None,
    ) -> int:
        """Store one measurement with its device and artifact rows, in one transaction.

        Returns:
            The new measurement's row id.
        """
        if fmt not in FORMATS:
            raise DatabaseError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        now = timestamp()
        with self.transaction() as conn:
            _upsert_device(conn, device, device_name or device.backend, now)
            if artifact is not None:
                conn.execute(
                    "INSERT INTO artifacts (sha256, arch_key, arch_json, format, size_bytes, converter_version, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET "
                    "arch_key = coalesce(artifacts.arch_key, excluded.arch_key), "
                    "arch_json = coalesce(artifacts.arch_json, excluded.arch_json), "
                    "converter_version = coalesce(artifacts.converter_version, excluded.converter_version)",
                    (artifact.sha256, arch_key, json.dumps(artifact.arch_json) if artifact.arch_json else None,
                     artifact.fmt, artifact.size_bytes, artifact.converter_version, now),
                )
            cur = conn.execute(
                insert_measurement_sql(),
                (uuid.uuid4().hex, arch_key, fmt, device.fingerprint, artifact.sha256 if artifact else None,
                 runtime_version, artifact.converter_version if artifact else None, threads, warmup, runs,
                 min_time_s, result.median_ms, result.mean_ms, result.std_ms, result.min_ms, result.max_ms,
                 result.p90_ms, json.dumps(list(result.samples_ms)), thermal, now),
            )
            return int(cur.lastrowid)

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a parameterized read-only query."""
        return self._conn.execute(sql, args).fetchall()

    def arch_key_of(self, sha256: str) -> str | None:
        """The architecture key an earlier export recorded for this file, if any."""
        row = self._conn.execute("SELECT arch_key FROM artifacts WHERE sha256 = ?", (sha256,)).fetchone()
        return row["arch_key"] if row is not None else None

    def query(
        self,
        device: str | None = None,
        fmt: str | None = None,
        min_ms: float | None = None,
        max_ms: float | None = None,
        limit: int | None = None,
    ) -> list[Measurement]:
        """Measurements, fastest median first, filtered by device (profile name or
        fingerprint), format and median range (inclusive).

        Raises:
            DatabaseError: negative or inverted bounds, a non-positive limit, an unknown format.
        """
        check_query(fmt, min_ms, max_ms, limit)
        where, args = [], []
        if device is not None:
            where.append("(d.name = ? OR d.fingerprint = ?)")
            args += [device, device]
        if fmt is not None:
            where.append("m.format = ?")
            args.append(fmt)
        if min_ms is not None:
            where.append("m.median_ms >= ?")
            args.append(min_ms)
        if max_ms is not None:
            where.append("m.median_ms <= ?")
            args.append(max_ms)
        sql = ("SELECT m.*, d.name AS device_name FROM measurements m "
               "JOIN devices d ON d.fingerprint = m.device_fingerprint")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.median_ms, m.id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_measurement(row) for row in self._conn.execute(sql, args)]

    def stats(self) -> DBStats:
        """Row counts, and per device and format the number and range of medians."""
        count = lambda sql: int(self._conn.execute(sql).fetchone()[0])  # noqa: E731
        groups = self._conn.execute(
            "SELECT d.name AS device, d.fingerprint AS fingerprint, m.format AS format, count(*) AS n, "
            "min(m.median_ms) AS min_ms, max(m.median_ms) AS max_ms FROM measurements m "
            "JOIN devices d ON d.fingerprint = m.device_fingerprint GROUP BY d.fingerprint, m.format "
            "ORDER BY d.name, m.format"
        ).fetchall()
        return DBStats(
            path=str(self.path),
            schema_version=self.schema_version,
            measurements=count("SELECT count(*) FROM measurements"),
            devices=count("SELECT count(*) FROM devices"),
            artifacts=count("SELECT count(*) FROM artifacts"),
            archs=count("SELECT count(DISTINCT arch_key) FROM measurements"),
            by_device_format=[dict(row) for row in groups],
        )

    def devices(self) -> list[dict[str, Any]]:
        """Every device row, its `info_json` decoded into `info`."""
        rows = self._conn.execute("SELECT * FROM devices ORDER BY fingerprint").fetchall()
        return [{**{k: row[k] for k in row.keys() if k != "info_json"}, "info": json.loads(row["info_json"])}
                for row in rows]

    def artifacts(self) -> list[dict[str, Any]]:
        """Every artifact row, its `arch_json` decoded."""
        rows = self._conn.execute("SELECT * FROM artifacts ORDER BY sha256").fetchall()
        return [{**dict(row), "arch_json": json.loads(row["arch_json"]) if row["arch_json"] else None}
                for row in rows]


def check_query(fmt: str | None, min_ms: float | None, max_ms: float | None, limit: int | None) -> None:
    """DatabaseError for an unknown format, negative or inverted bounds, or a limit below 1."""
    if fmt is not None and fmt not in FORMATS:
        raise DatabaseError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for name, value in (("--min-ms", min_ms), ("--max-ms", max_ms)):
        if value is not None and not value >= 0:
            raise DatabaseError(f"{name} must be a non-negative number of milliseconds, got {value}")
    if min_ms is not None and max_ms is not None and min_ms > max_ms:
        raise DatabaseError(f"--min-ms {min_ms} is above --max-ms {max_ms}; swap them")
    if limit is not None and limit < 1:
        raise DatabaseError(f"--limit must be at least 1, got {limit}")


def _upsert_device(conn: sqlite3.Connection, info: DeviceInfo, name: str, now: str) -> None:
    conn.execute(
        "INSERT INTO devices (fingerprint, name, backend, model, soc, abi, cores, info_json, first_seen, last_seen) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET "
        "name = excluded.name, info_json = excluded.info_json, last_seen = excluded.last_seen",
        (info.fingerprint, name, info.backend, info.model, info.soc, info.abi, info.cores,
         json.dumps(info.to_dict(), sort_keys=True), now, now),
    )


def _result(row: sqlite3.Row) -> LatencyResult:
    samples = tuple(json.loads(row["samples_json"]))
    return LatencyResult(
        count=len(samples) or int(row["runs"]),  # more than `runs` under min_time_s
        median_ms=row["median_ms"],
        mean_ms=row["mean_ms"],
        std_ms=row["std_ms"],
        min_ms=row["min_ms"],
        max_ms=row["max_ms"],
        p90_ms=row["p90_ms"],
        samples_ms=samples,
    )


def _measurement(row: sqlite3.Row) -> Measurement:
    return Measurement(
        id=row["id"],
        uid=row["uid"],
        arch_key=row["arch_key"],
        fmt=row["format"],
        device_fingerprint=row["device_fingerprint"],
        device_name=row["device_name"],
        artifact_sha256=row["artifact_sha256"],
        runtime_version=row["runtime_version"],
        converter_version=row["converter_version"],
        threads=row["threads"],
        warmup=row["warmup"],
        runs=row["runs"],
        min_time_s=row["min_time_s"],
        thermal=row["thermal"],
        measured_at=row["measured_at"],
        result=_result(row),
    )


def timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 UTC text, as the database stores times: of `moment` (aware), default now."""
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="microseconds")


def _unwritable(exc: sqlite3.Error) -> bool:
    """SQLite's errors for a file or folder it cannot write (SQLITE_READONLY*, SQLITE_CANTOPEN)."""
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith("SQLITE_READONLY") or name == "SQLITE_CANTOPEN"
