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

An engine exports ahead of its training (in the background) each candidate whose latency may
be measured at all (`may_be_measured`), so that a measurement after the training finds its
export done; one it cannot need is not exported.
"""

from __future__ import annotations

from dataclasses import dataclass

from akd_mobile.latency_predictor import Prediction
from akd_mobile.reward import RewardConfig, mnas_reward

LATENCY_MODES = ("measure", "predict", "hybrid")
TOP_MEASURED = 5
SKIP_REWARD = 0.25


def skip_bound(prediction: Prediction, reward: RewardConfig, hard: bool) -> float | None:
    """The most a candidate can be rewarded when that is at most SKIP_REWARD under the hard
    constraint (it need not be trained), else None."""
    if not hard:
        return None
    bound = mnas_reward(1.0, max(prediction.low_ms, 1e-9), reward)
    return bound if bound <= SKIP_REWARD else None


def measure_before_training(mode: str, prediction: Prediction, reward: RewardConfig, hard: bool) -> bool:
    """Whether `hybrid` measures the candidate before training it (see the module docstring)."""
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
    """

    rewards: tuple[float, ...] = ()
    best_under_accuracy: float | None = None


def measure_after_training(prediction: Prediction, accuracy: float, reward: RewardConfig, standing: Standing) -> bool:
    """Whether a trained candidate may enter the run's top TOP_MEASURED by reward, or become
    its best under the target, at the fast end of its band: then it is measured."""
    fast = max(prediction.low_ms, 1e-9)
    if len(standing.rewards) < TOP_MEASURED or mnas_reward(accuracy, fast, reward) >= standing.rewards[-1]:
        return True
    best = standing.best_under_accuracy
    return fast <= reward.target_ms and (best is None or accuracy >= best)


def may_be_measured(mode: str, prediction: Prediction, reward: RewardConfig, hard: bool, standing: Standing) -> bool:
    """Whether a candidate's latency may be measured at some accuracy: before its training, or
    after it at accuracy 1, the most favourable. The rule after training only grows stricter
    as the run's standing improves (its top rewards and its best accuracy under the target
    never fall), so a candidate that cannot be measured now never will."""
    if skip_bound(prediction, reward, hard) is not None:
        return False
    return measure_before_training(mode, prediction, reward, hard) or measure_after_training(prediction, 1.0, reward,
                                                                                             standing)
