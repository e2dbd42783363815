"""Seed a device's latency predictor: measure N students spread over the space's cost range.

`sweep_archs` picks N architectures whose MACs are spread evenly in log scale from the
space's cheapest to its dearest sampled student (random samples bunch in the middle; a
predictor has to know the ends too), then shuffles them with the same seed, so the first
k of an interrupted sweep are a fair sample of the whole. `run_sweep` measures each through
the latency service (an architecture the database holds costs nothing, so the same command
resumes). For the device's noise floor (`akd_mobile.latency_eval.noise_floor`) it measures
the j-th architecture a second time right after the 2j-th, for j up to `repeat`: the repeats
are spread over the sweep (so they see the host's drift), and an interrupted sweep has
repeated half of what it measured, up to `repeat`. With `times` above 1 it then passes over
the architectures again, until each has `times` measurements, each pass a whole sweep after
the last: their median is a truer latency to test a predictor against than one measurement
on a host whose speed drifts (`akd_mobile.latency_eval`).

Before a sweep adds to measurements the database already holds of the device, `check_speed`
measures a few of them again (`akd_mobile.latency_recheck`): on a machine of the same
fingerprint but another speed (another cloud host, a phone with other firmware) it stops,
rather than mix two speeds in one device's measurements.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from akd_base.errors import DatabaseError, DriftError, error_line, stops_the_run
from akd_mobile.latency import LatencyOutcome, LatencyService
from akd_mobile.latency_recheck import RECHECK_ARCHS, Recheck, RecheckSummary, recheck
from akd_mobile.space import ArchSpec, SearchSpace
from latency_db.predictors import keyed_measurements, measurement_counts


POOL_PER_PICK = 20  # random samples drawn per architecture picked


def sweep_archs(space: SearchSpace, n: int, seed: int = 0) -> list[ArchSpec]:
    """`n` distinct architectures of `space`, spread evenly over log MACs, in a seeded order."""
    rng = random.Random(seed)
    pool: dict[str, tuple[float, ArchSpec]] = {}
    for _ in range(POOL_PER_PICK * n):
        arch = space.sample(rng)
        pool.setdefault(arch.key, (math.log(space.cost(arch).macs), arch))
    ranked = sorted(pool.values(), key=lambda item: (item[0], item[1].key))
    lo, hi = ranked[0][0], ranked[-1][0]
    picked: list[ArchSpec] = []
    taken: set[int] = set()
    for i in range(min(n, len(ranked))):
        target = lo + (hi - lo) * (i + 0.5) / n
        best = min((j for j in range(len(ranked)) if j not in taken), key=lambda j: abs(ranked[j][0] - target))
        taken.add(best)
        picked.append(ranked[best][1])
    rng.shuffle(picked)
    return picked


@dataclass(frozen=True)
class SweepProgress:
    """One architecture of a sweep done (or failed).

    Attributes:
        index: its position, from 1.
        total: measurements the sweep makes (archs, repeats, and archs again per later pass).
        arch_key: the architecture.
        median_ms: its latency, None when it failed.
        cached: True when the database already held it (in a repeat or a later pass: it was
            not measured again, as it had enough measurements or none).
        error: why it failed, None otherwise.
    """

    index: int
    total: int
    arch_key: str
    median_ms: float | None
    cached: bool
    error: str | None = None


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep did: architectures measured now, found in the database, failed, repeated
    (for the noise floor), and measured again in the later passes."""

    measured: int
    cached: int
    failed: int
    repeated: int
    remeasured: int


def adds_measurements(counts: dict[str, int], archs: list[ArchSpec], repeat: int, times: int) -> bool:
    """Whether a sweep of `archs` would measure anything, given each architecture's count of
    measurements (`measurement_counts`); one whose export failed before counts as missing."""
    repeats = min(repeat, len(archs) // 2)
    return (any(counts.get(a.key, 0) < times for a in archs)
            or any(counts.get(a.key, 0) < 2 for a in archs[:repeats]))


def check_speed(service: LatencyService, archs: list[ArchSpec], repeat: int, times: int, max_drift: float,
                on_each: Callable[[Recheck], None] = lambda r: None) -> RecheckSummary | None:
    """When the sweep would add to measurements the database holds of the device, `recheck`
    it first; None when there was nothing to check.

    Raises:
        DriftError: the device drifted more than `max_drift` from what the database holds, or
            none of the architectures rechecked could be measured.
    """
    assert service.db is not None, "a sweep stores what it measures"
    counts = Counter(m.arch_key for m in keyed_measurements(service.db, service.key))  # those a recheck can use
    if not counts or not adds_measurements(counts, archs, repeat, times):
        return None
    way_out = "sweep into a new --db, or pass --allow-drift"
    try:
        summary = recheck(service, RECHECK_ARCHS, max_drift, on_each=on_each)
    except DatabaseError as exc:
        raise DriftError(f"cannot check the device against its stored measurements: {exc}; {way_out}") from exc
    if summary.drifted:
        raise DriftError(f"this device now runs at {summary.describe()} of the {sum(counts.values())} measurements "
                         f"the database holds of it (median of {summary.agreement.trials} measured again); a sweep "
                         f"here would mix two speeds: {way_out}")
    return summary


def run_sweep(service: LatencyService, archs: list[ArchSpec], repeat: int = 0, times: int = 1,
              on_progress: Callable[[SweepProgress], None] = lambda progress: None) -> SweepSummary:
    """Measure each of `archs` unless the database holds it, and the j-th again after the
    2j-th (j <= `repeat`) unless it has a second measurement already; then pass over them
    again, measuring in pass p each that has fewer than p measurements, up to p = `times`.
    An architecture's own failure (it does not convert) is reported and skipped; the
    device's or the host's stops the sweep (raised).
    """
    assert service.db is not None, "a sweep stores what it measures"
    repeats = min(repeat, len(archs) // 2)
    total = len(archs) + repeats + (times - 1) * len(archs)
    measured = cached = failed = repeated = remeasured = 0
    done = 0

    def attempt(arch: ArchSpec, get: Callable[[], LatencyOutcome]) -> LatencyOutcome | None:
        """`get()` and report it; None after reporting an architecture's own failure (the
        device's is raised)."""
        nonlocal failed
        try:
            out = get()
        except Exception as exc:  # noqa: BLE001 - one architecture's failure is reported, the sweep goes on
            if stops_the_run(exc):
                raise
            failed += 1
            on_progress(SweepProgress(done, total, arch.key, None, False, error_line(exc)))
            return None
        on_progress(SweepProgress(done, total, arch.key, out.result.median_ms, out.cached))
        return out

    def again(arch: ArchSpec, wanted: bool, why_not: str) -> bool:
        """Measure `arch` once more if `wanted` (True when it was), else report what the
        database holds."""
        if wanted:
            return attempt(arch, lambda: service.store(service.measure(arch))) is not None
        hit = service.lookup(arch)
        on_progress(SweepProgress(done, total, arch.key, hit and hit.result.median_ms, True, None if hit else why_not))
        return False

    for position, arch in enumerate(archs, start=1):
        done += 1
        out = attempt(arch, lambda: service.latency(arch))
        if out is not None:
            measured += not out.cached
            cached += out.cached
        if position % 2 == 0 and position // 2 <= repeats:
            done += 1
            first = archs[position // 2 - 1]
            once = measurement_counts(service.db, service.key).get(first.key, 0) == 1  # not failed, not repeated yet
            repeated += again(first, once, "not repeated: its first measurement failed")
    for pass_number in range(2, times + 1):
        counts = measurement_counts(service.db, service.key)
        for arch in archs:
            done += 1
            remeasured += again(arch, 0 < counts.get(arch.key, 0) < pass_number,
                                "not measured again: its first measurement failed")
    return SweepSummary(measured, cached, failed, repeated, remeasured)
