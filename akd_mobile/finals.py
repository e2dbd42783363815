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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from akd_base.errors import AkdError, FinalizeError, HostError, error_line, stops_the_run
from akd_base.formats import FORMATS
from akd_base.files import atomic_write
from akd_base.measurement import MeasureSettings
from akd_mobile.runs import best_first

if TYPE_CHECKING:
    from latency_db.store import LatencyDB

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
        mode: `kd` or `ce`; None trains as the run searched (a `ce` run's finals with `kd`
            are the paper's NAS+KD baseline).
        teacher: the teacher of `kd` finals; None takes the run's.
        torch_device: where torch trains (`cpu`, `cuda`, `auto`).
        threads: torch CPU threads (None: torch's default).
        augment: the full training's augmentation (`akd_mobile.augment`).
    """

    out: Path
    top: int = 3
    archs: tuple[str, ...] = ()
    epochs: int = 10
    mode: str | None = None
    teacher: str | None = None
    torch_device: str = "cpu"
    threads: int | None = None
    augment: str = "auto"

    def validate(self) -> None:
        """Raise FinalizeError for values no finalize can run with."""
        if self.top < 0:
            raise FinalizeError(f"--top must be 0 or more, got {self.top}")
        if self.epochs < 1:
            raise FinalizeError(f"--epochs must be at least 1, got {self.epochs}")
        if self.top == 0 and not self.archs:
            raise FinalizeError("nothing to finalize: give --top 1 or more, or --arch")
        if self.mode not in (None, "kd", "ce"):
            raise FinalizeError(f"--mode must be kd or ce, got {self.mode!r}")
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
    out_dir: str | None

    @property
    def stem(self) -> str:
        """The name its files share: `<key>-<mode>-e<epochs>` (.pt, .tflite, .pte)."""
        return final_stem(self.arch_key, self.mode, self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def final_stem(arch_key: str, mode: str, epochs: int) -> str:
    """The file name stem of a final: one per architecture, training mode and epochs."""
    return f"{arch_key}-{mode}-e{epochs}"


_COLUMNS = ("id, run_id, arch, arch_key, source, mode, epochs, status, proxy_accuracy, test_accuracy, val_accuracy, "
            "train_s, weights_sha256, result_json, error, created_at, finished_at, out_dir")


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
                weights_sha256: str, out_dir: Path) -> None:
        """Store a final whose training finished (replacing an earlier try of the same one)."""
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM finals WHERE run_id = ? AND arch_key = ? AND mode = ? AND epochs = ?",
                         (run_id, arch_key, mode, epochs))
            conn.execute(
                "INSERT INTO finals (run_id, arch, arch_key, source, mode, epochs, status, proxy_accuracy, "
                "test_accuracy, val_accuracy, train_s, weights_sha256, result_json, created_at, out_dir) "
                "VALUES (?, ?, ?, ?, ?, ?, 'trained', ?, ?, ?, ?, ?, '{}', ?, ?)",
                (run_id, arch, arch_key, source, mode, epochs, proxy_accuracy, test_accuracy, val_accuracy, train_s,
                 weights_sha256, now, str(Path(out_dir).resolve())),
            )

    def finish(self, final_id: int, status: str, result: dict[str, Any], out_dir: Path, error: str | None = None) -> None:
        """Store a trained final's exports and latencies (`done`) or why they failed (`failed`),
        written to `out_dir`."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE finals SET status = ?, result_json = ?, error = ?, finished_at = ?, out_dir = ? "
                         "WHERE id = ?", (status, json.dumps(result, sort_keys=True), error, time.time(),
                                          str(Path(out_dir).resolve()), final_id))


def _final_row(r: Any) -> FinalRow:
    return FinalRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
                    json.loads(r[13] or "{}"), r[14], r[15], r[16], r[17])


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
    ranked = best_first(candidates, run.config.get("target_ms"))
    if config.top and not ranked:
        raise FinalizeError(f"run {run.id} has no finished candidate to finalize; continue it with "
                            f"`akd-mobile search --resume {run.id}`, or give --arch")
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
    """Train, export and measure run `run_id`'s finals; resumable (the same call continues,
    and a final trained for another `--out` has its weights copied, not trained again).

    Returns:
        The finals of this call, in the order picked (the manifest lists the same).

    Raises:
        FinalizeError: bad settings, a run still searching, a run with no finished candidate,
            or an output folder that holds another run's finals.
        SearchError: an unknown run; the run's teacher or data changed since it ran.
        HostError, DeviceUnavailable, DatabaseError: the host or the device failed; the finals
            finished so far are kept.
    """
    from akd_mobile.distill import torch_device
    from akd_mobile.runs import RunStore, lease_alive
    from akd_mobile.search import SearchConfig, check_inputs_unchanged, load_inputs, versions
    from akd_mobile.teachers import absolute_teacher_spec
    from devices.profiles import open_device

    config.validate()
    torch_device(config.torch_device)
    runs = RunStore(db)
    run = runs.get_run(run_id)
    if lease_alive(run.owner, run.lease_until):
        raise FinalizeError(f"run {run_id} is still searching ({run.owner}); finalize it when it stops")
    search = SearchConfig.from_stored(run.config)
    _claim_folder(config.out, run_id)
    device = open_device(search.device)
    info = device.info()
    mode = config.mode or search.reward
    teacher = absolute_teacher_spec(config.teacher) if config.teacher else search.teacher
    inputs = load_inputs(dataclasses.replace(search, reward=mode, teacher=teacher))
    same = inputs.identity if config.teacher is None else {"data": inputs.identity["data"]}
    check_inputs_unchanged(run_id, run.inputs, same)
    picks = pick_finals(run, runs.candidates(run_id), inputs.space, config)
    finals: list[FinalRow] = []
    try:
        for index in range(len(picks)):
            finals.append(_finalize_one(index, picks, run_id, mode, config, search, inputs, device, db, on_progress))
            write_manifest(config.out, run, finals, info.to_dict(), versions(), inputs.identity)
    except Exception as exc:
        if isinstance(exc, AkdError) or not stops_the_run(exc):
            raise
        raise HostError(f"finalize of run {run_id} stopped: {error_line(exc)}; the finals done so far are kept, "
                        "the same command continues") from exc
    return finals


def _finalize_one(index: int, picks: list[Pick], run_id: int, mode: str, config: FinalizeConfig, search: Any,
                  inputs: Any, device: Any, db: LatencyDB,
                  on_progress: Callable[[FinalizeProgress], None] | None) -> FinalRow:
    """Pick `index` trained in `mode` (or its weights found), then exported and measured, as stored."""
    import torch

    from akd_mobile.distill import TrainConfig, torch_threads, train_student
    from akd_base.files import file_sha256

    store, pick = FinalStore(db), picks[index]
    report = on_progress or (lambda progress: None)
    key, epochs = pick.arch.key, config.epochs
    weights = config.out / f"{final_stem(key, mode, epochs)}.pt"
    row = store.find(run_id, key, mode, epochs)
    if row is not None and not _weights_match(weights, row.weights_sha256):
        elsewhere = Path(row.out_dir or "") / weights.name
        if row.out_dir and _weights_match(elsewhere, row.weights_sha256):
            atomic_write(weights, lambda tmp: shutil.copyfile(elsewhere, tmp))  # trained for another --out
        else:
            row = None  # its weights are gone: train again
    if row is None:
        def on_epoch(epoch: int, acc: float) -> None:
            report(FinalizeProgress(index, len(picks), key, "training", epoch, epochs, acc))

        report(FinalizeProgress(index, len(picks), key, "training", 0, epochs))
        with torch_threads(config.threads):
            model, result = train_student(pick.arch, inputs.data, inputs.teacher_logits, TrainConfig(epochs=epochs, augment=config.augment),
                                          mode, search.seed, config.torch_device, on_epoch)
        atomic_write(weights, lambda tmp: torch.save(model.state_dict(), tmp))
        store.trained(run_id, pick.arch.canonical, key, pick.source, mode, epochs, pick.proxy_accuracy,
                      result.test_accuracy, result.val_accuracy, result.train_s, file_sha256(weights), config.out)
        row = store.find(run_id, key, mode, epochs)
    files_here = row.out_dir == str(config.out.resolve()) and all(
        (config.out / r["file"]).is_file() for r in row.result.values())
    if row.status != "done" or not files_here:
        report(FinalizeProgress(index, len(picks), key, "exporting and measuring"))
        status, outcome, error = _export_and_measure(pick.arch, weights, device, db, search.measure)
        store.finish(row.id, status, outcome, config.out, error)
        row = store.find(run_id, key, mode, epochs)
    return row


def _export_and_measure(arch: Any, weights: Path, device: Any, db: Any,
                        measure: MeasureSettings) -> tuple[str, dict[str, Any], str | None]:
    """Per format: the trained model exported beside its weights, and its latency; a failure of
    this model's own is returned as `failed`, the device's or the host's raised."""
    from akd_mobile.export import export_model, save_as
    from akd_mobile.latency import LatencyService

    outcome: dict[str, Any] = {}
    for fmt in FORMATS:
        try:
            exported = export_model(arch, fmt, weights=weights)
            path = save_as(exported, weights.with_suffix(f".{fmt}"))
            lat = LatencyService(device, db, dataclasses.replace(measure, fmt=fmt)).latency(arch, weights)
        except Exception as exc:  # noqa: BLE001 - a model that does not convert is this final's failure
            if stops_the_run(exc):
                raise
            return "failed", outcome, f"{fmt}: {error_line(exc)}"
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
             "val_accuracy": f.val_accuracy, "weights": f"{f.stem}.pt", "weights_sha256": f.weights_sha256,
             "formats": f.result, "error": f.error}
            for f in finals
        ],
    }
    path = out / MANIFEST
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n"))
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
    from akd_base.files import file_sha256

    return sha256 is not None and path.is_file() and file_sha256(path) == sha256
