"""Execution engines: what runs the candidates' evaluations (`akd_mobile.evaluation`).

The search loop hands an engine its candidates (a batch, or a steady-state strategy's
children proposed one at a time as the engine takes them) and stores each outcome as the
engine yields it; it does not know which engine runs. Two engines:

- `InProcessEngine` (the default): one candidate after another in this process, the next
  one's export converting meanwhile in a background process (`akd_mobile.export_worker`).
- `RayEngine` (`akd_mobile.ray_engine`, `search --ray auto|ADDRESS`): proxy trainings and
  exports as Ray tasks, one actor per phone, many candidates in flight.

`Execution` holds how a search is executed, which does not change its results and is not
stored with the run: a resume may run on another engine.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from akd_mobile.evaluation import CandidateEvaluation, Measure, MeasureAndTrain, MeasureDone, Train, Work, run_plan
from akd_mobile.latency_policy import Standing
from akd_mobile.runs import CandidateOutcome
from akd_mobile.space import ArchSpec

if TYPE_CHECKING:
    from akd_mobile.search import SearchConfig, SearchInputs
    from devices.profiles import Profile

# Two torch threads for the proxy, which trains each batch as two shards on threads of
# their own (akd_mobile.shards): 1.8x one thread on 2 cores (docs/distill.md). Fixed rather
# than one per core, so that a score does not depend on the host's core count (a Ray task
# declares as many CPUs).
TRAIN_THREADS = 2

# Candidates the in-process engine takes at once: the one it trains and the next, whose
# export converts meanwhile in the background process.
IN_PROCESS_AHEAD = 2

# A phase of a candidate's evaluation (`exporting`, `measuring`, `training`) as it starts:
# (candidate id, phase).
OnPhase = Callable[[int, str], None]


@dataclass(frozen=True)
class Execution:
    """How a search runs its evaluations.

    Attributes:
        ray: `auto` (a Ray instance on this machine: the one `ray start` began, else a new
            one) or the address of a Ray cluster's head (`host:port`); `off` for in-process;
            None for what the device profile says (its `ray` key), else in-process.
        max_in_flight: candidates evaluated at once on Ray (None: `IN_FLIGHT_PER_SLOT` per
            training slot, see `akd_mobile.ray_engine`).
        torch_device: where proxy training runs: `cpu` or `cuda` (on Ray, a training task
            then asks for one GPU).
    """

    ray: str | None = None
    max_in_flight: int | None = None
    torch_device: str = "cpu"

    def ray_address(self, profile: Profile) -> str | None:
        """The Ray cluster to run on (None: in-process): this execution's, else `profile`'s."""
        ray = self.ray if self.ray is not None else profile.ray
        return None if ray in (None, "off") else ray


class Engine(Protocol):
    """Runs candidates' evaluations."""

    evaluation: CandidateEvaluation

    def evaluate(self, candidates: Iterator[tuple[int, ArchSpec]], standing: Callable[[], Standing],
                 on_phase: OnPhase) -> Iterator[tuple[int, CandidateOutcome]]:
        """Evaluate the candidates (candidate id, architecture) that `candidates` gives,
        taking the next one only when there is room for it, and yield (id, outcome) as each
        finishes; the caller stores an outcome before asking for the next, so a steady-state
        search proposes a child from every outcome stored so far. An error that stops the
        run is raised."""
        ...

    def close(self) -> None:
        """Stop what the engine started."""
        ...


class InProcessEngine:
    """Evaluates one candidate after another in this process; the export of the next one
    (when its latency may be measured) converts meanwhile, in a background process."""

    def __init__(self, evaluation: CandidateEvaluation, execution: Execution) -> None:
        from akd_mobile.export_worker import ExportWorker

        self.evaluation = evaluation
        self.execution = execution
        self.exporter = ExportWorker(evaluation.config.fmt)

    def evaluate(self, candidates: Iterator[tuple[int, ArchSpec]], standing: Callable[[], Standing],
                 on_phase: OnPhase) -> Iterator[tuple[int, CandidateOutcome]]:
        ahead: collections.deque[tuple[int, ArchSpec]] = collections.deque()

        def take() -> None:
            for cid, arch in itertools.islice(candidates, IN_PROCESS_AHEAD - len(ahead)):
                ahead.append((cid, arch))
                if self.evaluation.exported_ahead([arch], standing()):
                    self.exporter.submit([arch])

        take()
        while ahead:
            cid, arch = ahead.popleft()
            outcome = run_plan(self.evaluation.plan(arch, standing), lambda work, cid=cid: self._do(work, cid, on_phase))
            self.exporter.forget(arch)  # exported ahead but predicted, or measured: its result is spent either way
            yield cid, outcome
            take()

    def _do(self, work: Work, cid: int, on_phase: OnPhase) -> Any:
        if isinstance(work, MeasureAndTrain):  # in turn: a failed export is not trained
            return self._do(Measure(work.arch), cid, on_phase), self._do(Train(work.arch), cid, on_phase)
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
    from devices.profiles import load_profile, open_device

    profile = load_profile(config.device)
    address = execution.ray_address(profile)
    if address is not None:
        from akd_mobile.ray_engine import RayEngine

        return RayEngine.open(config, profile, db, dataclasses.replace(execution, ray=address), load_inputs)
    from akd_mobile.distill import torch_device
    from akd_mobile.latency import LatencyService

    torch_device(execution.torch_device)  # DeviceError now for a device torch cannot use here
    service = LatencyService(open_device(profile), db, config.measure)
    return InProcessEngine(CandidateEvaluation.open(config, service, load_inputs), execution)
