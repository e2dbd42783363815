"""From a search to a student you ship: a run's finals.

`finalize` takes a run's best candidates (by reward, those under the latency target first)
and architectures of the user's own, and for each: full training with the run's teacher and
data (KD, or CE for a `ce` run), test accuracy, export to both formats with the trained
weights (checked against PyTorch), and latency on the run's device with the run's
measurement settings through the latency database. Each final is stored in the run's
SQLite file (table `finals`) as soon as it is trained and again when it is exported and
measured, so a killed finalize continues with nothing trained twice; the artifacts and a
`manifest.json` that a deployment pipeline can read go to the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from akd_mobile.errors import FinalizeError, stops_the_run

if TYPE_CHECKING:
    from latency_db.store import LatencyDB

FORMATS = ("tflite", "pte")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "akd-mobile-finals"


@dataclass(frozen=True)
class FinalizeConfig:
    """How a run's finals are chosen and trained, and where their files go.

    Attributes:
        out: folder for weights, exported models and the manifest.
        top: how many of the run's candidates (by reward, under the target first).
        archs: architecture strings of the user's own, trained and measured the same way.
        epochs: full training epochs (cosine schedule, `distill`'s other settings).
        torch_device: where torch trains (`cpu`, `cuda`, `auto`).
        threads: torch CPU threads (None: torch's default).
    """

    out: Path
    top: int = 3
    archs: tuple[str, ...] = ()
    epochs: int = 10
    torch_device: str = "cpu"
    threads: int | None = None

    def validate(self) -> None:
        """Raise FinalizeError for values no finalize can run with."""
        if self.top < 0:
            raise FinalizeError(f"--top must be 0 or more, got {self.top}")
        if self.epochs < 1:
            raise FinalizeError(f"--epochs must be at least 1, got {self.epochs}")
        if self.top == 0 and not self.archs:
            raise FinalizeError("nothing to finalize: give --top 1 or more, or --arch")
        if self.out.exists() and not self.out.is_dir():
            raise FinalizeError(f"--out {self.out} is a file, not a folder")


@dataclass(frozen=True)
class FinalRow:
    """One stored final of a run."""

    id: int
    run_id: int
    arch: str
    arch_key: str
    source: str
    mode: str
    epochs: int
    status: str
    proxy_accuracy: float | None
    test_accuracy: float | None
    val_accuracy: float | None
    train_s: float | None
    weights_sha256: str | None
    result: dict[str, Any]
    error: str | None
    created_at: float
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_COLUMNS = ("id, run_id, arch, arch_key, source, mode, epochs, status, proxy_accuracy, test_accuracy, val_accuracy, "
            "train_s, weights_sha256, result_json, error, created_at, finished_at")


class FinalStore:
    """A run's finals in an open latency database (each write one transaction)."""

    def __init__(self, db: LatencyDB) -> None:
        self.db = db

    def finals(self, run_id: int) -> list[FinalRow]:
        """Run `run_id`'s finals in the order they were started."""
        rows = self.db.read(f"SELECT {_COLUMNS} FROM finals WHERE run_id = ? ORDER BY id", (run_id,))
        return [_final_row(r) for r in rows]

    def find(self, run_id: int, arch_key: str, mode: str, epochs: int) -> FinalRow | None:
        rows = self.db.read(f"SELECT {_COLUMNS} FROM finals WHERE run_id = ? AND arch_key = ? AND mode = ? AND epochs = ?",
                            (run_id, arch_key, mode, epochs))
        return _final_row(rows[0]) if rows else None

    def trained(self, run_id: int, arch: str, arch_key: str, source: str, mode: str, epochs: int,
                proxy_accuracy: float | None, test_accuracy: float, val_accuracy: float, train_s: float,
                weights_sha256: str) -> None:
        """Store a final whose training finished (replacing an earlier try of the same one)."""
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM finals WHERE run_id = ? AND arch_key = ? AND mode = ? AND epochs = ?",
                         (run_id, arch_key, mode, epochs))
            conn.execute(
                "INSERT INTO finals (run_id, arch, arch_key, source, mode, epochs, status, proxy_accuracy, "
                "test_accuracy, val_accuracy, train_s, weights_sha256, result_json, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'trained', ?, ?, ?, ?, ?, '{}', ?)",
                (run_id, arch, arch_key, source, mode, epochs, proxy_accuracy, test_accuracy, val_accuracy, train_s,
                 weights_sha256, now),
            )

    def finish(self, final_id: int, status: str, result: dict[str, Any], error: str | None = None) -> None:
        """Store a trained final's exports and latencies (`done`) or why they failed (`failed`)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE finals SET status = ?, result_json = ?, error = ?, finished_at = ? WHERE id = ?",
                         (status, json.dumps(result, sort_keys=True), error, time.time(), final_id))


def _final_row(r: Any) -> FinalRow:
    return FinalRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
                    json.loads(r[13] or "{}"), r[14], r[15], r[16])


@dataclass(frozen=True)
class Pick:
    """An architecture to finalize: where it came from and its proxy score, if any."""

    arch: Any  # ArchSpec
    source: str
    proxy_accuracy: float | None


def pick_finals(run: Any, candidates: list[Any], space: Any, config: FinalizeConfig) -> list[Pick]:
    """The run's top `config.top` distinct candidates (under the target first, then by reward),
    then the user's `config.archs` (decoded in the run's space; an ArchStringError names the
    bad token).

    Raises:
        FinalizeError: `--top` asked for candidates but the run has none finished.
    """
    done = [c for c in candidates if c.status == "done"]
    if config.top and not done:
        raise FinalizeError(f"run {run.id} has no finished candidate to finalize; continue it with "
                            f"`akd-mobile search --resume {run.id}`, or give --arch")
    target = run.config.get("target_ms")
    ranked = sorted(done, key=lambda c: (target is not None and c.latency_ms > target, -c.reward, c.id))
    picks: list[Pick] = []
    for c in ranked:
        if len(picks) == config.top:
            break
        if all(p.arch.key != c.arch_key for p in picks):
            picks.append(Pick(space.decode(c.arch), "top", c.accuracy))
    for text in config.archs:
        arch = space.decode(text)
        if all(p.arch.key != arch.key for p in picks):
            picks.append(Pick(arch, "user", None))
    return picks


@dataclass
class FinalizeProgress:
    """What finalize reports: the final it works on, its phase, and how many are finished."""

    index: int
    total: int
    arch_key: str
    phase: str
    epoch: int = 0
    epochs: int = 0
    val_accuracy: float | None = None


def finalize(
    run_id: int,
    config: FinalizeConfig,
    db: LatencyDB,
    on_progress: Callable[[FinalizeProgress], None] | None = None,
) -> list[FinalRow]:
    """Train, export and measure run `run_id`'s finals; resumable (the same call continues).

    Raises:
        FinalizeError: bad settings, a run still searching, a run with no finished candidate,
            or an output folder that holds another run's finals.
        SearchError: an unknown run; the run's teacher or data changed since it ran.
        AkdError: the device or the host failed (the finals done so far are kept).
    """
    import torch

    from akd_mobile.distill import TrainConfig, torch_device, torch_threads, train_student
    from akd_mobile.export import file_sha256
    from akd_mobile.runs import RunStore, lease_alive
    from akd_mobile.search import SearchConfig, check_inputs_unchanged, load_inputs, versions
    from devices.profiles import open_device

    config.validate()
    torch_device(config.torch_device)
    runs, store = RunStore(db), FinalStore(db)
    run = runs.get_run(run_id)
    if run.status == "running" and lease_alive(run.owner, run.lease_until):
        raise FinalizeError(f"run {run_id} is still searching ({run.owner}); finalize it when it stops")
    search = SearchConfig.from_stored(run.config)
    _claim_folder(config.out, run_id)
    device = open_device(search.device)
    info = device.info()
    inputs = load_inputs(search)
    check_inputs_unchanged(run_id, run.inputs, inputs.identity)
    picks = pick_finals(run, runs.candidates(run_id), inputs.space, config)
    train = TrainConfig(epochs=config.epochs)
    report = on_progress or (lambda progress: None)

    for index, pick in enumerate(picks):
        key = pick.arch.key
        row = store.find(run_id, key, search.reward, config.epochs)
        weights = config.out / f"{key}.pt"
        if row is None or not _weights_match(weights, row.weights_sha256):
            def on_epoch(epoch: int, acc: float, index: int = index, key: str = key) -> None:
                report(FinalizeProgress(index, len(picks), key, "training", epoch, config.epochs, acc))

            report(FinalizeProgress(index, len(picks), key, "training", 0, config.epochs))
            with torch_threads(config.threads):
                model, result = train_student(pick.arch, inputs.data, inputs.teacher_logits, train, search.reward,
                                              search.seed, config.torch_device, on_epoch)
            _atomic_write(weights, lambda tmp: torch.save(model.state_dict(), tmp))
            store.trained(run_id, pick.arch.canonical, key, pick.source, search.reward, config.epochs,
                          pick.proxy_accuracy, result.test_accuracy, result.val_accuracy, result.train_s,
                          file_sha256(weights))
            row = store.find(run_id, key, search.reward, config.epochs)
        if row.status != "done":
            report(FinalizeProgress(index, len(picks), key, "exporting and measuring"))
            status, outcome, error = _export_and_measure(pick.arch, weights, device, db, search, config.out)
            store.finish(row.id, status, outcome, error)
        write_manifest(config.out, run, store.finals(run_id), info.to_dict(), versions(), inputs.identity)
    return store.finals(run_id)


def _export_and_measure(arch: Any, weights: Path, device: Any, db: Any, search: Any,
                        out: Path) -> tuple[str, dict[str, Any], str | None]:
    """Per format: the trained model exported beside the weights and its latency; a failure of
    this model's own is returned as `failed`, the device's or the host's raised."""
    from akd_mobile.export import export_model, save_as
    from akd_mobile.latency import arch_latency

    outcome: dict[str, Any] = {}
    for fmt in FORMATS:
        try:
            exported = export_model(arch, fmt, weights=weights)
            path = save_as(exported, out / f"{arch.key}.{fmt}")
            lat = arch_latency(arch, device, db, fmt=fmt, threads=search.threads, warmup=search.warmup,
                               runs=search.runs, weights=weights, min_time_s=search.min_time_s or 0.0)
        except Exception as exc:  # noqa: BLE001 - a model that does not convert is this final's failure
            if stops_the_run(exc):
                raise
            return "failed", outcome, f"{fmt}: {type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
        r = lat.result
        outcome[fmt] = {"file": path.name, "sha256": exported.sha256, "size_bytes": exported.size_bytes,
                        "max_abs_diff": exported.max_abs_diff, "converter_version": exported.converter_version,
                        "median_ms": r.median_ms, "p90_ms": r.p90_ms, "min_ms": r.min_ms, "count": r.count,
                        "latency_cached": lat.cached, "runtime_version": lat.runtime_version}
    return "done", outcome, None


def write_manifest(out: Path, run: Any, finals: list[FinalRow], device: dict[str, Any], versions: dict[str, str],
                   inputs: dict[str, Any]) -> Path:
    """Write `out/manifest.json`: the run, its device, teacher, data, versions and every final."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "run_id": run.id,
        "reward": run.config["reward"],
        "target_ms": run.config.get("target_ms"),
        "device": {"profile": run.config["device"], "fingerprint": device.get("fingerprint"), "info": device},
        "measurement": {k: run.config.get(k) for k in ("threads", "warmup", "runs", "min_time_s")},
        "teacher": inputs.get("teacher"),
        "data": inputs.get("data"),
        "versions": versions,
        "finals": [
            {"arch": f.arch, "key": f.arch_key, "source": f.source, "mode": f.mode, "epochs": f.epochs,
             "status": f.status, "proxy_accuracy": f.proxy_accuracy, "test_accuracy": f.test_accuracy,
             "val_accuracy": f.val_accuracy, "weights": f"{f.arch_key}.pt", "weights_sha256": f.weights_sha256,
             "formats": f.result, "error": f.error}
            for f in finals
        ],
    }
    path = out / MANIFEST
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n"))
    return path


def _claim_folder(out: Path, run_id: int) -> None:
    """Create `out`, refusing a folder whose manifest belongs to another run."""
    path = out / MANIFEST
    if path.is_file():
        try:
            other = json.loads(path.read_text()).get("run_id")
        except (OSError, json.JSONDecodeError, AttributeError):
            other = None
        if other != run_id:
            raise FinalizeError(f"--out {out} holds {'finals of run ' + str(other) if other else 'another manifest'}; "
                                "choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FinalizeError(f"cannot create --out {out}: {exc.strerror}") from None


def _weights_match(path: Path, sha256: str | None) -> bool:
    from akd_mobile.export import file_sha256

    return sha256 is not None and path.is_file() and file_sha256(path) == sha256


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary file beside `path`, then rename: never half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
