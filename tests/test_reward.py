"""The MnasNet reward against values worked out by hand."""

from __future__ import annotations

import pytest

from akd_base.errors import SearchError
from akd_mobile.reward import RewardConfig, mnas_reward


def test_soft_constraint_values():
    soft = RewardConfig.constraint("soft", 10.0)
    assert (soft.alpha, soft.beta) == (-0.07, -0.07)
    # at the target the reward is the accuracy
    assert mnas_reward(0.8, 10.0, soft) == pytest.approx(0.8)
    # twice the target: 0.8 * 2 ** -0.07 = 0.8 * 0.952637998...
    assert mnas_reward(0.8, 20.0, soft) == pytest.approx(0.8 * 0.9526379980, rel=1e-9)
    # half the target: 0.8 * 0.5 ** -0.07 = 0.8 * 1.049717...
    assert mnas_reward(0.8, 5.0, soft) == pytest.approx(0.8 * 1.0497166836, rel=1e-9)


def test_soft_constraint_trades_accuracy_for_latency_as_mnasnet_says():
    # MnasNet picks alpha so that 5% more accuracy is worth about 2x latency: 1.05 * 2^-0.07 ~ 1
    soft = RewardConfig.constraint("soft", 10.0)
    assert mnas_reward(0.84, 20.0, soft) == pytest.approx(mnas_reward(0.80, 10.0, soft), rel=0.01)


def test_hard_constraint_values():
    hard = RewardConfig.constraint("hard", 10.0)
    assert mnas_reward(0.7, 3.0, hard) == pytest.approx(0.7)
    assert mnas_reward(0.7, 10.0, hard) == pytest.approx(0.7)
    assert mnas_reward(0.7, 14.0, hard) == pytest.approx(0.5)


def test_custom_exponents():
    cfg = RewardConfig(4.0, alpha=-0.5, beta=-2.0)
    assert mnas_reward(1.0, 1.0, cfg) == pytest.approx(2.0)
    assert mnas_reward(1.0, 8.0, cfg) == pytest.approx(0.25)


@pytest.mark.parametrize("target", [0.0, -1.0, float("nan")])
def test_bad_target(target):
    with pytest.raises(SearchError, match="positive"):
        RewardConfig(target)


def test_bad_inputs():
    with pytest.raises(SearchError, match="unknown constraint"):
        RewardConfig.constraint("medium", 1.0)
    with pytest.raises(ValueError):
        mnas_reward(1.2, 1.0, RewardConfig(1.0))
    with pytest.raises(ValueError):
        mnas_reward(0.5, 0.0, RewardConfig(1.0))
