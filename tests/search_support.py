"""Stand-ins for the search's evaluation: closed-form evaluators (no training, no export)
run by a sequential engine, and a helper that evaluates one candidate on a real engine."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from akd_mobile.latency_policy import Standing
from akd_mobile.runs import CandidateOutcome


class ClosedFormEvaluator:
    """Scores each candidate with `outcome(arch)`; subclasses say how (and may set
    `predictor`, whose `stored.id` names the latency model a predicting run uses)."""

    predictor = None

    def __init__(self, config, inputs, db, device):
        self.space = inputs.space

    def close(self):
        pass

    def evaluate(self, arch, on_phase=lambda phase: None, standing=None) -> CandidateOutcome:
        return self.outcome(arch)

    def outcome(self, arch) -> CandidateOutcome:
        raise NotImplementedError


class EvaluatorEngine:
    """An execution engine that runs a closed-form evaluator (`evaluate(arch, on_phase,
    standing)`) on one candidate after another."""

    def __init__(self, evaluator, inputs):
        self.inner = evaluator
        self.evaluation = SimpleNamespace(space=inputs.space, inputs=inputs,
                                          predictor=getattr(evaluator, "predictor", None))

    def evaluate(self, candidates, standing, on_phase):
        """As the in-process engine: it holds the candidate it evaluates and the next."""
        from akd_mobile.engines import IN_PROCESS_AHEAD

        ahead = list(itertools.islice(candidates, IN_PROCESS_AHEAD))
        while ahead:
            cid, arch = ahead.pop(0)
            yield cid, self.inner.evaluate(arch, lambda phase, cid=cid: on_phase(cid, phase), standing())
            ahead += itertools.islice(candidates, IN_PROCESS_AHEAD - len(ahead))

    def close(self):
        self.inner.close()


def engine_of(evaluator_class):
    """An `open_engine` that opens the config's device (it must answer, as for a real engine)
    and runs `evaluator_class(config, inputs, db, device)`; patch `akd_mobile.engines.open_engine` with it."""

    def open_engine(config, db, execution, load_inputs):
        from devices.profiles import open_device

        device = open_device(config.device)
        device.info()
        inputs = load_inputs(config)
        return EvaluatorEngine(evaluator_class(config, inputs, db, device), inputs)

    return open_engine


def evaluate_one(engine, arch, standing=Standing()) -> CandidateOutcome:
    """`arch` evaluated alone on `engine`, the run standing at `standing`."""
    [(_, outcome)] = list(engine.evaluate(iter([(1, arch)]), lambda: standing, lambda cid, phase: None))
    return outcome


def in_process_engine(config, inputs, db, device):
    """The in-process engine over `device` and `db` (None: measure only)."""
    from akd_mobile.engines import Execution, InProcessEngine
    from akd_mobile.evaluation import CandidateEvaluation
    from akd_mobile.latency import LatencyService

    return InProcessEngine(CandidateEvaluation(config, inputs, LatencyService(device, db, config.measure)), Execution())
