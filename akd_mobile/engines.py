"""Execution engines: what runs the candidates' evaluations (`akd_mobile.evaluation`).

The search loop hands an engine a step's candidates and stores each outcome as the engine
yields it; it does not know which engine runs. Two engines:

- `InProcessEngine` (the default): one candidate after another in this process, the
  step's exports converting ahead in a background process (`akd_mobile.export_worker`).
- `RayEngine` (`akd_mobile.ray_engine`, `search --ray auto|ADDRESS`): proxy trainings and
  exports as Ray tasks, one actor per phone, many candidates in flight.

`Execution` holds how a search is executed, which does not change its results and is not
stored with the run: a resume may run on another engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from akd_mobile.evaluation import CandidateEvaluation, Measure, MeasureDone, Train, Work, run_plan
from akd_mobile.latency_policy import Standing
from akd_mobile.runs import CandidateOutcome
from akd_mobile.space import ArchSpec

if TYPE_CHECKING:
    from akd_mobile.search import SearchConfig, SearchInputs

# Two torch threads for the proxy, which trains each batch as two shards on threads of
# their own (akd_mobile.shards): 1.8x one thread on 2 cores (docs/distill.md). Fixed rather
# than one per core, so that a score does not depend on the host's core count (a Ray task
# declares as many CPUs).
TRAIN_THREADS = 2

# A phase of a candidate's evaluation (`exporting`, `measuring`, `training`) as it starts:
# (candidate id, phase).
OnPhase = Callable[[int, str], None]


@dataclass(frozen=True)
class Execution:
    """How a search runs its evaluations.

    Attributes:
        ray: None for in-process; `auto` (a Ray instance on this machine: the one `ray start`
            began, else a new one) or the address of a Ray cluster's head (`host:port`).
        max_in_flight: candidates evaluated at once on Ray (None: two per worker CPU).
        torch_device: where proxy training runs: `cpu` or `cuda` (on Ray, a training task
            then asks for one GPU).
    """

    ray: str | None = None
    max_in_flight: int | None = None
    torch_device: str = "cpu"


class Engine(Protocol):
    """Runs candidates' evaluations."""

    evaluation: CandidateEvaluation

    def evaluate(self, candidates: list[tuple[int, ArchSpec]], standing: Callable[[], Standing],
                 on_phase: OnPhase) -> Iterator[tuple[int, CandidateOutcome]]:
        """Evaluate `candidates` (candidate id, architecture), yielding (id, outcome) as each
        finishes; the caller stores an outcome before asking for the next. An error that
        stops the run is raised."""
        ...

    def close(self) -> None:
        """Stop what the engine started."""
        ...


class InProcessEngine:
    """Evaluates one candidate after another in this process; the exports of the candidates
    measured before training convert ahead, in a background process."""

    def __init__(self, evaluation: CandidateEvaluation, execution: Execution) -> None:
        from akd_mobile.export_worker import ExportWorker

        self.evaluation = evaluation
        self.execution = execution
        self.exporter = ExportWorker(evaluation.config.fmt)

    def evaluate(self, candidates: list[tuple[int, ArchSpec]], standing: Callable[[], Standing],
                 on_phase: OnPhase) -> Iterator[tuple[int, CandidateOutcome]]:
        ahead = self.evaluation.measured_first([arch for _, arch in candidates])
        if ahead:
            self.exporter.submit(ahead)
        for cid, arch in candidates:
            yield cid, run_plan(self.evaluation.plan(arch, standing), lambda work, cid=cid: self._do(work, cid, on_phase))

    def _do(self, work: Work, cid: int, on_phase: OnPhase) -> Any:
        if isinstance(work, Train):
            from akd_mobile.distill import proxy_score

            on_phase(cid, "training")
            cfg = self.evaluation.config
            return proxy_score(work.arch, self.evaluation.inputs.data, self.evaluation.inputs.teacher_logits, cfg.proxy,
                               mode=cfg.reward, seed=cfg.seed, device=self.execution.torch_device, threads=TRAIN_THREADS)
        assert isinstance(work, Measure)
        tick = time.perf_counter()
        on_phase(cid, "exporting")
        self.exporter.wait(work.arch)
        waited_s = time.perf_counter() - tick
        on_phase(cid, "measuring")
        lat = self.evaluation.service.latency(work.arch)
        return MeasureDone(lat, waited_s + lat.export_s, lat.measure_s)

    def close(self) -> None:
        self.exporter.close()


def open_engine(config: SearchConfig, db: Any, execution: Execution,
                load_inputs: Callable[[SearchConfig], SearchInputs]) -> Engine:
    """The engine `execution` asks for: its device answering (and, when the search predicts,
    the device's latency model found) before `load_inputs` reads the config's data and teacher.

    Raises:
        DeviceError: the device does not answer.
        PredictorError: the search predicts and the device has no latency model.
        RayError: no Ray cluster answers at the address, or none of its nodes has a phone.
        AkdError: inputs that do not fit (see `search.load_inputs`).
    """
    if execution.ray is not None:
        from akd_mobile.ray_engine import RayEngine

        return RayEngine.open(config, db, execution, load_inputs)
    from akd_mobile.distill import torch_device
    from akd_mobile.latency import LatencyService
    from devices.profiles import open_device

    torch_device(execution.torch_device)  # DeviceError now for a device torch cannot use here
    service = LatencyService(open_device(config.device), db, config.measure)
    if config.latency != "measure":
        service.predictor  # noqa: B018 - PredictorError now, before a run exists, when the device has no model
    return InProcessEngine(CandidateEvaluation(config, load_inputs(config), service), execution)
