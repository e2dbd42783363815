"""Search runs with real-looking numbers and no training, for the report's tests: a
closed-form evaluator (accuracy rising with a student's size, latency with its MACs, a few
points more with the teacher, noise fixed by the architecture) in place of the search's
`Evaluator`, and finals stored as finalize stores them.

    with fake_search():
        run_search(SearchConfig(...), db_path)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from pathlib import Path
from typing import Iterator
from unittest import mock

import akd_mobile.engines as engines_module
import akd_mobile.search as search_module
from akd_mobile.reward import RewardConfig, mnas_reward
from akd_mobile.runs import CandidateOutcome, RunStore, best_first
from akd_mobile.search import SearchInputs
from akd_mobile.space import get_space
from search_support import engine_of

SPACE = get_space("mnasnet-small")
INPUTS = SearchInputs(None, SPACE, None, {"data": {"spec": "fashion-mnist", "fingerprint": "f" * 16}})


def _noise(key: str, salt: str) -> float:
    """A number in [-1, 1) fixed by the architecture key."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**31 - 1.0


def fake_accuracy(arch, mode: str) -> float:
    cost = SPACE.cost(arch)
    base = 0.62 + 0.2 * (1 - math.exp(-cost.params / 120_000)) + 0.03 * math.log(cost.macs / 2e6)
    return round(min(0.97, base + (0.03 if mode == "kd" else 0.0) + 0.025 * _noise(arch.key, "acc")), 4)


def fake_latency_ms(arch) -> float:
    return round(0.04 + SPACE.cost(arch).macs / 6e7 * (1 + 0.08 * _noise(arch.key, "lat")), 4)


class FakeEvaluator:
    """The search's evaluator with closed-form scores and typical per-candidate times."""

    fail_every: int | None = None  # every n-th candidate fails, as an export that does not convert

    def __init__(self, config, inputs, db, device):
        self.space = SPACE
        self.config = config
        self.reward_config = RewardConfig.constraint(config.constraint, config.target_ms)
        self.count = 0

    def close(self):
        pass

    def evaluate(self, arch, on_phase=lambda phase: None, standing=None):
        self.count += 1
        cost = SPACE.cost(arch)
        if self.fail_every and self.count % self.fail_every == 0:
            return CandidateOutcome("failed", params=cost.params, macs=cost.macs, export_s=1.5,
                                    error="ExportError: the converter cannot handle this op")
        on_phase("training")
        accuracy, latency = fake_accuracy(arch, self.config.reward), fake_latency_ms(arch)
        return CandidateOutcome(
            "done", accuracy=accuracy, latency_ms=latency, reward=mnas_reward(accuracy, latency, self.reward_config),
            params=cost.params, macs=cost.macs, train_s=14.0 + 3 * _noise(arch.key, "t"),
            export_s=2.0 if self.count % 3 else 9.0, measure_s=3.8,
        )


@contextlib.contextmanager
def fake_search(fail_every: int | None = None) -> Iterator[type[FakeEvaluator]]:
    """Patch the search loop to use FakeEvaluator and fixed inputs (no data, no teacher)."""
    FakeEvaluator.fail_every = fail_every
    with mock.patch.object(engines_module, "open_engine", engine_of(FakeEvaluator)), \
            mock.patch.object(search_module, "load_inputs", lambda config: INPUTS):
        yield FakeEvaluator


def add_finals(db, run_id: int, count: int = 2, unmeasured: int = 1, epochs: int = 10, out_dir=Path("finals")) -> list[str]:
    """Store finals of run `run_id` as finalize would: its `count` best candidates trained and
    measured in both formats, then `unmeasured` more trained only. Returns their keys."""
    from akd_mobile.finals import FinalStore

    run = RunStore(db).get_run(run_id)
    target = run.config["target_ms"]
    done = [c for c in RunStore(db).candidates(run_id) if not c.reused]
    ranked = best_first(done, target)
    finals = FinalStore(db)
    keys = []
    for n, c in enumerate(ranked[: count + unmeasured]):
        test = round(min(0.99, c.accuracy + 0.07 + 0.01 * _noise(c.arch_key, "final")), 4)
        finals.trained(run_id, c.arch, c.arch_key, "top", run.config["reward"], epochs, c.accuracy, test,
                       round(test + 0.004, 4), 240.0 + 20 * n, "0" * 64, out_dir)
        row = finals.find(run_id, c.arch_key, run.config["reward"], epochs)
        if n < count:
            result = {
                "tflite": {"file": f"{c.arch_key}.tflite", "median_ms": round(c.latency_ms * 1.03, 4),
                           "p90_ms": round(c.latency_ms * 1.1, 4), "size_bytes": c.params * 4 + 20_000,
                           "max_abs_diff": 2e-6},
                "pte": {"file": f"{c.arch_key}.pte", "median_ms": round(c.latency_ms * 1.25, 4),
                        "p90_ms": round(c.latency_ms * 1.4, 4), "size_bytes": c.params * 4 + 60_000,
                        "max_abs_diff": 3e-6},
            }
            finals.finish(row.id, "done", result, out_dir)
        keys.append(c.arch_key)
    return keys
