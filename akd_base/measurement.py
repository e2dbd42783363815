"""The result types of a latency measurement: what was measured on (`DeviceInfo`, whose
fingerprint keys the latency database) and what it found (`LatencyResult`)."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one model on one device.

    Attributes:
        count: number of timed runs the statistics summarise.
        median_ms: median latency.
        mean_ms: mean latency.
        std_ms: standard deviation of the latency.
        min_ms: fastest run.
        max_ms: slowest run.
        p90_ms: 90th percentile, None when the tool reports no per-run samples.
        samples_ms: raw per-run latencies, empty when the tool only prints a summary.
    """

    count: int
    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float | None = None
    samples_ms: tuple[float, ...] = field(default=())

    @classmethod
    def from_samples(cls, samples_ms: list[float] | tuple[float, ...]) -> LatencyResult:
        """Summarise raw per-run latencies (at least one)."""
        samples = tuple(float(s) for s in samples_ms)
        if not samples:
            raise ValueError("no latency samples")
        ordered = sorted(samples)
        return cls(
            count=len(samples),
            median_ms=statistics.median(ordered),
            mean_ms=statistics.fmean(ordered),
            std_ms=statistics.pstdev(ordered) if len(ordered) > 1 else 0.0,
            min_ms=ordered[0],
            max_ms=ordered[-1],
            p90_ms=_percentile(ordered, 0.90),
            samples_ms=samples,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        return d


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (numpy's default method)."""
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class DeviceInfo:
    """What a device says about itself; `fingerprint` keys the latency database.

    Attributes:
        backend: backend name (`local`, `adb`, ...).
        model: device model (phone model, or host CPU model).
        soc: system on chip or CPU name.
        abi: instruction set / Android ABI.
        cores: number of CPU cores.
        max_freqs_khz: per-core maximum frequency, empty when unknown.
        runtimes: runtime name to version (e.g. {"litert": "2.3.0"}).
        extra: anything else the backend reports (build fingerprint, governors, ...).
    """

    backend: str
    model: str
    soc: str
    abi: str
    cores: int
    max_freqs_khz: tuple[int, ...] = ()
    runtimes: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Stable short hash of the hardware identity (not of runtime versions,
        which are stored per measurement)."""
        ident = {
            "backend": self.backend,
            "model": self.model,
            "soc": self.soc,
            "abi": self.abi,
            "cores": self.cores,
            "max_freqs_khz": list(self.max_freqs_khz),
            "build": self.extra.get("build_fingerprint", ""),
        }
        blob = json.dumps(ident, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, fingerprint included."""
        d = asdict(self)
        d["max_freqs_khz"] = list(self.max_freqs_khz)
        d["fingerprint"] = self.fingerprint
        return d
