"""A candidate's latency: from the database when known, else exported, measured and stored.

`arch_latency` is what the search loop calls per candidate. `measure_arch` and
`measure_file` always measure and store nothing: `store_measurement` records what they
return (the `bench` command prints a measurement before it stores it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from akd_base.errors import DeviceError
from akd_mobile.space import ArchSpec
from akd_base.formats import RUNTIME_OF_FORMAT
from akd_base.measurement import DeviceInfo, LatencyResult
from devices.base import Device
from latency_db.store import Artifact, LatencyDB

log = logging.getLogger(__name__)

DEFAULT_WARMUP = 10
DEFAULT_RUNS = 50


@dataclass(frozen=True)
class LatencyOutcome:
    """A latency and where it came from.

    Attributes:
        result: the statistics.
        cached: True when read from the database (nothing exported or measured).
        export_s: seconds spent exporting (a cache lookup when the file existed).
        measure_s: seconds spent measuring.
        artifact: the measured model file, None for a database hit.
        arch_key: the architecture's key, None for a file of unknown architecture.
        fmt: `tflite` or `pte`.
        device_fingerprint: the device's fingerprint.
        runtime_version: e.g. `litert 2.3.0`.
    """

    result: LatencyResult
    cached: bool
    export_s: float
    measure_s: float
    artifact: Path | None
    arch_key: str | None
    fmt: str
    device_fingerprint: str
    runtime_version: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, statistics flattened in."""
        return {
            "arch_key": self.arch_key,
            "format": self.fmt,
            "device_fingerprint": self.device_fingerprint,
            "runtime_version": self.runtime_version,
            "cached": self.cached,
            "export_s": self.export_s,
            "measure_s": self.measure_s,
            "artifact": str(self.artifact) if self.artifact else None,
            **self.result.to_dict(),
        }


@dataclass(frozen=True)
class NewMeasurement:
    """A measurement just made and not stored yet (see `store_measurement`).

    Attributes:
        outcome: the latency and where it came from.
        device: the device's description.
        device_name: the profile it was measured under.
        artifact: the measured file's database row.
        threads: inference threads.
        warmup: untimed runs first.
        runs: timed runs asked for.
        min_time_s: least seconds of timed runs asked for.
        thermal: the device's conditions as JSON, None when its backend reports none.
    """

    outcome: LatencyOutcome
    device: DeviceInfo
    device_name: str
    artifact: Artifact
    threads: int
    warmup: int
    runs: int
    min_time_s: float
    thermal: str | None


def runtime_version(info: DeviceInfo, fmt: str) -> str:
    """The version string of the runtime that runs `fmt` on this device, e.g. `litert 2.3.0`."""
    if fmt not in RUNTIME_OF_FORMAT:
        raise DeviceError(f"unknown format {fmt!r}; choose one of {', '.join(RUNTIME_OF_FORMAT)}")
    name = RUNTIME_OF_FORMAT[fmt]
    version = info.runtimes.get(name)
    if not version or version == "missing":
        raise DeviceError(f"device {info.model} has no {name} runtime for .{fmt} files")
    return f"{name} {version}"


def arch_latency(
    arch: ArchSpec,
    device: Device,
    db: LatencyDB,
    fmt: str = "tflite",
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    weights: Path | None = None,
    min_time_s: float = 0.0,
) -> LatencyOutcome:
    """Latency of `arch` on `device`: a database hit, else export, measure and record.

    The database is keyed by (arch key, format, device fingerprint, threads, runtime
    version); weights, warm-up, run counts and `min_time_s` do not enter the key.

    Raises:
        ExportError: the export fails or disagrees with PyTorch.
        DeviceError: the device cannot run the model.
    """
    stored = stored_latency(arch, device, db, fmt, threads)
    if stored is not None:
        return stored
    return store_measurement(db, measure_arch(arch, device, fmt, threads, warmup, runs, weights, min_time_s))


def stored_latency(arch: ArchSpec, device: Device, db: LatencyDB, fmt: str = "tflite",
                   threads: int = 1) -> LatencyOutcome | None:
    """The database's latency of `arch` on `device`, or None when it was never measured."""
    info = device.info()
    runtime = runtime_version(info, fmt)
    hit = db.lookup(arch.key, fmt, info.fingerprint, threads, runtime)
    if hit is None:
        return None
    return LatencyOutcome(hit, True, 0.0, 0.0, None, arch.key, fmt, info.fingerprint, runtime)


def measure_arch(
    arch: ArchSpec,
    device: Device,
    fmt: str = "tflite",
    threads: int = 1,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    weights: Path | None = None,
    min_time_s: float = 0.0,
) -> NewMeasurement:
    """Export `arch` (a cache lookup when already exported) and measure it."""
    from akd_mobile.export import export_model

    runtime = runtime_version(device.info(), fmt)
    exported = export_model(arch, fmt, weights=weights)
    artifact = Artifact(exported.sha256, fmt, exported.size_bytes, arch.to_json(), exported.converter_version)
    return _measure(device, exported.path, artifact, arch.key, runtime, threads, warmup, runs, min_time_s,
                    exported.seconds)


def measure_file(path: Path, device: Device, db: LatencyDB, threads: int = 1,
                 warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, min_time_s: float = 0.0) -> NewMeasurement:
    """Measure a `.tflite` or `.pte` file, under the architecture key an earlier export of
    the same bytes recorded in `db` (only read), if any."""
    from akd_base.files import file_sha256
    from devices.local import check_artifact

    path = check_artifact(path)
    fmt = path.suffix[1:]
    runtime = runtime_version(device.info(), fmt)
    sha = file_sha256(path)
    artifact = Artifact(sha, fmt, path.stat().st_size)
    return _measure(device, path, artifact, db.arch_key_of(sha), runtime, threads, warmup, runs, min_time_s, 0.0)


def store_measurement(db: LatencyDB, new: NewMeasurement) -> LatencyOutcome:
    """Record a measurement of `measure_arch` or `measure_file` in `db`; returns its outcome.

    Raises:
        DatabaseError: the database cannot be written.
    """
    out = new.outcome
    db.record(new.device, out.result, fmt=out.fmt, threads=new.threads, warmup=new.warmup, runs=new.runs,
              min_time_s=new.min_time_s, runtime_version=out.runtime_version, arch_key=out.arch_key,
              artifact=new.artifact, device_name=new.device_name, thermal=new.thermal)
    return out


def _measure(device: Device, path: Path, artifact: Artifact, arch_key: str | None, runtime: str, threads: int,
             warmup: int, runs: int, min_time_s: float, export_s: float) -> NewMeasurement:
    info = device.info()
    start = time.perf_counter()
    result = device.measure(path, threads, warmup, runs, min_time_s)
    measure_s = time.perf_counter() - start
    conditions = getattr(device, "last_conditions", None)  # adb devices: thermal state, CPU mask, ...
    log.info("%s %s on %s: median %.3f ms", arch_key or path.name, artifact.fmt, device.name, result.median_ms)
    outcome = LatencyOutcome(result, False, export_s, measure_s, path, arch_key, artifact.fmt, info.fingerprint, runtime)
    return NewMeasurement(outcome, info, device.name, artifact, threads, warmup, runs, min_time_s,
                          conditions.to_json() if conditions is not None else None)
