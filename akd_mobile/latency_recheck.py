"""`latency recheck`: does the device still run at the speed the database measured it at?

A device fingerprint names a phone's model, SoC, frequencies and runtimes, or this host's CPU
model, cores and software; it cannot tell two cloud machines of the same CPU model apart, nor
a phone whose firmware or governor changed. A database carried to such a device serves
latencies (and a latency model) of another speed. The recheck measures again a few
architectures the database holds under the service's key, spread over their stored latency
range, and compares each with the median of its stored measurements: the median ratio (now
over stored) is the device's drift, and more than `max_drift` off 1 says the stored latencies
no longer describe it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from akd_base.errors import DatabaseError, error_line, stops_the_run
from akd_base.measurement import TOLERANCE, within_tolerance

if TYPE_CHECKING:
    from collections.abc import Sequence

    from akd_mobile.latency import LatencyService, NewMeasurement
    from akd_mobile.latency_eval import Agreement
    from akd_mobile.space import ArchSpec

RECHECK_ARCHS = 8


@dataclass(frozen=True)
class Recheck:
    """One architecture measured again.

    Attributes:
        arch_key: its key.
        stored_ms: the median of its stored measurements.
        stored_count: how many there are.
        now_ms: the new measurement's median, None when it failed.
        error: why it failed, else None.
    """

    arch_key: str
    stored_ms: float
    stored_count: int
    now_ms: float | None = None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """Now over stored."""
        return None if self.now_ms is None else self.now_ms / self.stored_ms


@dataclass(frozen=True)
class RecheckSummary:
    """The recheck's verdict.

    Attributes:
        rechecks: each architecture, by stored latency.
        stored_from: when the oldest of their stored measurements was made (ISO 8601 UTC).
        stored_to: when the newest was.
        drift: the median ratio now over stored, minus 1 (+0.30: 30% slower now).
        drift_low: the smallest ratio minus 1.
        drift_high: the largest ratio minus 1.
        agreement: how many new measurements lie within +-10% of their stored latency.
        max_drift: the drift beyond which the device counts as changed.
        stored: whether the new measurements were stored (asked for, and the device had not
            drifted).
    """

    rechecks: tuple[Recheck, ...]
    stored_from: str
    stored_to: str
    drift: float
    drift_low: float
    drift_high: float
    agreement: Agreement
    max_drift: float
    stored: bool

    @property
    def drifted(self) -> bool:
        """The device runs more than `max_drift` faster or slower than the database says."""
        return not within_tolerance(self.drift, self.max_drift)

    def describe(self) -> str:
        """The drift for people, e.g. `x1.70 the stored latencies (70.0% slower)`."""
        return (f"x{1 + self.drift:.2f} the stored latencies ({abs(self.drift):.1%} "
                f"{'slower' if self.drift > 0 else 'faster'})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rechecks": [{"arch_key": r.arch_key, "stored_ms": r.stored_ms, "stored_count": r.stored_count,
                          "now_ms": r.now_ms, "ratio": r.ratio, "error": r.error} for r in self.rechecks],
            "stored_from": self.stored_from, "stored_to": self.stored_to, "drift": self.drift,
            "drift_low": self.drift_low, "drift_high": self.drift_high,
            "agreement": {"trials": self.agreement.trials, "within": self.agreement.within,
                          "share": self.agreement.share, "lower": self.agreement.lower},
            "max_drift": self.max_drift, "drifted": self.drifted, "stored": self.stored,
        }


def spread_picks(latencies: Sequence[float], count: int) -> list[int]:
    """Indices of `count` of `latencies` (all when fewer), evenly spaced in latency order from
    the fastest (the slowest too, for a count of two or more)."""
    import numpy as np

    order = np.argsort(latencies, kind="stable")
    if count >= len(order):
        return [int(i) for i in order]
    positions = np.round(np.linspace(0, len(order) - 1, count)).astype(int)
    return [int(order[p]) for p in positions]


def recheck(service: LatencyService, count: int = RECHECK_ARCHS, max_drift: float = TOLERANCE, store: bool = False,
            on_each: Callable[[Recheck], None] = lambda r: None) -> RecheckSummary:
    """Measure again `count` architectures the database holds under `service.key` (exported
    again where the export cache lacks them) and compare. With `store`, the new measurements
    are stored beside the old unless the device drifted (that would mix two speeds). An
    architecture's own failure is reported and left out; the device's or the host's is raised.

    Raises:
        DatabaseError: the database holds no measurement under the service's key, or every
            recheck failed.
    """
    import numpy as np

    from akd_mobile.latency_eval import Agreement
    from akd_mobile.latency_predictor import arch_latency, measured_archs
    from latency_db.predictors import keyed_measurements

    assert service.db is not None, "a recheck compares with the database"
    measurements = keyed_measurements(service.db, service.key)
    if not measurements:
        raise DatabaseError(f"the database holds no measurement for {service.key.describe()}; nothing to recheck")
    keys, archs, per_arch_ms = measured_archs(measurements)
    stored_ms = arch_latency(per_arch_ms)
    picks = spread_picks(stored_ms, count)
    picked = {keys[i] for i in picks}
    dates = [m.measured_at for m in measurements if m.arch_key in picked]
    rechecks, new = [], []
    for i in picks:
        one, measured = _measure_again(service, archs[i], keys[i], float(stored_ms[i]), len(per_arch_ms[i]))
        on_each(one)
        rechecks.append(one)
        new += [measured] if measured else []
    ratios = np.array([r.ratio for r in rechecks if r.ratio is not None])
    if not len(ratios):
        raise DatabaseError(f"none of the {len(rechecks)} architectures could be measured again: "
                            f"{rechecks[0].error}")
    drift = float(np.median(ratios)) - 1
    keep = store and within_tolerance(drift, max_drift)
    for measured in new if keep else []:
        service.store(measured)
    return RecheckSummary(tuple(rechecks), min(dates), max(dates), drift, float(ratios.min()) - 1,
                          float(ratios.max()) - 1, Agreement.of(ratios - 1), max_drift, keep)


def _measure_again(service: LatencyService, arch: ArchSpec, key: str, stored_ms: float,
                   stored_count: int) -> tuple[Recheck, NewMeasurement | None]:
    try:
        new = service.measure(arch)
    except Exception as exc:  # noqa: BLE001 - one architecture's failure is reported, the recheck goes on
        if stops_the_run(exc):
            raise
        return Recheck(key, stored_ms, stored_count, error=error_line(exc)), None
    return Recheck(key, stored_ms, stored_count, new.outcome.result.median_ms), new
