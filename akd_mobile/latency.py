"""The measurement service: the latency of an architecture (or a model file) on one device
with one `MeasureSettings`: the database's when it holds it, else exported, measured and
stored.

The search, `bench`, `devices check`, `finalize` and `latency sweep` all ask a
`LatencyService`. It looks each architecture up once (a remembered answer serves the search's
prefetch and its evaluation alike); `measure`/`measure_file` measure without storing, so that
`bench` can print a measurement before `store` records it; `predictor` is the device's newest
latency model for the same key, for a search that predicts (`akd_mobile.latency_policy`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from akd_base.errors import DatabaseError, DeviceError, PredictorError
from akd_base.formats import RUNTIME_OF_FORMAT
from akd_base.measurement import DeviceInfo, LatencyResult, Measured, MeasureSettings, conditions_json
from akd_mobile.space import ArchSpec
from devices.base import Device
from latency_db.predictors import ModelKey
from latency_db.store import Artifact, LatencyDB

if TYPE_CHECKING:
    from akd_mobile.latency_predictor import Predictor

log = logging.getLogger(__name__)


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
    """A measurement just made and not stored yet (see `LatencyService.store`).

    Attributes:
        outcome: the latency and where it came from.
        device: the device's description.
        device_name: the profile it was measured under.
        artifact: the measured file's database row.
        settings: how it was measured.
        conditions: how it ran (thermal state, ...), empty when the backend reports none.
    """

    outcome: LatencyOutcome
    device: DeviceInfo
    device_name: str
    artifact: Artifact
    settings: MeasureSettings
    conditions: dict[str, Any]


def runtime_version(info: DeviceInfo, fmt: str) -> str:
    """The version string of the runtime that runs `fmt` on this device, e.g. `litert 2.3.0`."""
    if fmt not in RUNTIME_OF_FORMAT:
        raise DeviceError(f"unknown format {fmt!r}; choose one of {', '.join(RUNTIME_OF_FORMAT)}")
    name = RUNTIME_OF_FORMAT[fmt]
    version = info.runtimes.get(name)
    if not version or version == "missing":
        raise DeviceError(f"device {info.model} has no {name} runtime for .{fmt} files")
    return f"{name} {version}"


class LatencyService:
    """Latencies on `device` measured with `settings`, kept in `db`.

    The database is keyed by (arch key, format, device fingerprint, threads, runtime
    version); weights, warm-up, run counts and the minimum time do not enter the key.
    With `db` None the service only measures (`devices check`).

    Raises (on creation):
        DeviceError: the device has no runtime for `settings.fmt`, or does not answer.
    """

    def __init__(self, device: Device, db: LatencyDB | None, settings: MeasureSettings) -> None:
        self.device = device
        self.db = db
        self.settings = settings
        self.info = device.info()
        self.runtime = runtime_version(self.info, settings.fmt)
        self._known: dict[str, LatencyOutcome | None] = {}  # arch key -> the database's answer
        self._predictor: Predictor | None = None

    @property
    def key(self) -> ModelKey:
        """What this service's latencies are keyed by, less the architecture (and what a
        latency model of them predicts)."""
        return ModelKey(self.info.fingerprint, self.settings.fmt, self.settings.threads, self.runtime)

    @property
    def predictor(self) -> Predictor:
        """The newest latency model of this service's key, loaded once.

        Raises:
            PredictorError: the device has no latency model for this format, threads and runtime.
        """
        if self._predictor is None:
            from akd_mobile.latency_predictor import Predictor

            if self.db is None:
                raise PredictorError("this latency service has no database to read a latency model from")
            self._predictor = Predictor(self.db, self.key)
        return self._predictor

    def lookup(self, arch: ArchSpec) -> LatencyOutcome | None:
        """The database's latency of `arch`, or None when it was never measured (asked once
        per architecture; a measurement this service stores updates the answer)."""
        if arch.key not in self._known:
            hit = None if self.db is None else self.db.lookup(
                arch.key, self.settings.fmt, self.info.fingerprint, self.settings.threads, self.runtime)
            self._known[arch.key] = None if hit is None else self._outcome(hit, arch.key)
        return self._known[arch.key]

    def latency(self, arch: ArchSpec, weights: Path | None = None) -> LatencyOutcome:
        """The latency of `arch`: a database hit, else export (with `weights`, default
        initialised ones), measure and store.

        Raises:
            ExportError: the export fails or disagrees with PyTorch.
            DeviceError: the device cannot run the model.
            DatabaseError: the measurement cannot be stored.
        """
        return self.lookup(arch) or self.store(self.measure(arch, weights))

    def measure(self, arch: ArchSpec, weights: Path | None = None) -> NewMeasurement:
        """Export `arch` (a cache lookup when already exported) and measure it; nothing stored."""
        from akd_mobile.export import export_model

        exported = export_model(arch, self.settings.fmt, weights=weights)
        artifact = Artifact(exported.sha256, self.settings.fmt, exported.size_bytes, arch.to_json(),
                            exported.converter_version)
        return self._measure(exported.path, artifact, arch.key, exported.seconds)

    def measure_file(self, path: Path) -> NewMeasurement:
        """Measure a `.tflite` or `.pte` file of the settings' format, under the architecture key
        an earlier export of the same bytes recorded in the database (only read), if any."""
        from akd_base.files import file_sha256
        from devices.local import check_artifact

        path = check_artifact(path)
        if path.suffix != f".{self.settings.fmt}":
            raise DeviceError(f"{path} is not a .{self.settings.fmt} file")
        sha = file_sha256(path)
        artifact = Artifact(sha, self.settings.fmt, path.stat().st_size)
        arch_key = None if self.db is None else self.db.arch_key_of(sha)
        return self._measure(path, artifact, arch_key, 0.0)

    def store(self, new: NewMeasurement) -> LatencyOutcome:
        """Record a measurement of `measure` or `measure_file`; returns its outcome.

        Raises:
            DatabaseError: no database, or one that cannot be written.
        """
        if self.db is None:
            raise DatabaseError("this latency service has no database to store measurements in")
        out, settings = new.outcome, new.settings
        self.db.record(new.device, out.result, fmt=out.fmt, threads=settings.threads, warmup=settings.warmup,
                       runs=settings.runs, min_time_s=settings.min_time_s, runtime_version=out.runtime_version,
                       arch_key=out.arch_key, artifact=new.artifact, device_name=new.device_name,
                       thermal=conditions_json(new.conditions))
        if out.arch_key is not None:
            self._known[out.arch_key] = self._outcome(out.result, out.arch_key)
        return out

    def _outcome(self, result: LatencyResult, arch_key: str) -> LatencyOutcome:
        """A database answer for `arch_key`."""
        return LatencyOutcome(result, True, 0.0, 0.0, None, arch_key, self.settings.fmt, self.info.fingerprint,
                              self.runtime)

    def _measure(self, path: Path, artifact: Artifact, arch_key: str | None, export_s: float) -> NewMeasurement:
        start = time.perf_counter()
        measured = self.device.measure(path, self.settings)
        return self.new_measurement(measured, path, artifact, arch_key, export_s, time.perf_counter() - start)

    def new_measurement(self, measured: Measured, path: Path, artifact: Artifact, arch_key: str | None,
                        export_s: float, measure_s: float) -> NewMeasurement:
        """A measurement of `artifact` (its file at `path`, on whichever host measured it) made
        with this service's settings on a device of this service's fingerprint, ready to `store`."""
        result = measured.result
        log.info("%s %s on %s: median %.3f ms", arch_key or path.name, artifact.fmt, self.device.name,
                 result.median_ms)
        outcome = LatencyOutcome(result, False, export_s, measure_s, path, arch_key, artifact.fmt,
                                 self.info.fingerprint, self.runtime)
        return NewMeasurement(outcome, self.info, self.device.name, artifact, self.settings, measured.conditions)
