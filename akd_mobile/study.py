"""Proxy fidelity studies: does the proxy score order students the way full training does?

A study samples students from a space, stratified over cost (MACs) into bins, and trains
each one many ways: the short proxy at several step budgets and seeds, with the teacher
(KD) and without (CE), optionally with changed proxy settings (variants); and fully, with
each teacher and without one, a second seed on a share of the students (the noise ceiling)
and twice the epochs on a few (how near convergence the full training is).
`akd_mobile.fidelity` turns the rows into rank correlations with bootstrap intervals.

Every training is one row of `study_trainings` in the latency database's SQLite file,
written in its own transaction when it finishes. The plan of trainings is a pure function
of the study's configuration, so running the same command again finds the study by its
fingerprint and trains only what has no row yet: a kill at any moment loses at most the
training in flight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from akd_mobile.data import DataOptions
from akd_mobile.distill import MODES, ProxyBudget, TrainConfig
from akd_base.errors import SpaceError, StudyError
from akd_mobile.engines import TRAIN_THREADS
from akd_mobile.search import versions
from akd_mobile.space import ArchSpec, SearchSpace, get_space

if TYPE_CHECKING:
    from latency_db.store import LatencyDB

log = logging.getLogger(__name__)

KINDS = ("proxy", "full")
# Proxy settings a variant may change, with their types (`--variant temperature=4`).
VARIANT_FIELDS = {"temperature": float, "alpha": float, "lr": float, "weight_decay": float,
                  "batch_size": int, "bn_images": int}
# Random architectures drawn to place the cost bins; the bins are quantiles of their MACs.
POOL_SIZE = 4000


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study; its fingerprint (with the teachers' hashes and the
    data's fingerprint) names the study, so the same configuration resumes it.

    Attributes:
        data: dataset name or path.
        data_options: input size and the handling of unreadable images.
        space: search space preset.
        teachers: teacher specs; the first is the one the proxy distils from, the others are
            trained from fully, for teacher dependence.
        students: students sampled.
        bins: cost bins (equal-count quantiles of MACs over random architectures).
        budgets: proxy step budgets, strictly increasing.
        seeds: proxy seeds per budget and mode (seeds 0 .. seeds-1).
        epochs: epochs E of a full training.
        ceiling_students: students given a second full-KD seed (None: a third, rounded up).
        convergence_students: students also fully trained for 2E epochs.
        variants: proxy settings changed one at a time (`temperature=4`), each run with
            the first teacher at `variant_steps` for every seed.
        variant_steps: the budget the variants run at (None: the second budget, or the only one).
        proxy: the proxy's base settings (its `steps` is replaced by each budget).
        full: the full training's settings (its `epochs` is replaced by `epochs`).
        seed: seeds the sampling of students and the data set's train/validation split.
        threads: torch CPU threads per training (the search's two by default: a proxy score
            depends on the thread count, see docs/distill.md).
        torch_device: where torch trains (`cpu`, `cuda`, `auto`); not part of the identity.
    """

    data: str = "fashion-mnist"
    data_options: DataOptions = field(default_factory=DataOptions)
    space: str = "mnasnet-small"
    teachers: tuple[str, ...] = ("default",)
    students: int = 24
    bins: int = 4
    budgets: tuple[int, ...] = (40, 80, 160, 320)
    seeds: int = 2
    epochs: int = 3
    ceiling_students: int | None = None
    convergence_students: int = 4
    variants: tuple[str, ...] = ()
    variant_steps: int | None = None
    proxy: ProxyBudget = field(default_factory=ProxyBudget)
    full: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    threads: int = TRAIN_THREADS
    torch_device: str = "cpu"

    def validate(self) -> None:
        """Raise StudyError for a configuration no study can run with."""
        checks = [
            (len(self.teachers) >= 1, "a study needs at least one teacher (--teacher)"),
            (len(set(self.teachers)) == len(self.teachers), f"teachers are repeated: {', '.join(self.teachers)}"),
            (self.bins >= 1, f"--bins must be at least 1, got {self.bins}"),
            (self.students >= 2 * self.bins,
             f"--students must be at least 2 per cost bin ({2 * self.bins} for {self.bins} bins) to rank within "
             f"a bin, got {self.students}"),
            (len(self.budgets) >= 1 and all(b >= 1 for b in self.budgets), "--budgets must be step counts >= 1"),
            (all(a < b for a, b in zip(self.budgets, self.budgets[1:])),
             f"--budgets must be strictly increasing, got {','.join(map(str, self.budgets))}"),
            (self.seeds >= 1, f"--seeds must be at least 1, got {self.seeds}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.ceiling_students is None or 0 <= self.ceiling_students <= self.students,
             f"--ceiling-students must be between 0 and --students, got {self.ceiling_students}"),
            (0 <= self.convergence_students <= self.students,
             f"--convergence-students must be between 0 and --students, got {self.convergence_students}"),
            (self.variant_steps is None or self.variant_steps >= 1, f"--variant-steps must be at least 1, got {self.variant_steps}"),
            (self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise StudyError(message)
        for variant in self.variants:
            variant_budget(self.proxy, variant)

    @property
    def ceiling_count(self) -> int:
        """Students given a second full-KD seed."""
        return math.ceil(self.students / 3) if self.ceiling_students is None else self.ceiling_students

    @property
    def variant_budget_steps(self) -> int:
        """The step budget the variants run at."""
        if self.variant_steps is not None:
            return self.variant_steps
        return self.budgets[1] if len(self.budgets) > 1 else self.budgets[0]

    def identity(self) -> dict[str, Any]:
        """What the study's numbers depend on (everything but where torch runs). Settings
        added after the first studies (data options, augmentation) appear only where they
        differ from what those studies ran with, so that their fingerprints still hold."""
        out = dataclasses.asdict(self)
        out.pop("torch_device")
        if self.data_options == DataOptions():
            out.pop("data_options")
        if self.full.augment == "none":
            out["full"].pop("augment")
        for budget_field in ("steps", "epochs"):  # replaced by each budget
            out["proxy"].pop(budget_field)
        out["full"].pop("epochs")
        out["teachers"] = list(self.teachers)
        out["budgets"] = list(self.budgets)
        out["variants"] = list(self.variants)
        return out

    @classmethod
    def from_identity(cls, stored: dict[str, Any]) -> StudyConfig:
        """The configuration a stored study was run with (from `identity()`)."""
        values = dict(stored)
        for name in ("teachers", "budgets", "variants"):
            values[name] = tuple(values[name])
        values["proxy"] = ProxyBudget(**values["proxy"])
        values["full"] = TrainConfig(**{"augment": "none", **values["full"]})
        values["data_options"] = DataOptions(**values.get("data_options", {}))
        return cls(**values)


def variant_budget(base: ProxyBudget, variant: str) -> ProxyBudget:
    """The proxy settings `base` with one `name=value` change (e.g. `temperature=4`)."""
    name, sep, text = variant.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in VARIANT_FIELDS:
        raise StudyError(
            f"variant {variant!r} must be NAME=VALUE with NAME one of {', '.join(VARIANT_FIELDS)}"
        )
    try:
        value = VARIANT_FIELDS[name](text.strip())
    except ValueError:
        raise StudyError(f"variant {variant!r}: {text!r} is not a {VARIANT_FIELDS[name].__name__}") from None
    try:
        return dataclasses.replace(base, **{name: value})
    except Exception as exc:  # ProxyBudget's own checks (DistillError) on the new value
        raise StudyError(f"variant {variant!r}: {exc}") from None


@dataclass(frozen=True)
class Student:
    """One sampled student of a study."""

    idx: int
    arch: str
    arch_key: str
    cost_bin: int
    macs: int
    params: int


@dataclass(frozen=True)
class Job:
    """One training of the plan; its fields are the row's identity in `study_trainings`.

    Attributes:
        student: the student's index.
        kind: `proxy` (short training, validation accuracy) or `full` (test accuracy).
        mode: `kd` or `ce`.
        teacher: the teacher's hash (`''` in mode ce).
        setting: `''` for the base proxy settings, else the variant (`temperature=4`).
        budget: proxy steps, or full epochs.
        seed: training seed (initial weights and batch order).
    """

    student: int
    kind: str
    mode: str
    teacher: str
    setting: str
    budget: int
    seed: int


def select_students(space: SearchSpace, count: int, bins: int, seed: int) -> list[Student]:
    """`count` distinct students stratified over MACs: bins are equal-count quantiles of the MACs of
    random architectures, each bin gets an equal share (the first bins one more when it does
    not divide), and the order interleaves the bins so any prefix covers them all."""
    rng = random.Random(seed)
    pool: dict[str, ArchSpec] = {}
    for _ in range(POOL_SIZE):
        arch = space.sample(rng)
        pool.setdefault(arch.canonical, arch)
    ranked = sorted(pool.values(), key=lambda a: (space.cost(a).macs, a.canonical))
    groups = [list(g) for g in np.array_split(np.array(ranked, dtype=object), bins)]
    picked: list[list[ArchSpec]] = []
    for b, group in enumerate(groups):
        share = count // bins + (1 if b < count % bins else 0)
        if share > len(group):
            raise StudyError(f"cost bin {b} has only {len(group)} architectures; ask for fewer students or bins")
        picked.append(rng.sample(group, share))
    students: list[Student] = []
    for round_ in range(max(len(p) for p in picked)):
        for b, archs in enumerate(picked):
            if round_ < len(archs):
                arch = archs[round_]
                cost = space.cost(arch)
                students.append(Student(len(students), arch.canonical, arch.key, b, cost.macs, cost.params))
    return students


def plan_jobs(config: StudyConfig, teacher_hashes: list[str]) -> list[Job]:
    """Every training of the study, in the order they run: student by student (bins
    interleaved), each student's proxies first, then its full trainings."""
    primary = teacher_hashes[0]
    jobs: list[Job] = []
    for s in range(config.students):
        for steps in config.budgets:
            for seed in range(config.seeds):
                jobs.append(Job(s, "proxy", "kd", primary, "", steps, seed))
                jobs.append(Job(s, "proxy", "ce", "", "", steps, seed))
        for variant in config.variants:
            for seed in range(config.seeds):
                jobs.append(Job(s, "proxy", "kd", primary, variant, config.variant_budget_steps, seed))
        jobs.append(Job(s, "full", "kd", primary, "", config.epochs, 0))
        jobs.append(Job(s, "full", "ce", "", "", config.epochs, 0))
        jobs.extend(Job(s, "full", "kd", h, "", config.epochs, 0) for h in teacher_hashes[1:])
        if s < config.ceiling_count:
            jobs.append(Job(s, "full", "kd", primary, "", config.epochs, 1))
        if s < config.convergence_students:
            jobs.append(Job(s, "full", "kd", primary, "", 2 * config.epochs, 0))
    return jobs


@dataclass(frozen=True)
class Study:
    """A stored study: its configuration, teachers, data set and students."""

    id: int
    fingerprint: str
    created_at: float
    config: dict[str, Any]
    teachers: list[dict[str, Any]]
    data: dict[str, Any]
    versions: dict[str, Any]
    students: list[Student]


_TRAINING_COLUMNS = ("student", "kind", "mode", "teacher", "setting", "budget", "seed",
                     "accuracy", "val_accuracy", "seconds", "finished_at")


class StudyStore:
    """Studies, their students and trainings in an open latency database (each write one transaction)."""

    def __init__(self, db: LatencyDB) -> None:
        self.db = db

    def find(self, fingerprint: str) -> int | None:
        rows = self.db.read("SELECT id FROM studies WHERE fingerprint = ?", (fingerprint,))
        return int(rows[0][0]) if rows else None

    def create(self, fingerprint: str, config: dict[str, Any], teachers: list[dict[str, Any]],
               data: dict[str, Any], students: list[Student]) -> int:
        """Store a new study and its students, all or nothing."""
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO studies (fingerprint, created_at, updated_at, config_json, teachers_json, data_json, "
                "versions_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fingerprint, now, now, json.dumps(config, sort_keys=True), json.dumps(teachers),
                 json.dumps(data, sort_keys=True), json.dumps(versions(), sort_keys=True)),
            )
            study_id = int(cur.lastrowid)
            conn.executemany(
                "INSERT INTO study_students (study_id, idx, arch, arch_key, cost_bin, macs, params) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(study_id, s.idx, s.arch, s.arch_key, s.cost_bin, s.macs, s.params) for s in students],
            )
        return study_id

    def get(self, study_id: int) -> Study:
        rows = self.db.read(
            "SELECT id, fingerprint, created_at, config_json, teachers_json, data_json, versions_json "
            "FROM studies WHERE id = ?", (study_id,),
        )
        if not rows:
            raise StudyError(f"no proxy study {study_id} in this database; `akd-mobile proxy list` shows the studies")
        r = rows[0]
        students = [Student(*s) for s in self.db.read(
            "SELECT idx, arch, arch_key, cost_bin, macs, params FROM study_students WHERE study_id = ? ORDER BY idx",
            (study_id,),
        )]
        return Study(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), json.loads(r[5]), json.loads(r[6]),
                     students)

    def ids(self) -> list[int]:
        return [int(r[0]) for r in self.db.read("SELECT id FROM studies ORDER BY id")]

    def record(self, study_id: int, job: Job, accuracy: float, val_accuracy: float, seconds: float) -> None:
        """Store one finished training (a second writer of the same job is ignored)."""
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                f"INSERT OR IGNORE INTO study_trainings (study_id, {', '.join(_TRAINING_COLUMNS)}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study_id, *dataclasses.astuple(job), accuracy, val_accuracy, seconds, now),
            )
            conn.execute("UPDATE studies SET updated_at = ? WHERE id = ?", (now, study_id))

    def trainings(self, study_id: int) -> list[dict[str, Any]]:
        """The study's finished trainings, oldest first."""
        rows = self.db.read(
            f"SELECT {', '.join(_TRAINING_COLUMNS)} FROM study_trainings WHERE study_id = ? ORDER BY id",
            (study_id,),
        )
        return [dict(zip(_TRAINING_COLUMNS, r)) for r in rows]

    def done(self, study_id: int) -> set[Job]:
        return {Job(*(t[c] for c in _TRAINING_COLUMNS[:7])) for t in self.trainings(study_id)}


@dataclass(frozen=True)
class StudyProgress:
    """Reported after each training: how far the study is, and what just finished."""

    study_id: int
    done: int
    total: int
    job: Job | None
    accuracy: float | None
    seconds: float | None


def run_study(config: StudyConfig, db: LatencyDB,
              on_progress: Callable[[StudyProgress], None] | None = None) -> int:
    """Run (or continue) the study `config` describes; returns its id.

    Everything that can be checked is checked before the study is stored: the options, the
    data set against the space, each teacher against the data set.

    Raises:
        StudyError: bad options. DataError, TeacherError: a data set or teacher that cannot be used.
    """
    from akd_mobile.data import load_dataset
    from akd_mobile.distill import torch_device
    from akd_mobile.teachers import cached_logits, check_teacher_fits, evaluate_teacher, load_teacher

    config.validate()
    torch_device(config.torch_device)
    data = load_dataset(config.data, seed=config.seed, options=config.data_options, space=config.space)
    try:
        space = get_space(config.space, tuple(data.input_shape), data.num_classes)
    except SpaceError as exc:
        raise StudyError(f"dataset {config.data} does not fit space {config.space}: {exc}") from None
    teachers = [load_teacher(spec) for spec in config.teachers]
    if len({t.hash for t in teachers}) < len(teachers):
        raise StudyError(f"two of the teachers {', '.join(config.teachers)} are the same file")
    for t in teachers:
        check_teacher_fits(t, data, config.torch_device)
    hashes = [t.hash for t in teachers]
    fingerprint = hashlib.sha256(
        json.dumps({"config": config.identity(), "teachers": hashes, "data": data.fingerprint}, sort_keys=True).encode()
    ).hexdigest()[:16]
    store = StudyStore(db)
    study_id = store.find(fingerprint)
    if study_id is None:
        rows = [{"spec": spec, "hash": t.hash, "test_accuracy": evaluate_teacher(t, data, "test", config.torch_device),
                 "params": _params(t)} for spec, t in zip(config.teachers, teachers)]
        students = select_students(space, config.students, config.bins, config.seed)
        study_id = store.create(fingerprint, config.identity(), rows, data.summary(), students)
        log.info("created proxy study %d (%s)", study_id, fingerprint)
    study = store.get(study_id)
    logits = {t.hash: cached_logits(t, data, device=config.torch_device) for t in teachers}
    jobs = plan_jobs(config, hashes)
    done = store.done(study_id)
    finished = sum(job in done for job in jobs)
    if on_progress is not None:
        on_progress(StudyProgress(study_id, finished, len(jobs), None, None, None))
    for job in jobs:
        if job in done:
            continue
        arch = space.decode(study.students[job.student].arch)
        start = time.perf_counter()
        accuracy, val_accuracy = _train(job, arch, data, logits.get(job.teacher), config)
        seconds = time.perf_counter() - start
        store.record(study_id, job, accuracy, val_accuracy, seconds)
        finished += 1
        if on_progress is not None:
            on_progress(StudyProgress(study_id, finished, len(jobs), job, accuracy, seconds))
    return study_id


def _train(job: Job, arch: ArchSpec, data: Any, teacher_logits: Any, config: StudyConfig) -> tuple[float, float]:
    """Run one training; (accuracy, validation accuracy)."""
    from akd_mobile.distill import proxy_score, torch_threads, train_student

    if job.mode not in MODES or job.kind not in KINDS:
        raise StudyError(f"unknown training {job}")
    if job.kind == "proxy":
        base = variant_budget(config.proxy, job.setting) if job.setting else config.proxy
        budget = dataclasses.replace(base, steps=job.budget, epochs=None)
        result = proxy_score(arch, data, teacher_logits, budget, job.mode, job.seed, config.torch_device,
                             config.threads)
        return result.accuracy, result.accuracy
    train = dataclasses.replace(config.full, epochs=job.budget)
    with torch_threads(config.threads):
        _, result = train_student(arch, data, teacher_logits, train, job.mode, job.seed, config.torch_device)
    return result.test_accuracy, result.val_accuracy


def _params(teacher: Any) -> int | None:
    """Trainable parameters of a teacher's members (None when a member is not an nn.Module)."""
    from torch import nn

    total = 0
    for model in teacher.models:
        if not isinstance(model, nn.Module):
            return None
        total += sum(p.numel() for p in model.parameters())
    return total


def export_rows(study: Study, trainings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's trainings joined with their students, one flat row each (for CSV)."""
    by_idx = {s.idx: s for s in study.students}
    names = {t["hash"]: t["spec"] for t in study.teachers}
    out = []
    for t in trainings:
        s = by_idx[t["student"]]
        out.append({"study": study.id, "student": s.idx, "arch_key": s.arch_key, "arch": s.arch,
                    "cost_bin": s.cost_bin, "macs": s.macs, "params": s.params, "kind": t["kind"],
                    "mode": t["mode"], "teacher": names.get(t["teacher"], t["teacher"]), "teacher_hash": t["teacher"],
                    "setting": t["setting"], "budget": t["budget"], "seed": t["seed"], "accuracy": t["accuracy"],
                    "val_accuracy": t["val_accuracy"], "seconds": round(t["seconds"], 3)})
    return out


def study_config(*, teachers: tuple[str, ...], budgets: str, proxy_lr: float | None = None,
                 proxy_temperature: float | None = None, proxy_alpha: float | None = None,
                 proxy_batch_size: int | None = None, batch_size: int | None = None, threads: int | None = None,
                 variants: tuple[str, ...] = (), augment: str = "auto", **fields: Any) -> StudyConfig:
    """A checked StudyConfig from command-line values (None: the default of the search or of `distill`).

    Raises:
        StudyError: a malformed budget list or settings no training can run with.
    """
    try:
        steps = tuple(int(b) for b in budgets.split(","))
    except ValueError:
        raise StudyError(f"--budgets must be step counts joined by ',' like 40,80,160, got {budgets!r}") from None
    try:
        proxy = ProxyBudget().override(lr=proxy_lr, temperature=proxy_temperature, alpha=proxy_alpha,
                                       batch_size=proxy_batch_size)
        full = TrainConfig(augment=augment) if batch_size is None else TrainConfig(batch_size=batch_size, augment=augment)
    except Exception as exc:  # DistillError from the settings' own checks
        raise StudyError(str(exc)) from None
    config = StudyConfig(teachers=tuple(teachers), budgets=steps, proxy=proxy, full=full,
                         threads=TRAIN_THREADS if threads is None else threads, variants=tuple(variants), **fields)
    config.validate()
    return config


def study_list(store: StudyStore) -> list[dict[str, Any]]:
    """One summary row per stored study."""
    out = []
    for study_id in store.ids():
        study = store.get(study_id)
        out.append({"id": study.id, "fingerprint": study.fingerprint, "data": study.data.get("name"),
                    "space": study.config.get("space"), "students": len(study.students),
                    "trainings": len(store.trainings(study_id)), "teachers": [t["spec"] for t in study.teachers],
                    "created_at": study.created_at})
    return out


def write_csv(store: StudyStore, study_id: int, path: Path) -> int:
    """Write study `study_id`'s trainings to `path` as CSV (written whole, then renamed); returns the row count."""
    import csv
    import os

    study = store.get(study_id)
    rows = export_rows(study, store.trainings(study_id))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["study"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return len(rows)
