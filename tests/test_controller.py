"""Search strategies on a toy objective with a closed-form reward (no training)."""

from __future__ import annotations

import io
import random

import pytest
import torch

from akd_mobile.controller import EvolutionStrategy, RLStrategy, make_strategy
from akd_base.errors import SearchError
from akd_mobile.space import get_space

SPACE = get_space("mnasnet-small")
_target_rng = random.Random(99)
TARGET = [_target_rng.randrange(len(opts)) for _, opts in SPACE.decisions()]


def toy_reward(arch) -> float:
    """Fraction of decisions that match a hidden target architecture."""
    return sum(a == b for a, b in zip(SPACE.to_indices(arch), TARGET)) / len(TARGET)


def run(strategy, samples=300, batch=10):
    rewards = []
    for _ in range(samples // batch):
        archs = strategy.propose(batch)
        scores = [toy_reward(a) for a in archs]
        strategy.update(archs, scores)
        rewards += scores
    return rewards


def mean(xs):
    return sum(xs) / len(xs)


def test_rl_mean_reward_rises_and_beats_random_search_best():
    rl = run(make_strategy("rl", SPACE, seed=0))
    rnd = run(make_strategy("random", SPACE, seed=0))
    assert mean(rl[-50:]) > mean(rl[:50]) + 0.15
    assert mean(rl[-50:]) > max(rnd)


def test_evolution_improves_on_random():
    evo = run(make_strategy("evolution", SPACE, seed=0))
    rnd = run(make_strategy("random", SPACE, seed=0))
    assert mean(evo[-50:]) > mean(rnd[-50:]) + 0.1


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", ["rl", "random", "evolution"])
def test_state_dict_resume_continues_exactly(name):
    a = make_strategy(name, SPACE, seed=3)
    run(a, samples=40, batch=8)
    b = make_strategy(name, SPACE, seed=12345)
    b.load_state_dict(_roundtrip(a.state_dict()))
    for _ in range(3):
        pa, pb = a.propose(8), b.propose(8)
        assert pa == pb
        rewards = [toy_reward(x) for x in pa]
        a.update(pa, rewards)
        b.update(pb, rewards)


def test_failed_candidates_are_ignored():
    rl = RLStrategy(SPACE, seed=1)
    archs = rl.propose(4)
    before = {k: v.clone() for k, v in rl.policy.state_dict().items()}
    assert rl.update(archs, [None] * 4) == {}
    assert all(torch.equal(before[k], v) for k, v in rl.policy.state_dict().items())
    evo = EvolutionStrategy(SPACE, seed=1)
    evo.update(archs, [0.5, None, None, 0.7])
    assert [r for _, r in evo.population] == [0.5, 0.7]


def test_evolution_population_ages_out_the_oldest():
    evo = EvolutionStrategy(SPACE, seed=0, population=4, tournament=2)
    archs = evo.propose(6)
    evo.update(archs, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert [r for _, r in evo.population] == [0.3, 0.4, 0.5, 0.6]
    children = evo.propose(5)
    parents = {tuple(i) for i, _ in evo.population}
    for child in children:
        nearest = min(sum(x != y for x, y in zip(SPACE.to_indices(child), p)) for p in parents)
        assert nearest == 1


def test_unknown_strategy():
    with pytest.raises(SearchError, match="unknown strategy 'bayes'"):
        make_strategy("bayes", SPACE)
