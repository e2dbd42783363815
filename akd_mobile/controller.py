"""Search strategies: the MnasNet RL controller (LSTM policy + PPO), random search, and
regularized evolution. All three share one interface so the search loop treats them alike:
`propose(n)` archs, `update(archs, rewards)`, and `state_dict` / `load_state_dict` for resume.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from akd_base.errors import SearchError
from akd_mobile.space import ArchSpec, SearchSpace

log = logging.getLogger(__name__)


class Strategy(Protocol):
    """What the search loop needs from a strategy. A steady-state strategy is updated with each
    candidate as it finishes and proposes one child whenever a worker frees (no batch
    barrier); the others propose and learn a batch at a time."""

    name: str
    steady_state: bool

    def propose(self, n: int) -> list[ArchSpec]:
        """The next `n` architectures to evaluate."""
        ...

    def update(self, archs: list[ArchSpec], rewards: list[float | None]) -> dict[str, float]:
        """Learn from the rewards of proposed archs (None: the candidate failed)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the strategy stands."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`."""
        ...


@dataclass(frozen=True)
class PPOConfig:
    """Controller and PPO settings.

    Attributes:
        hidden: LSTM hidden size.
        embed: size of the embedding of the previous decision.
        lr: Adam learning rate.
        epochs: PPO passes over each batch.
        clip: PPO ratio clip epsilon.
        entropy_coef: weight of the entropy bonus.
        baseline_decay: decay of the moving-average reward baseline.
        tanh_constant: logits are squashed to +-tanh_constant (NASNet/ENAS controllers do so).
    """

    hidden: int = 64
    embed: int = 32
    lr: float = 0.02
    epochs: int = 4
    clip: float = 0.2
    entropy_coef: float = 1e-3
    baseline_decay: float = 0.9
    tanh_constant: float = 2.5


class PolicyLSTM(nn.Module):
    """An LSTM that emits one categorical distribution per decision, in order, each step fed
    the embedding of the previous decision's choice."""

    def __init__(self, option_counts: list[int], hidden: int, embed: int, tanh_constant: float) -> None:
        super().__init__()
        self.option_counts = option_counts
        self.tanh_constant = tanh_constant
        self.start = nn.Parameter(torch.zeros(embed))
        self.cell = nn.LSTMCell(embed, hidden)
        self.embeds = nn.ModuleList(nn.Embedding(n, embed) for n in option_counts)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in option_counts)
        for head in self.heads:  # start from the uniform policy
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def run(
        self, batch: int, choices: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample `batch` decision sequences, or score the given `choices` [batch, D].

        Returns:
            (choices [batch, D], log-probability [batch], entropy [batch]).
        """
        x = self.start.expand(batch, -1)
        state = None
        picks, logps, ents = [], [], []
        for d, (embed, head) in enumerate(zip(self.embeds, self.heads)):
            h, c = self.cell(x, state)
            state = (h, c)
            logits = self.tanh_constant * torch.tanh(head(h) / self.tanh_constant)
            logp_all = torch.log_softmax(logits, dim=-1)
            if choices is None:
                pick = torch.multinomial(logp_all.exp().detach(), 1, generator=generator).squeeze(1)
            else:
                pick = choices[:, d]
            picks.append(pick)
            logps.append(logp_all.gather(1, pick[:, None]).squeeze(1))
            ents.append(-(logp_all.exp() * logp_all).sum(-1))
            x = embed(pick)
        return torch.stack(picks, 1), torch.stack(logps, 1).sum(1), torch.stack(ents, 1).sum(1)


class RLStrategy:
    """MnasNet's controller: LSTM policy trained with PPO against a moving-average baseline."""

    name = "rl"
    steady_state = False

    def __init__(self, space: SearchSpace, seed: int = 0, config: PPOConfig = PPOConfig()) -> None:
        self.space = space
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            counts = [len(opts) for _, opts in space.decisions()]
            self.policy = PolicyLSTM(counts, config.hidden, config.embed, config.tanh_constant)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline: float | None = None
        self.scale: float | None = None

    def propose(self, n: int) -> list[ArchSpec]:
        with torch.no_grad():
            choices, _, _ = self.policy.run(n, generator=self.generator)
        return [self.space.from_indices(row.tolist()) for row in choices]

    def update(self, archs: list[ArchSpec], rewards: list[float | None]) -> dict[str, float]:
        scored = [(a, r) for a, r in zip(archs, rewards) if r is not None]
        if not scored:
            return {}
        choices = torch.tensor([self.space.to_indices(a) for a, _ in scored])
        reward = torch.tensor([r for _, r in scored], dtype=torch.float32)
        cfg = self.config
        if self.baseline is None:
            self.baseline = float(reward.mean())
        advantage = reward - self.baseline
        deviation = float(advantage.pow(2).mean().sqrt())
        self.scale = deviation if self.scale is None else cfg.baseline_decay * self.scale + (1 - cfg.baseline_decay) * deviation
        advantage = advantage / (self.scale + 1e-8)
        with torch.no_grad():
            _, old_logp, _ = self.policy.run(len(scored), choices)
        for _ in range(cfg.epochs):
            _, logp, entropy = self.policy.run(len(scored), choices)
            ratio = torch.exp(logp - old_logp)
            clipped = torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip)
            loss = -torch.min(ratio * advantage, clipped * advantage).mean() - cfg.entropy_coef * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.baseline = cfg.baseline_decay * self.baseline + (1 - cfg.baseline_decay) * float(reward.mean())
        return {"baseline": self.baseline, "loss": float(loss.detach()), "entropy": float(entropy.mean().detach())}

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "baseline": self.baseline,
            "scale": self.scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline, self.scale = state["baseline"], state["scale"]


class RandomStrategy:
    """Uniform random search: the baseline every result is compared with."""

    name = "random"
    steady_state = False

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.rng = random.Random(seed)

    def propose(self, n: int) -> list[ArchSpec]:
        return [self.space.sample(self.rng) for _ in range(n)]

    def update(self, archs: list[ArchSpec], rewards: list[float | None]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(_rng_restore(state["rng"]))


class EvolutionStrategy:
    """Regularized (aging) evolution (Real et al. 2019): tournament selection over a
    population, one mutation per child, the oldest member dies."""

    name = "evolution"
    steady_state = True

    def __init__(self, space: SearchSpace, seed: int = 0, population: int = 16, tournament: int = 4) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.population_size = population
        self.tournament = tournament
        self.population: list[tuple[list[int], float]] = []

    def propose(self, n: int) -> list[ArchSpec]:
        out = []
        for _ in range(n):
            if len(self.population) < self.population_size:
                out.append(self.space.sample(self.rng))
            else:
                contenders = self.rng.sample(self.population, self.tournament)
                parent = max(contenders, key=lambda member: member[1])[0]
                out.append(self.space.mutate(self.space.from_indices(parent), self.rng))
        return out

    def update(self, archs: list[ArchSpec], rewards: list[float | None]) -> dict[str, float]:
        for arch, reward in zip(archs, rewards):
            if reward is not None:
                self.population.append((self.space.to_indices(arch), reward))
        del self.population[: max(0, len(self.population) - self.population_size)]
        return {"population": float(len(self.population))}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state(self.rng), "population": [[list(i), r] for i, r in self.population]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(_rng_restore(state["rng"]))
        self.population = [(list(i), float(r)) for i, r in state["population"]]


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_restore(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return version, tuple(internal), gauss


STRATEGIES = {"rl": RLStrategy, "random": RandomStrategy, "evolution": EvolutionStrategy}


def make_strategy(name: str, space: SearchSpace, seed: int = 0) -> Strategy:
    """A strategy by name: `rl`, `random` or `evolution`."""
    if name not in STRATEGIES:
        raise SearchError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, seed)
