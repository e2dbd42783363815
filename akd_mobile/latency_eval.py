"""How well a latency predictor does on architectures it never saw, beside how well the
device agrees with itself.

`evaluate_predictor`: the measured architectures are shuffled (seeded) and split by
architecture key: `held_out` of them are the test set, and for each training size n the
first n of the rest fit a model, each on its first measurement only (n students, n
measurements). A held-out architecture's latency is the median of all its measurements
(`latency sweep --times K` takes K, a whole pass apart, so that the host's drift averages out
of the truth a prediction is judged against). Per n: the share of test predictions within
+-10% of that latency with its one-sided 95% Clopper-Pearson lower bound, the RMSPE (root
mean squared relative error) and Kendall's tau between predicted and measured; and how many
predictions lie within +-10% of at least one of their architecture's own measurements,
beside how many held-out architectures' measurements spread by more than 10% themselves:
a miss near one of its own measurements is the device's noise as much as the predictor's.
These figures describe a fit on one measurement per architecture; `latency fit` stores a
model fitted on every measurement (an architecture at the median of its own).

`noise_floor`: per architecture measured more than once, every later measurement against
its first: the share within +-10%, with the same bound: how well the device repeats itself.
It is not a hard ceiling: a prediction of the true latency differs from a measurement by that
measurement's noise alone, a second measurement by the noise of both. A predictor that
reaches it does as well as measuring again.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from akd_base.errors import PredictorError
from akd_base.measurement import within_tolerance
from akd_mobile.latency_predictor import MIN_ARCHS, arch_latency, fit_model, measured_archs
from latency_db.predictors import KeyedMeasurement, ModelKey

CONFIDENCE = 0.95
SIZES = (10, 30, 100, 300)


def clopper_pearson_lower(successes: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """The one-sided lower confidence bound of a binomial proportion (exact, Clopper-Pearson)."""
    from scipy.stats import beta

    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    return 0.0 if successes == 0 else float(beta.ppf(1 - confidence, successes, trials - successes + 1))


@dataclass(frozen=True)
class Agreement:
    """How many of `trials` relative errors were within TOLERANCE.

    Attributes:
        trials: comparisons made.
        within: of them within +-TOLERANCE.
        share: within / trials.
        lower: its one-sided CONFIDENCE Clopper-Pearson lower bound.
    """

    trials: int
    within: int
    share: float
    lower: float

    @classmethod
    def of(cls, relative_errors: np.ndarray) -> Agreement:
        within = int(np.sum(within_tolerance(relative_errors)))
        n = len(relative_errors)
        return cls(n, within, within / n, clopper_pearson_lower(within, n))


@dataclass(frozen=True)
class SizeResult:
    """A model fitted on `train_archs` architectures, tested on the held-out ones.

    Attributes:
        train_archs: architectures it was fitted on.
        agreement: its held-out predictions within +-10%.
        rmspe: root mean squared relative error on the held-out set.
        kendall_tau: rank agreement of predicted and measured on the held-out set.
        band: the model's own (cross-validated) relative error band.
        tile: the channel tile its fit chose.
        near_a_measurement: held-out predictions within +-10% of at least one of their
            architecture's own measurements, hits included (a miss counted here lies
            within the device's own spread).
    """

    train_archs: int
    agreement: Agreement
    rmspe: float
    kendall_tau: float
    band: float
    tile: int
    near_a_measurement: int


@dataclass(frozen=True)
class Evaluation:
    """A predictor's evaluation under one ModelKey.

    Attributes:
        key: what was evaluated.
        archs: measured architectures in all.
        held_out: of them in the test set.
        held_out_measurements: how many measurements the test set's latencies are medians of.
        held_out_spread: held-out architectures whose own measurements spread by more than
            10% (slowest over fastest), of those measured more than once, as (spread, of).
        results: one per training size that fits beside the test set.
        noise: the device's agreement with itself, None when no architecture was measured twice.
        seed: the shuffle's seed.
    """

    key: ModelKey
    archs: int
    held_out: int
    held_out_measurements: int
    held_out_spread: tuple[int, int]
    results: tuple[SizeResult, ...]
    noise: Agreement | None
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate_predictor(measurements: list[KeyedMeasurement], key: ModelKey, sizes: tuple[int, ...] = SIZES,
                       held_out: int | None = None, seed: int = 0) -> Evaluation:
    """Fit on the first n of a seeded shuffle of the architectures (one measurement each),
    for each n in `sizes`, and test on the `held_out` last (default: half of them) against
    the median of their measurements. `measurements` are oldest first (as
    `keyed_measurements` gives them): an architecture's first is the one it is fitted on.

    Raises:
        PredictorError: too few architectures to hold some out and fit on MIN_ARCHS, or a
            held-out count that leaves too few.
    """
    from scipy.stats import kendalltau

    keys, archs, per_arch_ms = measured_archs(measurements)
    first = np.array([ms[0] for ms in per_arch_ms])
    y = arch_latency(per_arch_ms)
    if held_out is None:
        held_out = len(keys) // 2
    if held_out < 1 or len(keys) - held_out < MIN_ARCHS:
        raise PredictorError(f"{len(keys)} measured architectures cannot give {held_out} held out and "
                             f"{MIN_ARCHS} to fit on; measure more (akd-mobile latency sweep) or hold fewer out")
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    test, pool = order[len(order) - held_out:], order[: len(order) - held_out]
    results = []
    for n in sorted(set(sizes)):
        if not MIN_ARCHS <= n <= len(pool):
            continue
        model = fit_model([archs[i] for i in pool[:n]], first[pool[:n]])
        predicted = model.predict([archs[i] for i in test])
        errors = predicted / y[test] - 1.0
        tau = float(kendalltau(predicted, y[test]).statistic) if held_out > 1 else float("nan")
        near = sum(any(within_tolerance(p / m - 1.0) for m in per_arch_ms[i]) for p, i in zip(predicted, test))
        results.append(SizeResult(n, Agreement.of(errors), float(np.sqrt(np.mean(errors**2))), tau, model.band,
                                  model.tile, near))
    if not results:
        raise PredictorError(f"no training size in {', '.join(map(str, sizes))} fits beside {held_out} held out of "
                             f"{len(keys)} architectures (sizes must be {MIN_ARCHS} .. {len(pool)})")
    multi = [per_arch_ms[i] for i in test if len(per_arch_ms[i]) > 1]
    spread = (sum(not within_tolerance(max(ms) / min(ms) - 1.0) for ms in multi), len(multi))
    return Evaluation(key, len(keys), held_out, sum(len(per_arch_ms[i]) for i in test), spread, tuple(results),
                      noise_floor(measurements), seed)


def noise_floor(measurements: list[KeyedMeasurement]) -> Agreement | None:
    """Every later measurement of an architecture against its first (measurements oldest
    first): the share within +-10%; None when none was measured twice."""
    first: dict[str, float] = {}
    errors = []
    for m in measurements:
        if m.arch_key in first:
            errors.append(m.median_ms / first[m.arch_key] - 1.0)
        else:
            first[m.arch_key] = m.median_ms
    return Agreement.of(np.array(errors)) if errors else None
