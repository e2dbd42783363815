"""When a search measures a candidate's latency and when a prediction stands
(`search --latency measure|predict|hybrid`). A latency the database holds is always used.

- `measure`: every other candidate is exported and measured (the default).
- `predict`: the device's latency model predicts; a candidate that may enter the run's top
  TOP_MEASURED by reward (its reward at the fast end of the prediction's band reaches the
  TOP_MEASURED-th best so far, or the top is not full yet), or may become its best under the
  target (the fast end is under it and its accuracy reaches the best there so far), is
  measured after its proxy training: the run's best candidates are always measured.
- `hybrid`: as `predict`, and measured before training where the decision depends on the
  latency: under the hard constraint when the target lies inside the prediction's band, and
  whenever the prediction lies outside the latencies the model was fitted on. (A candidate
  skipped below is neither measured nor exported.)

Under the hard constraint, `predict` and `hybrid` do not train a candidate whose reward could
not exceed SKIP_REWARD even at accuracy 1 and the fast end of the band (four times the target
or more): it is stored as `skipped`, that bound as its reward, and the reason.

Both check the model against the run's own measurements: the last MODEL_CHECK_WINDOW of the
run's candidates measured with a prediction of the model beside them (at least
MODEL_CHECK_MIN): when the median of measured over predicted is more than TOLERANCE off 1
(the device no longer runs at the speed the model was fitted at, see `latency recheck`),
every candidate the database does not hold is measured before its training and none is
skipped, as in `measure`, for as long as the median stays off. Predictions are still made and
recorded, so the check goes on; a window of recent ones follows a device that changed within
the run (a resume on another machine).

An engine exports ahead of its training (in the background) each candidate whose latency may
be measured at all (`may_be_measured`), so that a measurement after the training finds its
export done; one it cannot need is not exported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from akd_base.measurement import within_tolerance
from akd_mobile.latency_predictor import Prediction
from akd_mobile.reward import RewardConfig, mnas_reward

LATENCY_MODES = ("measure", "predict", "hybrid")
TOP_MEASURED = 5
SKIP_REWARD = 0.25
MODEL_CHECK_MIN = 5
MODEL_CHECK_WINDOW = 10


def model_drift(measured_and_predicted: Sequence[tuple[float, float]]) -> float | None:
    """The median of measured over predicted latency, minus 1 (+0.3: the device runs 30% slower
    than its model says), of candidates measured with a prediction beside them; None with
    fewer than MODEL_CHECK_MIN."""
    if len(measured_and_predicted) < MODEL_CHECK_MIN:
        return None
    return float(np.median([measured / predicted for measured, predicted in measured_and_predicted])) - 1


def model_is_off(drift: float | None) -> bool:
    """A `model_drift` more than TOLERANCE off 0: the model no longer describes the device."""
    return drift is not None and not within_tolerance(drift)


def skip_bound(prediction: Prediction, reward: RewardConfig, hard: bool, standing: Standing) -> float | None:
    """The most a candidate can be rewarded when that is at most SKIP_REWARD under the hard
    constraint (it need not be trained), else None (and None while the model is off)."""
    if not hard or standing.model_off:
        return None
    bound = mnas_reward(1.0, max(prediction.low_ms, 1e-9), reward)
    return bound if bound <= SKIP_REWARD else None


def measure_before_training(mode: str, prediction: Prediction, reward: RewardConfig, hard: bool,
                            standing: Standing) -> bool:
    """Whether the candidate is measured before its training: by `hybrid` where the decision
    depends on it, by both modes while the model is off (see the module docstring)."""
    if standing.model_off:
        return True
    if mode != "hybrid":
        return False
    straddles = hard and prediction.low_ms <= reward.target_ms <= prediction.high_ms
    return straddles or prediction.extrapolated


@dataclass(frozen=True)
class Standing:
    """Where a run stands, as far as the policy cares.

    Attributes:
        rewards: its best rewards so far, best first, at most TOP_MEASURED.
        best_under_accuracy: the best accuracy of a candidate under the target so far, None
            before there is one.
        model_drift: `model_drift` of its last MODEL_CHECK_WINDOW candidates measured with a
            prediction of its model, None before there are enough.
    """

    rewards: tuple[float, ...] = ()
    best_under_accuracy: float | None = None
    model_drift: float | None = None

    @property
    def model_off(self) -> bool:
        """The latency model is more than TOLERANCE off the run's measurements."""
        return model_is_off(self.model_drift)


def measure_after_training(prediction: Prediction, accuracy: float, reward: RewardConfig, standing: Standing) -> bool:
    """Whether a trained candidate may enter the run's top TOP_MEASURED by reward, or become
    its best under the target, at the fast end of its band (or the model went off during its
    training): then it is measured."""
    if standing.model_off:
        return True
    fast = max(prediction.low_ms, 1e-9)
    if len(standing.rewards) < TOP_MEASURED or mnas_reward(accuracy, fast, reward) >= standing.rewards[-1]:
        return True
    best = standing.best_under_accuracy
    return fast <= reward.target_ms and (best is None or accuracy >= best)


def may_be_measured(mode: str, prediction: Prediction, reward: RewardConfig, hard: bool, standing: Standing) -> bool:
    """Whether a candidate's latency may be measured at some accuracy: before its training, or
    after it at accuracy 1, the most favourable. The rule after training only grows stricter
    as the run's standing improves (its top rewards and its best accuracy under the target
    never fall), so a candidate that cannot be measured now never will, unless the model goes
    off meanwhile (its export is then made when it is measured)."""
    if skip_bound(prediction, reward, hard, standing) is not None:
        return False
    return (measure_before_training(mode, prediction, reward, hard, standing)
            or measure_after_training(prediction, 1.0, reward, standing))
