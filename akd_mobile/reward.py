"""MnasNet's latency-aware reward: `ACC(m) * (LAT(m) / T) ** w`."""

from __future__ import annotations

from dataclasses import dataclass

from akd_base.errors import SearchError

CONSTRAINTS = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}


@dataclass(frozen=True)
class RewardConfig:
    """The reward's target and exponents.

    Attributes:
        target_ms: latency target T in milliseconds.
        alpha: exponent w when the latency meets the target (LAT <= T).
        beta: exponent w when it misses (LAT > T).
    """

    target_ms: float
    alpha: float = -0.07
    beta: float = -0.07

    def __post_init__(self) -> None:
        if not self.target_ms > 0:
            raise SearchError(f"the latency target must be a positive number of ms, got {self.target_ms}")

    @classmethod
    def constraint(cls, name: str, target_ms: float) -> RewardConfig:
        """MnasNet's `soft` (alpha = beta = -0.07) or `hard` (alpha = 0, beta = -1) constraint."""
        if name not in CONSTRAINTS:
            raise SearchError(f"unknown constraint {name!r}; use one of {', '.join(CONSTRAINTS)}")
        alpha, beta = CONSTRAINTS[name]
        return cls(target_ms, alpha, beta)


def mnas_reward(accuracy: float, latency_ms: float, config: RewardConfig) -> float:
    """The reward of a model with `accuracy` (0..1) and `latency_ms` under `config`."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
    if not latency_ms > 0:
        raise ValueError(f"latency must be positive, got {latency_ms}")
    w = config.alpha if latency_ms <= config.target_ms else config.beta
    return accuracy * (latency_ms / config.target_ms) ** w
