"""Latency predictors in the database: what one predicts for (`ModelKey`), the measurements
it can be fitted on, and the fitted models (`latency_models`) with the measurements each was
fitted on. The models' parameters are JSON this layer stores and does not read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from akd_base.errors import DatabaseError
from akd_base.formats import FORMATS
from latency_db.store import LatencyDB, timestamp


@dataclass(frozen=True)
class ModelKey:
    """What a predictor predicts for: one device, format, thread count and runtime version
    (the latency database's key, less the architecture)."""

    device_fingerprint: str
    fmt: str
    threads: int
    runtime_version: str

    def describe(self) -> str:
        """For messages, e.g. `device 1a2b3c4d5e6f7a8b, .tflite, 1 thread, litert 2.3.0`."""
        plural = "s" if self.threads != 1 else ""
        return f"device {self.device_fingerprint}, .{self.fmt}, {self.threads} thread{plural}, {self.runtime_version}"


@dataclass(frozen=True)
class KeyedMeasurement:
    """One measurement of a known architecture under a ModelKey.

    Attributes:
        uid: the measurement's uid.
        arch_key: its architecture's key.
        arch_json: `ArchSpec.to_json()` of the architecture, from its artifact.
        median_ms: its median latency.
        measured_at: when (ISO 8601 UTC).
    """

    uid: str
    arch_key: str
    arch_json: dict[str, Any]
    median_ms: float
    measured_at: str


@dataclass(frozen=True)
class StoredModel:
    """A fitted predictor as stored.

    Attributes:
        id: its row id: a prediction names it.
        key: what it predicts for.
        kind: its family and version.
        model: its parameters (JSON).
        measurement_uids: the measurements it was fitted on.
        archs: distinct architectures among them.
        band: its relative error band.
        created_at: when it was fitted.
    """

    id: int
    key: ModelKey
    kind: str
    model: dict[str, Any]
    measurement_uids: tuple[str, ...]
    archs: int
    band: float
    created_at: str


def resolve_key(db: LatencyDB, device: str, fmt: str, threads: int, runtime_version: str | None = None) -> ModelKey:
    """The ModelKey of `device` (a profile name or fingerprint the database knows), `fmt` and
    `threads`; the runtime is the newest one measured under them unless given.

    Raises:
        DatabaseError: an unknown device, a name several devices share, an unknown format,
            or no measurement under the key.
    """
    if fmt not in FORMATS:
        raise DatabaseError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rows = db.read("SELECT fingerprint, name FROM devices WHERE fingerprint = ? OR name = ? ORDER BY fingerprint",
                   (device, device))
    if not rows:
        raise DatabaseError(f"the latency database {db.path} has no device {device!r}; measure it first "
                            "(akd-mobile latency sweep)")
    if len(rows) > 1:
        prints = ", ".join(row["fingerprint"] for row in rows)
        raise DatabaseError(f"device name {device!r} names {len(rows)} devices ({prints}); give a fingerprint")
    fingerprint = rows[0]["fingerprint"]
    sql = ("SELECT runtime_version FROM measurements WHERE device_fingerprint = ? AND format = ? AND threads = ?"
           " AND arch_key IS NOT NULL")
    args: tuple[Any, ...] = (fingerprint, fmt, threads)
    if runtime_version is not None:
        sql, args = sql + " AND runtime_version = ?", (*args, runtime_version)
    found = db.read(sql + " ORDER BY measured_at DESC, id DESC LIMIT 1", args)
    if not found:
        runtime = f", {runtime_version}" if runtime_version else ""
        raise DatabaseError(f"no measurements of device {device} (.{fmt}, {threads} thread(s){runtime}) in {db.path}")
    return ModelKey(fingerprint, fmt, threads, found[0]["runtime_version"])


def keyed_measurements(db: LatencyDB, key: ModelKey) -> list[KeyedMeasurement]:
    """Every measurement under `key` whose architecture is known, oldest first."""
    rows = db.read(
        "SELECT m.uid, m.arch_key, m.median_ms, m.measured_at, "
        "(SELECT a.arch_json FROM artifacts a WHERE a.arch_key = m.arch_key AND a.arch_json IS NOT NULL LIMIT 1) "
        "AS arch_json FROM measurements m WHERE m.device_fingerprint = ? AND m.format = ? AND m.threads = ? "
        "AND m.runtime_version = ? AND m.arch_key IS NOT NULL ORDER BY m.measured_at, m.id",
        (key.device_fingerprint, key.fmt, key.threads, key.runtime_version),
    )
    return [KeyedMeasurement(row["uid"], row["arch_key"], json.loads(row["arch_json"]), row["median_ms"],
                             row["measured_at"]) for row in rows if row["arch_json"]]


def save_model(db: LatencyDB, key: ModelKey, kind: str, model: dict[str, Any], measurement_uids: list[str],
               archs: int, band: float) -> int:
    """Store a fitted predictor; returns its id."""
    with db.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO latency_models (device_fingerprint, format, threads, runtime_version, kind, model_json, "
            "measurement_uids, archs, band, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key.device_fingerprint, key.fmt, key.threads, key.runtime_version, kind, json.dumps(model),
             json.dumps(measurement_uids), archs, band, timestamp()),
        )
        return int(cur.lastrowid)


def latest_model(db: LatencyDB, key: ModelKey) -> StoredModel | None:
    """The newest predictor fitted for `key`, or None."""
    rows = db.read(
        "SELECT * FROM latency_models WHERE device_fingerprint = ? AND format = ? AND threads = ? "
        "AND runtime_version = ? ORDER BY id DESC LIMIT 1",
        (key.device_fingerprint, key.fmt, key.threads, key.runtime_version),
    )
    if not rows:
        return None
    row = rows[0]
    return StoredModel(row["id"], key, row["kind"], json.loads(row["model_json"]),
                       tuple(json.loads(row["measurement_uids"])), row["archs"], row["band"], row["created_at"])


def measurement_counts(db: LatencyDB, key: ModelKey) -> dict[str, int]:
    """How many measurements each architecture has under `key`."""
    rows = db.read(
        "SELECT arch_key, count(*) AS n FROM measurements WHERE device_fingerprint = ? AND format = ? AND threads = ? "
        "AND runtime_version = ? AND arch_key IS NOT NULL GROUP BY arch_key",
        (key.device_fingerprint, key.fmt, key.threads, key.runtime_version),
    )
    return {row["arch_key"]: row["n"] for row in rows}
