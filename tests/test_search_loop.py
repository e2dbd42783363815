"""The search loop's bookkeeping with a closed-form evaluator (no training, no export):
storage, failures, reuse, interruption and resume."""

from __future__ import annotations

import dataclasses

import pytest

import akd_mobile.engines as engines_module
import akd_mobile.search as search_module
from akd_base.errors import Interrupted, SearchError
from akd_mobile.reward import RewardConfig, mnas_reward
from akd_mobile.runs import CandidateOutcome, RunStore
from akd_mobile.search import SearchConfig, SearchInputs, run_search
from akd_mobile.space import get_space
from latency_db import open_db
from search_support import engine_of

SPACE = get_space("mnasnet-small")
FAKE_INPUTS = SearchInputs(None, SPACE, None, {"data": {"spec": "fashion-mnist", "fingerprint": "f" * 16}})


class FakeEvaluator:
    """Accuracy and latency in closed form from the arch's cost; records what it evaluates."""

    calls: list[str] = []
    fail_keys: set[str] = set()
    interrupt_at: int | None = None

    def __init__(self, config, inputs, db, device):
        self.space = SPACE
        self.reward_config = RewardConfig.constraint(config.constraint, config.target_ms)

    def close(self):
        pass

    def evaluate(self, arch, on_phase=lambda phase: None, standing=None):
        calls = type(self).calls
        if type(self).interrupt_at is not None and len(calls) == type(self).interrupt_at:
            type(self).interrupt_at = None
            raise KeyboardInterrupt
        calls.append(arch.key)
        if arch.key in type(self).fail_keys:
            return CandidateOutcome("failed", error="ExportError: does not convert")
        cost = SPACE.cost(arch)
        accuracy = min(1.0, cost.params / 400_000)
        latency = cost.macs / 5e6
        return CandidateOutcome("done", accuracy=accuracy, latency_ms=latency,
                                reward=mnas_reward(accuracy, latency, self.reward_config), params=cost.params)


@pytest.fixture
def fake(monkeypatch):
    FakeEvaluator.calls = []
    FakeEvaluator.fail_keys = set()
    FakeEvaluator.interrupt_at = None
    monkeypatch.setattr(engines_module, "open_engine", engine_of(FakeEvaluator))
    monkeypatch.setattr(search_module, "load_inputs", lambda config: FAKE_INPUTS)
    return FakeEvaluator


CONFIG = SearchConfig(budget=10, batch=4, target_ms=1.5, seed=3)


def rows(db_path, run_id):
    return RunStore(open_db(db_path)).candidates(run_id)


def test_rows_steps_and_summary(fake, tmp_path):
    db = tmp_path / "db.sqlite"
    summary = run_search(CONFIG, db)
    stored = rows(db, summary.run_id)
    assert [(r.step, r.slot) for r in stored] == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3), (3, 0), (3, 1)]
    assert summary.status == "done" and summary.evaluated == 10 and summary.failed == 0
    best = max(stored, key=lambda r: r.reward)
    assert summary.best["arch"] == best.arch
    under = [r for r in stored if r.latency_ms <= 1.5]
    if under:
        assert summary.best_under_target["accuracy"] == max(r.accuracy for r in under)
    run = RunStore(open_db(db)).get_run(summary.run_id)
    assert run.step == 3 and run.config["target_ms"] == 1.5 and run.config["threads"] == 1
    assert "torch" in run.versions


def test_failed_candidates_are_recorded_and_the_search_goes_on(fake, tmp_path):
    db = tmp_path / "db.sqlite"
    first = run_search(CONFIG, db)
    bad = rows(db, first.run_id)[1]
    fake.fail_keys = {bad.arch_key}
    fake.calls = []
    second = run_search(CONFIG, db)
    failed = [r for r in rows(db, second.run_id) if r.status == "failed"]
    assert failed and all(r.reward is None and "does not convert" in r.error for r in failed)
    assert second.failed == len(failed) and second.evaluated == 10 - len(failed)


def test_many_failures_in_a_row_stop_the_search_resumably(fake, tmp_path, monkeypatch):
    db = tmp_path / "db.sqlite"
    monkeypatch.setattr(FakeEvaluator, "evaluate", lambda self, arch, on_phase, standing: CandidateOutcome("failed", error="DeviceError: phone gone"))
    with pytest.raises(SearchError, match=r"run 1 stopped: 5 candidates in a row failed.*phone gone.*--resume 1"):
        run_search(CONFIG, db)
    run = RunStore(open_db(db)).get_run(1)
    assert run.status == "failed" and "phone gone" in run.reason


@pytest.mark.parametrize("steady_state", [False, True])
def test_a_repeated_arch_is_reused_not_evaluated_again(fake, tmp_path, monkeypatch, steady_state):
    """In steady state the second candidate is proposed while the first is evaluated: it
    waits for the first's outcome."""
    arch = SPACE.sample(__import__("random").Random(0))
    monkeypatch.setattr(_Constant, "steady_state", steady_state)
    monkeypatch.setattr(search_module, "make_strategy", lambda name, space, seed: _Constant(arch))
    db = tmp_path / "db.sqlite"
    run_search(SearchConfig(budget=5, batch=2, target_ms=1.0), db)
    stored = rows(db, 1)
    assert fake.calls == [arch.key]
    assert [r.reused for r in stored] == [0, 1, 1, 1, 1]
    assert len({r.reward for r in stored}) == 1


class _Constant:
    name = "constant"
    steady_state = False

    def __init__(self, arch):
        self.arch = arch

    def propose(self, n):
        return [self.arch] * n

    def update(self, archs, rewards):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_interrupted_search_resumes_without_loss_or_repeats(fake, tmp_path):
    straight = run_search(CONFIG, tmp_path / "straight.sqlite")
    expected = [(r.step, r.slot, r.arch) for r in rows(tmp_path / "straight.sqlite", straight.run_id)]

    db = tmp_path / "db.sqlite"
    fake.calls = []
    fake.interrupt_at = 6  # the 7th evaluation is interrupted: step 2, slot 2
    with pytest.raises(Interrupted, match=r"run 1 stopped by SIGINT.*--resume 1") as stopped:
        run_search(CONFIG, db)
    assert stopped.value.exit_code == 130
    before = {r.id: r.finished_at for r in rows(db, 1) if r.status == "done"}
    assert len(before) == 6 and RunStore(open_db(db)).get_run(1).status == "interrupted"
    assert len(fake.calls) == 6
    summary = run_search(None, db, resume=1)
    after = rows(db, 1)
    # the resumed step evaluates its two unfinished candidates first
    assert fake.calls[6:8] == [r.arch_key for r in after if r.step == 2 and r.slot >= 2]
    assert [(r.step, r.slot, r.arch) for r in after] == expected
    assert all(r.status == "done" for r in after)
    assert all(after_row.finished_at == before[after_row.id] for after_row in after if after_row.id in before)
    assert len(fake.calls) == 10 and summary.evaluated == 10
    with pytest.raises(SearchError, match="has finished"):
        run_search(None, db, resume=1)


STEADY = SearchConfig(budget=10, batch=4, target_ms=1.5, seed=3, strategy="evolution")


def _population(db, run_id):
    import torch

    from akd_mobile.controller import EvolutionStrategy

    strategy = EvolutionStrategy(SPACE)
    strategy.load_state_dict(RunStore(open_db(db)).load_checkpoint(run_id)[1])
    return sorted(reward for _, reward in strategy.population)


def test_steady_state_evolution_learns_from_each_candidate_as_it_finishes(fake, tmp_path):
    db = tmp_path / "db.sqlite"
    finished_then: list[list[float]] = []  # the stored population after each candidate
    summary = run_search(STEADY, db, on_progress=lambda p: p.last and finished_then.append(_population(db, 1)))
    stored = rows(db, 1)
    assert summary.status == "done" and [(r.step, r.slot) for r in stored] == [(s, 0) for s in range(1, 11)]
    assert RunStore(open_db(db)).get_run(1).step == 10
    by_finish = sorted(stored, key=lambda r: r.finished_at)
    # each finished candidate was stored with the state that holds it, one transaction
    assert finished_then == [sorted(r.reward for r in by_finish[:n]) for n in range(1, 11)]


def test_steady_state_resumes_where_it_stood(fake, tmp_path):
    straight = run_search(STEADY, tmp_path / "straight.sqlite")
    expected = [(r.step, r.arch, r.reward) for r in rows(tmp_path / "straight.sqlite", straight.run_id)]
    db = tmp_path / "db.sqlite"
    fake.calls = []
    fake.interrupt_at = 6  # the 7th evaluation is interrupted, the 8th proposed and pending
    with pytest.raises(Interrupted):
        run_search(STEADY, db)
    before = {r.id: r.finished_at for r in rows(db, 1) if r.status == "done"}
    assert len(before) == 6 and [r.status for r in rows(db, 1)][6:] == ["pending"] * 2
    run_search(None, db, resume=1)
    after = rows(db, 1)
    assert [(r.step, r.arch, r.reward) for r in after] == expected  # in-process, the run does not depend on the stop
    assert all(r.finished_at == before[r.id] for r in after if r.id in before) and len(fake.calls) == 10


def test_a_run_begun_a_batch_at_a_time_resumes_in_steady_state(fake, tmp_path, monkeypatch):
    """A run stored before evolution ran steady-state: the finished candidates of its
    unfinished batch are learned from, the pending ones evaluated, the rest proposed singly."""
    from akd_mobile.controller import EvolutionStrategy

    db = tmp_path / "db.sqlite"
    monkeypatch.setattr(EvolutionStrategy, "steady_state", False)
    fake.interrupt_at = 3  # batch 1 of 4: three finished, one pending
    with pytest.raises(Interrupted):
        run_search(STEADY, db)
    assert RunStore(open_db(db)).get_run(1).step == 0
    monkeypatch.setattr(EvolutionStrategy, "steady_state", True)
    run_search(None, db, resume=1)
    stored = rows(db, 1)
    assert [(r.step, r.slot) for r in stored] == [(1, k) for k in range(4)] + [(s, 0) for s in range(2, 8)]
    assert all(r.status == "done" for r in stored) and len(fake.calls) == 10, [(r.arch_key, r.reused) for r in stored]
    assert _population(db, 1) == sorted(r.reward for r in stored)


def test_unknown_run_and_bad_config(fake, tmp_path):
    with pytest.raises(SearchError, match="no search run 7"):
        run_search(None, tmp_path / "db.sqlite", resume=7)
    with pytest.raises(SearchError, match="--batch must be at least 1"):
        run_search(SearchConfig(batch=0), tmp_path / "db.sqlite")


def test_measurement_defaults_come_from_the_profile(fake, tmp_path):
    from akd_mobile.search import resolve_device_defaults
    from akd_base.errors import DeviceError
    from devices.profiles import load_profile

    local = load_profile("local").measure
    resolved = resolve_device_defaults(SearchConfig())
    assert resolved.measure == local
    assert resolve_device_defaults(SearchConfig(min_time_s=0.0, runs=7)).measure == dataclasses.replace(
        local, min_time_s=0.0, runs=7)
    summary = run_search(CONFIG, tmp_path / "db.sqlite")
    assert summary.config["min_time_s"] == local.min_time_s  # stored with the run
    # a run stored before the minimum time existed measures with none
    stored = {k: v for k, v in dataclasses.asdict(resolved).items() if k != "min_time_s"}
    assert SearchConfig.from_stored(stored).measure == dataclasses.replace(local, min_time_s=0.0)
    with pytest.raises(SearchError, match="--min-time must be a number of seconds >= 0, got -1"):
        run_search(SearchConfig(min_time_s=-1), tmp_path / "db.sqlite")
    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "local"\ntarget_ms = 1.0\nmin_time_s = "long"\n')
    with pytest.raises(DeviceError, match="bad.toml: min_time_s must be a number of seconds"):
        run_search(SearchConfig(device=str(bad)), tmp_path / "db.sqlite")
