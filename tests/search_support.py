"""A stand-in for the search's Evaluator: scores in closed form, with no training or export."""

from __future__ import annotations

from akd_mobile.runs import CandidateOutcome


class ClosedFormEvaluator:
    """Scores each candidate with `outcome(arch)`; subclasses say how."""

    def __init__(self, config, inputs, db, device):
        self.space = inputs.space

    def prefetch(self, archs):
        pass

    def close(self):
        pass

    def evaluate(self, arch, on_phase=lambda phase: None, standing=None) -> CandidateOutcome:
        return self.outcome(arch)

    def outcome(self, arch) -> CandidateOutcome:
        raise NotImplementedError
