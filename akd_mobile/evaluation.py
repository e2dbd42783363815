"""The evaluation of one candidate, as a plan of work that an execution engine runs.

A candidate's evaluation decides, from the latency database, the device's latency model
and where the run stands (`akd_mobile.latency_policy`), whether its latency is measured
before its proxy training, after it, or predicted, and whether it is trained at all. That
logic is one generator, `CandidateEvaluation.plan`: it yields units of work (`Measure`,
`Train`, or `MeasureAndTrain`, which an engine may run at once), is sent each one's answer (or thrown its error) and returns the candidate's
`CandidateOutcome`. The engines (`akd_mobile.engines`: in-process; `akd_mobile.ray_engine`:
on a Ray cluster) only run the work, so both evaluate a candidate the same way.

A candidate's own failure (an op the converter cannot handle) ends its plan as `failed`;
an error that stops the run (`errors.stops_the_run`: the device or the host) is raised out
of the plan, to the engine and the search loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from akd_base.errors import error_line, stops_the_run
from akd_mobile.latency_policy import (Standing, may_be_measured, measure_after_training, measure_before_training,
                                       skip_bound)
from akd_mobile.reward import RewardConfig, mnas_reward
from akd_mobile.runs import CandidateOutcome
from akd_mobile.space import ArchSpec

if TYPE_CHECKING:
    from akd_mobile.distill import ProxyResult
    from akd_mobile.latency import LatencyOutcome, LatencyService
    from akd_mobile.latency_predictor import Prediction, Predictor
    from akd_mobile.search import SearchConfig, SearchInputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measure:
    """Work: export the candidate, measure it on the device and store the measurement;
    answered with a `MeasureDone`."""

    arch: ArchSpec


@dataclass(frozen=True)
class MeasureDone:
    """A stored measurement and the seconds it took beyond the training (export, measurement)."""

    latency: LatencyOutcome
    export_s: float
    measure_s: float


@dataclass(frozen=True)
class Train:
    """Work: the candidate's proxy training; answered with its `ProxyResult`."""

    arch: ArchSpec


@dataclass(frozen=True)
class MeasureAndTrain:
    """Work: both of the above, which an engine may run at once; answered with the pair
    (`MeasureDone`, `ProxyResult`). The measurement's error comes first: a candidate that
    does not export needs no score (in-process, it is then not trained at all)."""

    arch: ArchSpec


Work = Union[Measure, Train, MeasureAndTrain]
Plan = Generator[Work, Any, CandidateOutcome]


class CandidateEvaluation:
    """How a search evaluates its candidates: its settings, the measurement service (the
    database's latencies) and, unless it only measures, the device's latency model."""

    def __init__(self, config: SearchConfig, inputs: SearchInputs, service: LatencyService) -> None:
        self.config = config
        self.inputs = inputs
        self.space = inputs.space
        self.service = service
        self.predictor: Predictor | None = None if config.latency == "measure" else service.predictor
        self.reward_config = RewardConfig.constraint(config.constraint, config.target_ms)  # type: ignore[arg-type]
        self.hard = config.constraint == "hard"
        self._predictions: dict[str, Prediction] = {}  # by architecture key: an engine asks ahead, the plan again

    @classmethod
    def open(cls, config: SearchConfig, service: LatencyService,
             load_inputs: Callable[[SearchConfig], SearchInputs]) -> CandidateEvaluation:
        """The evaluation of `config`'s candidates: when it predicts, the device's latency model
        is found (PredictorError otherwise) before `load_inputs` reads the data and teacher."""
        if config.latency != "measure":
            service.predictor  # noqa: B018 - PredictorError now, before the inputs load and a run exists
        return cls(config, load_inputs(config), service)

    def exported_ahead(self, archs: list[ArchSpec], standing: Standing) -> list[ArchSpec]:
        """Those of `archs` an engine exports ahead of their proxy training: the database does
        not hold them and, with a latency model, their latency may be measured at all
        (`latency_policy.may_be_measured`, as the run stands now)."""
        misses = [a for a in archs if self.service.lookup(a) is None]
        if self.predictor is None:
            return misses
        return [a for a in misses
                if may_be_measured(self.config.latency, self._predict(a), self.reward_config, self.hard, standing)]

    def _predict(self, arch: ArchSpec) -> Prediction:
        if arch.key not in self._predictions:
            self._predictions[arch.key] = self.predictor.predict(arch)  # type: ignore[union-attr]
        return self._predictions[arch.key]

    def plan(self, arch: ArchSpec, standing: Callable[[], Standing] = Standing) -> Plan:
        """The evaluation of `arch`: its latency (a database hit costs nothing; a measurement
        goes with the proxy training, see `MeasureAndTrain`) and its proxy accuracy; with a
        latency model, the latency may be predicted or measured before or after the training,
        which `standing` (where the run stands then, its latency model's drift included)
        decides."""
        cost = self.space.cost(arch)
        spent = {"export_s": 0.0, "measure_s": 0.0, "train_s": 0.0}
        prediction = None
        cfg = self.config
        try:
            lat = self.service.lookup(arch)
            before = lat is None  # without a latency model, a latency the database lacks is measured
            if lat is None and self.predictor is not None:
                prediction = self._predict(arch)
                now = standing()
                bound = skip_bound(prediction, self.reward_config, self.hard, now)
                if bound is not None:
                    return CandidateOutcome(
                        "skipped", latency_ms=prediction.median_ms, reward=bound, params=cost.params, macs=cost.macs,
                        latency_source="predicted", predicted_ms=prediction.median_ms,
                        latency_model_id=prediction.model_id,
                        error=f"not trained: predicted {prediction.median_ms:.3f} ms (+-{prediction.band:.0%}), so "
                              f"its reward under the hard {cfg.target_ms:g} ms target is at most {bound:.3f}",
                    )
                before = measure_before_training(cfg.latency, prediction, self.reward_config, self.hard, now)
            score: ProxyResult
            if before:
                measured, score = yield MeasureAndTrain(arch)
                lat = _spent_on(measured, spent)
            else:
                score = yield Train(arch)
            spent["train_s"] = score.train_s + score.eval_s
            if lat is None and measure_after_training(prediction, score.accuracy, self.reward_config, standing()):  # type: ignore[arg-type]
                lat = yield from self._measure(arch, spent)
            latency_ms = prediction.median_ms if lat is None else lat.result.median_ms  # type: ignore[union-attr]
            reward = mnas_reward(score.accuracy, latency_ms, self.reward_config)
        except Exception as exc:  # noqa: BLE001 - a failed candidate is recorded and the search goes on
            if stops_the_run(exc):
                raise
            log.warning("candidate %s failed: %s", arch.key, exc)
            return CandidateOutcome("failed", params=cost.params, macs=cost.macs, error=error_line(exc), **spent)
        source = "predicted" if lat is None else "database" if lat.cached else "measured"
        return CandidateOutcome(
            "done", accuracy=score.accuracy, latency_ms=latency_ms, reward=reward, params=cost.params,
            macs=cost.macs, latency_cached=lat is not None and lat.cached, latency_source=source,
            predicted_ms=None if prediction is None else prediction.median_ms,
            latency_model_id=None if prediction is None else prediction.model_id, **spent,
        )

    def _measure(self, arch: ArchSpec, spent: dict[str, float]) -> Generator[Work, Any, LatencyOutcome]:
        return _spent_on((yield Measure(arch)), spent)


def _spent_on(done: MeasureDone, spent: dict[str, float]) -> LatencyOutcome:
    """The measurement's latency, its seconds added to `spent`."""
    spent["export_s"] += done.export_s
    spent["measure_s"] += done.measure_s
    return done.latency


def run_plan(plan: Plan, do: Callable[[Work], Any]) -> CandidateOutcome:
    """Run `plan` to its outcome, each unit of work by `do` in turn (its error thrown back
    into the plan)."""
    try:
        work = next(plan)
        while True:
            try:
                answer = do(work)
            except Exception as exc:  # noqa: BLE001 - the plan decides: the candidate failed, or the run stops
                work = plan.throw(exc)
            else:
                work = plan.send(answer)
    except StopIteration as stop:
        return stop.value
