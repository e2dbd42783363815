"""The AKD search loop: propose students, score each by KD proxy accuracy and measured
latency, reward, update the strategy; every step stored so a killed search resumes.

One step: the strategy proposes a batch; the batch is stored as pending candidates (one
transaction); each candidate gets its latency (latency database hit, or export and
measure on the device) and its proxy accuracy (a short KD run from the cached teacher
logits, or plain CE for the `ce` baseline), and is stored as done or failed; the strategy
updates on the batch's rewards and its state is checkpointed with the step counter.
`--resume` reloads the checkpoint, re-reads the stored candidates of the unfinished step
and evaluates only those still pending: none is lost, none evaluated twice.

Everything that can be checked is checked before a run row exists: the settings, the
device (it must answer), the data against the space and the proxy, the teacher against
the data (a teacher near chance on the validation split is refused). A run stores its
teacher's and data's absolute paths with their hash and fingerprint, so a resume works
from any folder and stops if either changed. A candidate's own failure (an op the
converter cannot handle) is recorded and counts; the device's or the host's (unreachable,
timed out, disk full) stops the run resumably with the candidate still pending. Ctrl-C,
SIGTERM and SIGHUP stop it within a moment, store why, and name the resume command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from akd_mobile import __version__
from akd_mobile.controller import STRATEGIES, make_strategy
from akd_mobile.data import DataOptions, Dataset
from akd_mobile.distill import ProxyBudget
from akd_mobile.latency_policy import LATENCY_MODES, MODEL_CHECK_WINDOW, TOP_MEASURED, Standing, model_drift
from akd_base.errors import (AkdError, DeviceError, HostError, Interrupted, SearchError, SpaceError, error_line,
                             stops_the_run)
from akd_base.measurement import MeasureSettings
from akd_mobile.reward import CONSTRAINTS
from akd_mobile.runs import CandidateOutcome, CandidateRow, Checkpoint, LeaseLost, RunLease, RunStore
from akd_mobile.signals import signal_name, signal_number, signals_as_interrupts
from akd_mobile.space import ArchSpec, SearchSpace, get_space

if TYPE_CHECKING:
    import torch

    from akd_mobile.engines import Engine, Execution


log = logging.getLogger(__name__)

REWARDS = ("kd", "ce")
MAX_FAILURES_IN_A_ROW = 5


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; stored with the run.

    Attributes:
        device: device profile name or path.
        teacher: teacher spec (see `teachers.load_teacher`); unused with reward `ce`.
        data: dataset name or path.
        data_options: input size and the handling of unreadable images.
        space: search space preset.
        target_ms: latency target T; None takes the device profile's `target_ms`.
        constraint: `soft` or `hard` (MnasNet's two reward shapes).
        reward: `kd` (AKD: proxy accuracy after distillation) or `ce` (plain NAS).
        strategy: `rl`, `random` or `evolution`.
        budget: number of candidates to evaluate.
        batch: candidates per strategy update.
        fmt: artifact format measured: `tflite` or `pte`.
        threads, warmup, runs, min_time_s: how each latency is measured
            (`akd_base.measurement.MeasureSettings`); None takes the device profile's, else
            the defaults there. A run stores them resolved; see `measure`.
        latency: `measure`, `predict` or `hybrid`: when a latency the database does not hold
            is measured and when the device's latency model predicts it
            (`akd_mobile.latency_policy`).
        proxy: the proxy training that scores each candidate (steps, batch, learning rate, KD
            settings); a batch larger than the data's training split takes the whole split.
        seed: seeds the strategy and every proxy training.
    """

    device: str = "local"
    teacher: str = "default"
    data: str = "fashion-mnist"
    data_options: DataOptions = DataOptions()
    space: str = "mnasnet-small"
    target_ms: float | None = None
    constraint: str = "soft"
    reward: str = "kd"
    strategy: str = "rl"
    budget: int = 16
    batch: int = 4
    fmt: str = "tflite"
    threads: int | None = None
    warmup: int | None = None
    runs: int | None = None
    min_time_s: float | None = None
    latency: str = "measure"
    proxy: ProxyBudget = ProxyBudget()
    seed: int = 0

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> SearchConfig:
        """The config a run was stored with (`dataclasses.asdict` form)."""
        values = dict(stored)
        proxy = ProxyBudget(**values.pop("proxy", {}))
        data_options = DataOptions(**values.pop("data_options", {}))  # absent in runs stored before it
        steps = values.pop("proxy_steps", None)  # runs stored before the proxy settings were one object
        return cls(**values, data_options=data_options,
                   proxy=proxy if steps is None else dataclasses.replace(proxy, steps=steps))

    @property
    def measure(self) -> MeasureSettings:
        """How a resolved config's latencies are measured (`resolve_device_defaults`); a run
        stored before the minimum time existed measured with none."""
        return MeasureSettings(self.fmt, self.threads, self.warmup, self.runs,  # type: ignore[arg-type]
                               self.min_time_s or 0.0)

    def validate(self) -> None:
        """Raise SearchError for values no search can run with."""
        try:
            MeasureSettings().with_options(fmt=self.fmt, threads=self.threads, warmup=self.warmup, runs=self.runs,
                                           min_time_s=self.min_time_s)
        except DeviceError as exc:
            raise SearchError(str(exc)) from None
        checks = [
            (self.constraint in CONSTRAINTS, f"--constraint must be one of {', '.join(CONSTRAINTS)}"),
            (self.reward in REWARDS, f"--reward must be one of {', '.join(REWARDS)}"),
            (self.latency in LATENCY_MODES, f"--latency must be one of {', '.join(LATENCY_MODES)}"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.budget >= 1, f"--budget must be at least 1, got {self.budget}"),
            (self.batch >= 1, f"--batch must be at least 1, got {self.batch}"),
            (self.target_ms is None or self.target_ms > 0, f"--target-ms must be positive, got {self.target_ms}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SearchError(message)


@dataclass(frozen=True)
class SearchSummary:
    """The outcome of a search run."""

    run_id: int
    status: str
    config: dict[str, Any]
    evaluated: int
    failed: int
    best: dict[str, Any] | None
    best_under_target: dict[str, Any] | None
    seconds: float
    time_split_s: dict[str, float] = field(default_factory=dict)
    skipped_images: int = 0
    latency_sources: dict[str, int] = field(default_factory=dict)
    model_drift: float | None = None
    model_checked: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Progress:
    """What the loop reports as it goes (for a live display): after each candidate, and at
    each phase of the current one (`phase` and `current` set, `last` None)."""

    run_id: int
    step: int
    done: int
    budget: int
    best: CandidateRow | None
    last: CandidateRow | None
    phase: str = ""
    current: str | None = None


@dataclass(frozen=True)
class SearchInputs:
    """The data, space and teacher logits a search reads, loaded and checked before a run row
    exists; `identity` (absolute paths, teacher hash, data fingerprint) is stored with the run."""

    data: Dataset
    space: SearchSpace
    teacher_logits: torch.Tensor | None
    identity: dict[str, Any]


def load_inputs(config: SearchConfig) -> SearchInputs:
    """Load the config's data and teacher and check that they fit the space, the proxy and
    each other.

    Raises:
        AkdError: data that does not fit the space, or a teacher that does not fit the data
            (other input shape or classes, or near chance on the validation split).
    """
    from akd_mobile.data import load_dataset

    data = load_dataset(config.data, seed=config.seed, options=config.data_options, space=config.space)
    try:
        space = get_space(config.space, tuple(data.input_shape), data.num_classes)
    except SpaceError as exc:
        raise SearchError(f"dataset {config.data} does not fit space {config.space}: {exc}") from None
    identity: dict[str, Any] = {"data": {"spec": config.data, "fingerprint": data.fingerprint,
                                         "skipped_images": len(data.skipped)}}
    logits = None
    if config.reward == "kd":
        from akd_mobile.teachers import cached_logits, check_teacher_fits, load_teacher

        teacher = load_teacher(config.teacher)
        check_teacher_fits(teacher, data)
        logits = cached_logits(teacher, data)
        identity["teacher"] = {"spec": config.teacher, "hash": teacher.hash}
    return SearchInputs(data, space, logits, identity)


def check_inputs_unchanged(run_id: int, stored: dict[str, Any], now: dict[str, Any]) -> None:
    """Raise SearchError if the teacher or the data differ from what run `run_id` started with."""
    for what, key in (("teacher", "hash"), ("data", "fingerprint")):
        then, current = stored.get(what), now.get(what)
        if then and current and then[key] != current[key]:
            raise SearchError(
                f"the {what} {current['spec']} changed since run {run_id} started ({key} {then[key][:12]} then, "
                f"{current[key][:12]} now); put the original back, or start a new search"
            )


def with_absolute_paths(config: SearchConfig) -> SearchConfig:
    """The config with the files it names (teacher members, data folder, device profile) as
    absolute paths, so that a resume from another folder finds them; names stay names."""
    from akd_mobile.data import absolute_data_spec
    from akd_mobile.teachers import absolute_teacher_spec
    from devices.profiles import absolute_profile_spec

    return dataclasses.replace(config, teacher=absolute_teacher_spec(config.teacher),
                               data=absolute_data_spec(config.data), device=absolute_profile_spec(config.device))


def resolve_device_defaults(config: SearchConfig) -> SearchConfig:
    """The config with its measurement settings (the config's own values over the device
    profile's over `MeasureSettings`' defaults) and its latency target (the config's, else
    the profile's) filled in. The profile is checked first (DeviceError for bad settings)."""
    from devices.profiles import load_profile, open_device

    profile = load_profile(config.device)
    open_device(profile)
    target = config.target_ms or profile.target_ms
    if target is None:
        raise SearchError(f"device profile {config.device} sets no target_ms: give --target-ms")
    measure = profile.measure.with_options(fmt=config.fmt, threads=config.threads, warmup=config.warmup,
                                           runs=config.runs, min_time_s=config.min_time_s)
    return dataclasses.replace(config, target_ms=float(target), threads=measure.threads, warmup=measure.warmup,
                               runs=measure.runs, min_time_s=measure.min_time_s)


def versions() -> dict[str, str]:
    """Versions that a run's numbers depend on."""
    out = {"akd-mobile": __version__}
    for dist in ("torch", "executorch", "litert-torch", "ai-edge-litert"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def resume_command(run_id: int, db_path: Path) -> str:
    """The command that continues run `run_id` (naming the database unless it is the default)."""
    from latency_db.store import db_flag

    return f"akd-mobile search --resume {run_id}{db_flag(db_path)}"


def run_search(
    config: SearchConfig | None = None,
    db_path: Path | None = None,
    resume: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    execution: Execution | None = None,
) -> SearchSummary:
    """Run (or resume) a search and return its summary.

    Args:
        config: the search to start; ignored when resuming (the stored one is used).
        db_path: the SQLite file holding latency measurements and runs.
        resume: id of a run to continue from its last checkpoint.
        on_progress: called after every candidate and at each phase of one.
        execution: the engine that runs the evaluations (default: in-process); it does not
            change the results and is not stored, so a resume may use another.

    Raises:
        Interrupted: Ctrl-C, SIGTERM or SIGHUP; the run is stored as interrupted.
        SearchError: the run stopped (the device went away, too many failures in a row);
            its reason is stored and the message names the resume command.
        AkdError: bad settings or inputs, found before any run row was written.
    """
    from latency_db import open_db

    db = open_db(db_path)
    store = RunStore(db)
    run_id: int | None = None  # set once the run is ours to write: from then on a stop is stored
    started = time.monotonic()
    with signals_as_interrupts(), contextlib.ExitStack() as held:
        try:
            if resume is not None:
                run = store.get_run(resume)
                if run.status == "done":
                    raise SearchError(f"run {resume} has finished; nothing to resume")
                lease = held.enter_context(RunLease(store, resume))  # refuses while a live search holds it
                config = SearchConfig.from_stored(run.config)
                engine = held.enter_context(_opened(config, db, execution))
                check_inputs_unchanged(resume, run.inputs, engine.evaluation.inputs.identity)
                run_id = resume
            else:
                config = with_absolute_paths(config or SearchConfig())
                config.validate()
                config = resolve_device_defaults(config)
                engine = held.enter_context(_opened(config, db, execution))
                run_id = store.create_run(dataclasses.asdict(config), versions(), engine.evaluation.inputs.identity)
                lease = held.enter_context(RunLease(store, run_id))
            _run(config, engine, store, run_id, on_progress, lease)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM and SIGHUP (signals_as_interrupts)
            name = signal_name(exc)
            if run_id is None:
                where = f"while checking run {resume}; it is unchanged" if resume else "before the run started; nothing was stored"
                raise Interrupted(f"stopped by {name} {where}", signal_number(exc)) from None
            store.set_status(run_id, "interrupted", f"stopped by {name}")
            raise Interrupted(f"run {run_id} stopped by {name}; its state is stored. Continue with: "
                              f"{resume_command(run_id, db.path)}", signal_number(exc)) from None
        except Exception as exc:
            user_error = isinstance(exc, AkdError)
            if not user_error and not stops_the_run(exc):  # a bug: stored, and its traceback shown
                if run_id is not None:
                    store.set_status(run_id, "failed", error_line(exc))
                raise
            reason = " ".join(str(exc).split()) if user_error else error_line(exc)
            if run_id is None:
                if user_error:
                    raise
                raise HostError(reason) from exc
            if isinstance(exc, LeaseLost):  # the run is another search's now: leave its row alone
                raise
            store.set_status(run_id, "failed", reason)
            raise SearchError(f"run {run_id} stopped: {reason}. Its state is stored; continue with: "
                              f"{resume_command(run_id, db.path)}") from None
    store.set_status(run_id, "done")
    return summarize(store, run_id, time.monotonic() - started)


@contextlib.contextmanager
def _opened(config: SearchConfig, db: Any, execution: Execution | None) -> Iterator[Engine]:
    """The engine that runs the config's evaluations (its device answering, and its latency
    model found when the search predicts), over the config's checked inputs; closed on exit."""
    from akd_mobile.engines import Execution, open_engine

    engine = open_engine(config, db, execution or Execution(), load_inputs)
    try:
        yield engine
    finally:
        engine.close()


def _run(config: SearchConfig, engine: Engine, store: RunStore, run_id: int,
         on_progress: Callable[[Progress], None] | None, lease: RunLease) -> None:
    strategy = make_strategy(config.strategy, engine.evaluation.space, config.seed)
    step, state = store.load_checkpoint(run_id)
    if state is not None:
        strategy.load_state_dict(state)
    store.set_status(run_id, "running")
    predictor = engine.evaluation.predictor
    recorder = _Recorder(config, store, run_id, lease, on_progress or (lambda progress: None),
                         None if predictor is None else predictor.stored.id)
    (_steady_state if strategy.steady_state else _batches)(recorder, step, strategy, engine)


class _Recorder:
    """Stores each finished candidate, stops the run after too many failures in a row, and
    reports progress (read from the database with a few indexed queries, not every row)."""

    def __init__(self, config: SearchConfig, store: RunStore, run_id: int, lease: RunLease,
                 report: Callable[[Progress], None], model_id: int | None) -> None:
        self.config = config
        self.model_id = model_id  # the latency model the run predicts with, None when it only measures
        self.store = store
        self.run_id = run_id
        self.lease = lease
        self.report = report
        self.step = 0  # the latest step proposed, as progress shows it
        self.failures_in_a_row = 0
        self.warned_model_off = False

    def finish(self, candidate_id: int, outcome: CandidateOutcome, checkpoint: Checkpoint | None = None) -> None:
        self.lease.check()
        self.store.finish(candidate_id, outcome, checkpoint)
        self.failures_in_a_row = self.failures_in_a_row + 1 if outcome.status == "failed" else 0
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise SearchError(f"{self.failures_in_a_row} candidates in a row failed, the last with: {outcome.error}; "
                              "fix the cause")
        self.report(self.progress(self.store.candidate(candidate_id)))

    def progress(self, last: CandidateRow | None) -> Progress:
        return Progress(self.run_id, self.step, self.store.finished_count(self.run_id), self.config.budget,
                        self.store.best_done(self.run_id), last)

    def phase(self, phase: str, arch: ArchSpec) -> None:
        self.report(dataclasses.replace(self.progress(None), phase=phase, current=arch.key))

    def standing(self) -> Standing:
        """Where the run stands: its best rewards (each architecture once), its best accuracy
        under the target and, when it predicts, how far its latency model is off its recent
        measurements (`latency_policy`; the first time it is off, a warning says so)."""
        target = self.config.target_ms
        drift = None if self.model_id is None else model_drift(
            self.store.measured_and_predicted(self.run_id, self.model_id, MODEL_CHECK_WINDOW))
        standing = Standing(self.store.top_rewards(self.run_id, TOP_MEASURED),
                            None if target is None else self.store.best_accuracy_under(self.run_id, target), drift)
        if standing.model_off and not self.warned_model_off:
            self.warned_model_off = True
            log.warning("the latency model is %+.0f%% off this run's recent measured candidates: measuring every "
                        "candidate the database does not hold while it stays off. Has the device's speed changed? "
                        "Then its stored latencies are suspect too (akd-mobile latency recheck)", 100 * drift)
        return standing


def _batches(rec: _Recorder, step: int, strategy: Any, engine: Engine) -> None:
    """A batch at a time: propose it, store it, evaluate it, update the strategy on it and
    checkpoint; a resume re-reads the stored batch and evaluates only its pending candidates."""
    config, store, run_id = rec.config, rec.store, rec.run_id
    space = engine.evaluation.space
    while True:
        remaining = config.budget - sum(1 for r in store.candidates(run_id) if r.step <= step)
        if remaining <= 0:
            return
        step += 1
        rec.step = step
        tick = time.perf_counter()
        proposed = strategy.propose(min(config.batch, remaining))
        controller_s = time.perf_counter() - tick
        stored = store.candidates(run_id, step)
        if not stored:
            store.add_pending(run_id, step, [(a.canonical, a.key) for a in proposed])
            stored = store.candidates(run_id, step)
        elif [r.arch for r in stored] != [a.canonical for a in proposed]:
            log.warning("run %d step %d: stored candidates differ from a fresh proposal; using the stored", run_id, step)
        pending = [(r.id, space.decode(r.arch)) for r in stored if r.status == "pending"]
        archs = dict(pending)
        while pending:  # an architecture twice in a step: evaluated once, the other reuses it
            fresh: list[tuple[int, ArchSpec]] = []
            later = []
            for candidate_id, arch in pending:
                earlier = store.done_with_key(run_id, arch.key)
                if earlier:
                    rec.finish(candidate_id, _reuse(earlier))
                elif any(a.key == arch.key for _, a in fresh):
                    later.append((candidate_id, arch))
                else:
                    fresh.append((candidate_id, arch))
            for candidate_id, outcome in engine.evaluate(iter(fresh), rec.standing,
                                                         lambda cid, phase: rec.phase(phase, archs[cid])):
                rec.finish(candidate_id, outcome)
            pending = later
        rows = store.candidates(run_id, step)
        tick = time.perf_counter()
        strategy.update([space.decode(r.arch) for r in rows], [_learned(r.status, r.reward) for r in rows])
        controller_s += time.perf_counter() - tick
        rec.lease.check()
        store.checkpoint(run_id, Checkpoint(step, strategy.state_dict(), controller_s))


def _steady_state(rec: _Recorder, step: int, strategy: Any, engine: Engine) -> None:
    """A child at a time, whenever the engine has room for one: each step is one candidate,
    stored with the strategy's state after proposing it, and each finished candidate is
    stored with the state after learning from it (one transaction each), so a resume takes
    up exactly where the run stood and evaluates only the pending candidates. Children are
    proposed as workers free, so on several workers the run depends on which finishes first."""
    config, store, run_id = rec.config, rec.store, rec.run_id
    space = engine.evaluation.space
    rows = store.candidates(run_id)
    rec.step = max([step] + [r.step for r in rows])
    unfinished = [r for r in rows if r.step > step]  # the batch a run begun a batch at a time stopped in
    if unfinished:
        strategy.propose(len(unfinished))  # proposed again, so the strategy stands past it
        late = [r for r in unfinished if r.status != "pending"]
        strategy.update([space.decode(r.arch) for r in late], [_learned(r.status, r.reward) for r in late])
        store.checkpoint(run_id, Checkpoint(rec.step, strategy.state_dict()))
    proposed = len(rows)
    arch_of: dict[int, ArchSpec] = {}  # candidate being evaluated -> its architecture
    evaluating: dict[str, int] = {}  # architecture key -> the candidate evaluating it
    twins: dict[int, list[int]] = {}  # candidate being evaluated -> candidates of its architecture waiting

    def take_in(candidate_id: int, arch: ArchSpec, outcome: CandidateOutcome) -> None:
        tick = time.perf_counter()
        strategy.update([arch], [_learned(outcome.status, outcome.reward)])
        rec.finish(candidate_id, outcome, Checkpoint(rec.step, strategy.state_dict(), time.perf_counter() - tick))

    def offer(candidate_id: int, arch: ArchSpec) -> Iterator[tuple[int, ArchSpec]]:
        earlier = store.done_with_key(run_id, arch.key)
        if earlier:
            take_in(candidate_id, arch, _reuse(earlier))
        elif arch.key in evaluating:
            twins[evaluating[arch.key]].append(candidate_id)
        else:
            evaluating[arch.key], arch_of[candidate_id], twins[candidate_id] = candidate_id, arch, []
            yield candidate_id, arch

    def feed() -> Iterator[tuple[int, ArchSpec]]:
        nonlocal proposed
        for r in rows:
            if r.status == "pending":
                yield from offer(r.id, space.decode(r.arch))
        while proposed < config.budget:
            tick = time.perf_counter()
            [arch] = strategy.propose(1)
            rec.step += 1
            proposed += 1
            [candidate_id] = store.add_pending(run_id, rec.step, [(arch.canonical, arch.key)],
                                               Checkpoint(rec.step, strategy.state_dict(), time.perf_counter() - tick))
            yield from offer(candidate_id, arch)

    for candidate_id, outcome in engine.evaluate(feed(), rec.standing,
                                                 lambda cid, phase: rec.phase(phase, arch_of[cid])):
        arch = arch_of.pop(candidate_id)
        del evaluating[arch.key]
        take_in(candidate_id, arch, outcome)
        for twin in twins.pop(candidate_id):
            take_in(twin, arch, _reuse(store.candidate(candidate_id)) if outcome.status == "done" else
                    dataclasses.replace(outcome, reused=True, train_s=0.0, export_s=0.0, measure_s=0.0))


def _learned(status: str, reward: float | None) -> float | None:
    """The reward a strategy learns from a finished candidate: None for a failed one."""
    return reward if status in ("done", "skipped") else None


def _latency_sources(rows: list[CandidateRow]) -> dict[str, int]:
    """How many finished candidates had their latency from the database, a measurement or a
    prediction, and how many were skipped untrained (runs before sources were stored: none)."""
    counts = {"database": 0, "measured": 0, "predicted": 0, "skipped": 0}
    for r in rows:
        if r.status == "skipped":
            counts["skipped"] += 1
        elif r.status == "done" and r.latency_source in counts:
            counts[r.latency_source] += 1
    return counts


def _reuse(earlier: CandidateRow) -> CandidateOutcome:
    return CandidateOutcome(
        "done", accuracy=earlier.accuracy, latency_ms=earlier.latency_ms, reward=earlier.reward,
        params=earlier.params, macs=earlier.macs, latency_cached=True, reused=True,
        latency_source=earlier.latency_source, predicted_ms=earlier.predicted_ms,
        latency_model_id=earlier.latency_model_id,
    )


def summarize(store: RunStore, run_id: int, seconds: float | None = None) -> SearchSummary:
    """The summary of a stored run: best candidate overall and best under the target."""
    run = store.get_run(run_id)
    rows = store.candidates(run_id)
    checked = store.measured_and_predicted(run_id)
    done = [r for r in rows if r.status == "done"]
    target = run.config.get("target_ms")
    best = max(done, key=lambda r: r.reward, default=None)
    under = [r for r in done if target is not None and r.latency_ms <= target]
    best_under = max(under, key=lambda r: r.accuracy, default=None)
    split = {
        "train_s": sum(r.train_s or 0 for r in rows),
        "export_s": sum(r.export_s or 0 for r in rows),
        "measure_s": sum(r.measure_s or 0 for r in rows),
        "controller_s": run.controller_s,
    }
    return SearchSummary(
        run_id=run_id,
        status=run.status,
        config=run.config,
        evaluated=len(done),
        failed=sum(r.status == "failed" for r in rows),
        best=best.to_dict() if best else None,
        best_under_target=best_under.to_dict() if best_under else None,
        seconds=seconds if seconds is not None else run.updated_at - run.created_at,
        time_split_s=split,
        skipped_images=run.inputs.get("data", {}).get("skipped_images", 0),
        latency_sources=_latency_sources(rows),
        model_drift=model_drift(checked),
        model_checked=len(checked),
    )
