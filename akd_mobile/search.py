"""The AKD search loop: propose students, score each by KD proxy accuracy and measured
latency, reward, update the strategy; every step stored so a killed search resumes.

One step: the strategy proposes a batch; the batch is stored as pending candidates (one
transaction); each candidate gets its latency (latency database hit, or export and
measure on the device) and its proxy accuracy (a short KD run from the cached teacher
logits, or plain CE for the `ce` baseline), and is stored as done or failed; the strategy
updates on the batch's rewards and its state is checkpointed with the step counter.
`--resume` reloads the checkpoint, re-reads the stored candidates of the unfinished step
and evaluates only those still pending: none is lost, none evaluated twice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from akd_mobile import __version__
from akd_mobile.controller import STRATEGIES, make_strategy
from akd_mobile.errors import AkdError, SearchError, SpaceError
from akd_mobile.reward import CONSTRAINTS, RewardConfig, mnas_reward
from akd_mobile.runs import CandidateOutcome, CandidateRow, RunStore
from akd_mobile.space import ArchSpec, SearchSpace, get_space

log = logging.getLogger(__name__)

FORMATS = ("tflite", "pte")
REWARDS = ("kd", "ce")
MAX_FAILURES_IN_A_ROW = 5
# Two torch threads for the proxy, which trains each batch as two shards on threads of
# their own (akd_mobile.shards): 1.8x one thread on 2 cores (docs/distill.md). A thread
# that the export worker's process delays holds up its step only once, at the join. Fixed
# rather than one per core, so that a score does not depend on the host's core count.
TRAIN_THREADS = 2


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; stored with the run.

    Attributes:
        device: device profile name or path.
        teacher: teacher spec (see `teachers.load_teacher`); unused with reward `ce`.
        data: dataset name or path.
        space: search space preset.
        target_ms: latency target T; None takes the device profile's `target_ms`.
        constraint: `soft` or `hard` (MnasNet's two reward shapes).
        reward: `kd` (AKD: proxy accuracy after distillation) or `ce` (plain NAS).
        strategy: `rl`, `random` or `evolution`.
        budget: number of candidates to evaluate.
        batch: candidates per strategy update.
        fmt: artifact format measured: `tflite` or `pte`.
        threads: inference threads; None takes the profile's (default 1).
        warmup: untimed runs before timing; None takes the profile's (default 5).
        runs: timed runs; None takes the profile's (default 30).
        min_time_s: least seconds of timed runs per measurement; None takes the profile's
            (default 0).
        proxy_steps: KD proxy training steps; None keeps `ProxyBudget`'s default.
        seed: seeds the strategy and every proxy training.
    """

    device: str = "local"
    teacher: str = "default"
    data: str = "fashion-mnist"
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
    proxy_steps: int | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raise SearchError for values no search can run with."""
        checks = [
            (self.constraint in CONSTRAINTS, f"--constraint must be one of {', '.join(CONSTRAINTS)}"),
            (self.reward in REWARDS, f"--reward must be one of {', '.join(REWARDS)}"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.fmt in FORMATS, f"--format must be one of {', '.join(FORMATS)}"),
            (self.budget >= 1, f"--budget must be at least 1, got {self.budget}"),
            (self.batch >= 1, f"--batch must be at least 1, got {self.batch}"),
            (self.target_ms is None or self.target_ms > 0, f"--target-ms must be positive, got {self.target_ms}"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
            (self.runs is None or self.runs >= 1, f"--runs must be at least 1, got {self.runs}"),
            (self.warmup is None or self.warmup >= 0, f"--warmup must be 0 or more, got {self.warmup}"),
            (self.min_time_s is None or 0 <= self.min_time_s < math.inf,
             f"--min-time must be a number of seconds >= 0, got {self.min_time_s}"),
            (self.proxy_steps is None or self.proxy_steps >= 1, f"--proxy-steps must be at least 1, got {self.proxy_steps}"),
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Progress:
    """What the loop reports after each candidate (for a live display)."""

    run_id: int
    step: int
    done: int
    budget: int
    best: CandidateRow | None
    last: CandidateRow | None


class ExportPrefetcher:
    """Exports candidates in a background process while the foreground trains others.

    A new candidate costs an export (seconds of converter work) and a KD proxy run; with
    the batch known up front, the exports of a step run one after another in a worker
    process, so candidate i+1 converts while candidate i trains. The worker writes into
    the export cache, where the foreground's `export_model` then finds the file.
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.pool: Any = None
        self.futures: dict[str, Any] = {}

    def submit(self, archs: list[ArchSpec]) -> None:
        """Queue the exports of `archs` (those not queued already)."""
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        from akd_mobile.export import export_model

        if self.pool is None:
            self.pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_export_worker_init)
        for arch in archs:
            if arch.key not in self.futures:
                self.futures[arch.key] = self.pool.submit(export_model, arch, self.fmt)

    def wait(self, arch: ArchSpec) -> None:
        """Block until the export of `arch` (if queued) is done; raise its error."""
        future = self.futures.pop(arch.key, None)
        if future is not None:
            future.result()

    def close(self) -> None:
        """Stop the worker, dropping exports not started."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.futures.clear()


def _export_worker_init() -> None:
    """One torch thread, and the converters' C++ log chatter kept off the terminal (an
    export's error still reaches the search as the future's exception)."""
    import os

    import torch

    torch.set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


class Evaluator:
    """Scores candidates: latency through the latency database, accuracy by proxy training."""

    def __init__(self, config: SearchConfig, db: Any, device: Any) -> None:
        from akd_mobile.data import load_dataset
        from akd_mobile.distill import ProxyBudget

        self.config = config
        self.db = db
        self.device = device
        self.reward_config = RewardConfig.constraint(config.constraint, config.target_ms)  # type: ignore[arg-type]
        self.data = load_dataset(config.data, seed=config.seed)
        try:
            self.space: SearchSpace = get_space(config.space, tuple(self.data.input_shape), self.data.num_classes)
        except SpaceError as exc:
            raise SearchError(f"dataset {config.data} does not fit space {config.space}: {exc}") from None
        budget = ProxyBudget()
        if config.proxy_steps is not None:
            budget = dataclasses.replace(budget, steps=config.proxy_steps)
        self.budget = budget
        self.prefetcher = ExportPrefetcher(config.fmt)
        self.teacher_logits = None
        if config.reward == "kd":
            from akd_mobile.teachers import cached_logits, load_teacher

            self.teacher_logits = cached_logits(load_teacher(config.teacher), self.data)

    def prefetch(self, archs: list[ArchSpec]) -> None:
        """Start exporting the candidates whose latency the database does not hold."""
        from akd_mobile.latency import stored_latency

        cfg = self.config
        misses = [a for a in archs if stored_latency(a, self.device, self.db, cfg.fmt, cfg.threads) is None]  # type: ignore[arg-type]
        if misses:
            self.prefetcher.submit(misses)

    def close(self) -> None:
        """Release the background exporter."""
        self.prefetcher.close()

    def evaluate(self, arch: ArchSpec) -> CandidateOutcome:
        """Latency first (a database hit costs nothing, an export failure skips training),
        then the proxy accuracy. Any failure is recorded, never raised."""
        from akd_mobile.distill import proxy_score
        from akd_mobile.latency import arch_latency

        cost = self.space.cost(arch)
        export_s = measure_s = train_s = 0.0
        try:
            tick = time.perf_counter()
            self.prefetcher.wait(arch)
            waited_s = time.perf_counter() - tick
            cfg = self.config
            lat = arch_latency(
                arch, self.device, self.db, fmt=cfg.fmt, threads=cfg.threads,  # type: ignore[arg-type]
                warmup=cfg.warmup, runs=cfg.runs, min_time_s=cfg.min_time_s or 0.0,  # type: ignore[arg-type]
            )
            export_s, measure_s = waited_s + lat.export_s, lat.measure_s
            score = proxy_score(
                arch, self.data, self.teacher_logits, self.budget, mode=self.config.reward, seed=self.config.seed,
                threads=TRAIN_THREADS,
            )
            train_s = score.train_s + score.eval_s
            latency_ms = lat.result.median_ms
            reward = mnas_reward(score.accuracy, latency_ms, self.reward_config)
        except Exception as exc:  # noqa: BLE001 - a failed candidate is recorded and the search goes on
            log.warning("candidate %s failed: %s", arch.key, exc)
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
            return CandidateOutcome(
                "failed", params=cost.params, macs=cost.macs, export_s=export_s, measure_s=measure_s,
                train_s=train_s, error=reason,
            )
        return CandidateOutcome(
            "done", accuracy=score.accuracy, latency_ms=latency_ms, reward=reward, params=cost.params,
            macs=cost.macs, latency_cached=lat.cached, train_s=train_s, export_s=export_s, measure_s=measure_s,
        )


def resolve_device_defaults(config: SearchConfig) -> SearchConfig:
    """The config with threads, warm-up, runs, minimum time and the latency target filled in: the
    config's own values, else the device profile's, else 1 thread, 5 warm-up, 30 runs and
    no minimum time. The profile is checked first (DeviceError for bad settings)."""
    from devices.profiles import load_profile, open_device

    profile = load_profile(config.device)
    open_device(profile)
    settings = profile.settings
    target = config.target_ms or profile.target_ms
    if target is None:
        raise SearchError(f"device profile {config.device} sets no target_ms: give --target-ms")
    return dataclasses.replace(
        config,
        target_ms=float(target),
        threads=config.threads or int(settings.get("threads", 1)),
        warmup=config.warmup if config.warmup is not None else int(settings.get("warmup", 5)),
        runs=config.runs or int(settings.get("runs", 30)),
        min_time_s=config.min_time_s if config.min_time_s is not None else float(settings.get("min_time_s", 0.0)),
    )


def versions() -> dict[str, str]:
    """Versions that a run's numbers depend on."""
    out = {"akd-mobile": __version__}
    for dist in ("torch", "executorch", "litert-torch", "ai-edge-litert"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def run_search(
    config: SearchConfig | None = None,
    db_path: Path | None = None,
    resume: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> SearchSummary:
    """Run (or resume) a search and return its summary.

    Args:
        config: the search to start; ignored when resuming (the stored one is used).
        db_path: the SQLite file holding latency measurements and runs.
        resume: id of a run to continue from its last checkpoint.
        on_progress: called after every candidate.
    """
    from devices.profiles import open_device
    from latency_db import open_db

    db = open_db(db_path)
    store = RunStore(db)
    if resume is not None:
        run = store.get_run(resume)
        if run.status == "done":
            raise SearchError(f"run {resume} has finished; nothing to resume")
        config = SearchConfig(**run.config)
        run_id = resume
    else:
        config = config or SearchConfig()
        config.validate()
        config = resolve_device_defaults(config)
        run_id = store.create_run(dataclasses.asdict(config), versions())
    started = time.monotonic()
    try:
        device = open_device(config.device)
        evaluator = Evaluator(config, db, device)
        space = evaluator.space
        strategy = make_strategy(config.strategy, space, config.seed)
        step, state = store.load_checkpoint(run_id)
        if state is not None:
            strategy.load_state_dict(state)
        store.set_status(run_id, "running")
        try:
            _loop(config, space, store, run_id, step, strategy, evaluator, on_progress)
        finally:
            evaluator.close()
    except KeyboardInterrupt:
        store.set_status(run_id, "interrupted")
        raise
    except AkdError:
        store.set_status(run_id, "failed")
        raise
    store.set_status(run_id, "done")
    return summarize(store, run_id, time.monotonic() - started)


def _loop(config, space, store, run_id, step, strategy, evaluator, on_progress) -> None:
    failures_in_a_row = 0
    while True:
        remaining = config.budget - sum(1 for r in store.candidates(run_id) if r.step <= step)
        if remaining <= 0:
            return
        step += 1
        tick = time.perf_counter()
        proposed = strategy.propose(min(config.batch, remaining))
        controller_s = time.perf_counter() - tick
        stored = store.candidates(run_id, step)
        if not stored:
            store.add_pending(run_id, step, [(a.canonical, a.key) for a in proposed])
            stored = store.candidates(run_id, step)
        elif [r.arch for r in stored] != [a.canonical for a in proposed]:
            log.warning("run %d step %d: stored candidates differ from a fresh proposal; using the stored", run_id, step)
        evaluator.prefetch([space.decode(r.arch) for r in stored if r.status == "pending"])
        for row in stored:
            if row.status == "pending":
                arch = space.decode(row.arch)
                earlier = store.done_with_key(run_id, arch.key)
                outcome = _reuse(earlier) if earlier else evaluator.evaluate(arch)
                store.finish(row.id, outcome)
                failures_in_a_row = failures_in_a_row + 1 if outcome.status == "failed" else 0
                if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                    raise SearchError(
                        f"{failures_in_a_row} candidates in a row failed, the last with: {outcome.error}; "
                        f"fix the cause and continue with --resume {run_id}"
                    )
            if on_progress:
                on_progress(_progress(store, run_id, step, config.budget, row.id))
        rows = store.candidates(run_id, step)
        tick = time.perf_counter()
        strategy.update([space.decode(r.arch) for r in rows], [r.reward if r.status == "done" else None for r in rows])
        controller_s += time.perf_counter() - tick
        store.checkpoint(run_id, step, strategy.state_dict(), controller_s)


def _reuse(earlier: CandidateRow) -> CandidateOutcome:
    return CandidateOutcome(
        "done", accuracy=earlier.accuracy, latency_ms=earlier.latency_ms, reward=earlier.reward,
        params=earlier.params, macs=earlier.macs, latency_cached=True, reused=True,
    )


def _progress(store: RunStore, run_id: int, step: int, budget: int, last_id: int) -> Progress:
    rows = [r for r in store.candidates(run_id) if r.status != "pending"]
    done = [r for r in rows if r.status == "done"]
    best = max(done, key=lambda r: r.reward) if done else None
    last = next((r for r in rows if r.id == last_id), None)
    return Progress(run_id, step, len(rows), budget, best, last)


def summarize(store: RunStore, run_id: int, seconds: float | None = None) -> SearchSummary:
    """The summary of a stored run: best candidate overall and best under the target."""
    run = store.get_run(run_id)
    rows = store.candidates(run_id)
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
    )
