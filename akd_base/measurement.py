"""A latency measurement's types: how it is taken (`MeasureSettings`, the one set of
defaults), what it was taken on (`DeviceInfo`, whose fingerprint keys the latency database)
and what it found (`LatencyResult`, with its conditions in `Measured`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from akd_base.errors import DeviceError
from akd_base.formats import FORMATS

# The command-line option that sets each MeasureSettings field (named in its errors).
OPTION_OF = {"fmt": "--format", "threads": "--threads", "warmup": "--warmup", "runs": "--runs",
             "min_time_s": "--min-time"}
PROFILE_KEYS = ("threads", "warmup", "runs", "min_time_s")  # the fields a device profile may set
_LEAST_COUNT = {"threads": 1, "warmup": 0, "runs": 1}
TOLERANCE = 0.10  # two latencies agree within +-10%: a prediction and a measurement, or a device now and then


def within_tolerance(relative_errors: Any, tolerance: float = TOLERANCE) -> Any:
    """Whether each relative error (a number, or a numpy array of them) lies within
    +-`tolerance`, the bound itself included."""
    return abs(relative_errors) <= tolerance + 1e-12


@dataclass(frozen=True)
class MeasureSettings:
    """How one latency is measured. The defaults here are the only ones: a device profile's
    keys replace them, and a command's options replace those (`with_options`).

    Attributes:
        fmt: artifact format, `tflite` or `pte`.
        threads: inference threads.
        warmup: untimed runs first.
        runs: timed runs, at least.
        min_time_s: timed runs go on past `runs` until they have taken this many seconds in
            all (LiteRT `benchmark_model`'s `--num_runs` and `--min_secs`).
    """

    fmt: str = "tflite"
    threads: int = 1
    warmup: int = 5
    runs: int = 30
    min_time_s: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name), f.name))

    @classmethod
    def from_profile(cls, table: Mapping[str, Any], where: str) -> MeasureSettings:
        """The defaults with a profile's `threads`, `warmup`, `runs` and `min_time_s` put in;
        DeviceError naming `where` and the key for a bad value."""
        return cls()._merged({k: table[k] for k in PROFILE_KEYS if k in table}, lambda key: f"{where}: {key}")

    def with_options(self, **values: Any) -> MeasureSettings:
        """These settings with the given options put in (None keeps a value); DeviceError
        naming the option (`--runs`, ...) for a bad value."""
        return self._merged(values, OPTION_OF.__getitem__)

    def _merged(self, values: Mapping[str, Any], name_of: Callable[[str], str]) -> MeasureSettings:
        changes = {key: _checked(key, value, name_of(key)) for key, value in values.items() if value is not None}
        return dataclasses.replace(self, **changes)


def _checked(key: str, value: Any, name: str) -> Any:
    """`value` for field `key`, normalised (seconds as float), else DeviceError naming `name`."""
    if key == "fmt":
        if value not in FORMATS:
            raise DeviceError(f"{name} must be one of {', '.join(FORMATS)}, got {value!r}")
        return value
    if key == "min_time_s":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise DeviceError(f"{name} must be a number of seconds >= 0, got {value!r}")
        return float(value)
    least = _LEAST_COUNT[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DeviceError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


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


@dataclass(frozen=True)
class Measured:
    """One measurement as a device returns it.

    Attributes:
        result: the statistics.
        conditions: how it ran (thermal state, CPU mask, tool checksum, ...); empty when the
            backend reports none.
    """

    result: LatencyResult
    conditions: dict[str, Any] = field(default_factory=dict)


def conditions_json(conditions: dict[str, Any]) -> str | None:
    """A measurement's conditions as one JSON line (the latency database's `thermal` column),
    None when there are none."""
    return json.dumps(conditions, sort_keys=True) if conditions else None


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
