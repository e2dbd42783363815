"""Teachers: built-in recipes, loading user models, ensembles, and cached teacher logits.

A teacher spec is one of:

- `default`: the built-in Fashion-MNIST teacher shipped in `akd_mobile/assets/`;
- a `torch.export` program (`.pt2`, from `torch.export.save`);
- a TorchScript file (`torch.jit.save`);
- a recipe checkpoint written by `akd-mobile teacher train` (`save_teacher`);
- several of these joined by `,`: an ensemble that averages their logits.

Files are told apart by their contents, not their names. Every teacher takes the
normalized float32 NCHW images of `akd_mobile.data` and returns (N, K) logits. A
teacher's hash is the SHA-256 of its file (of its members' hashes for an ensemble);
with the data set's fingerprint it keys the on-disk logits cache, so a search runs the
teacher once per data set and never again. A teacher must fit the data it teaches: one
logit per class of the data set (`evaluate_teacher`, `cached_logits`), and an accuracy on
the validation split clearly above chance (`check_teacher_fits`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import uuid
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from akd_mobile.data import Dataset
from akd_base.errors import TeacherError
from akd_base.files import default_cache_dir, file_sha256
from akd_mobile.malloc import retain_freed_memory

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "akd-mobile-teacher"
CHECKPOINT_VERSION = 1
ASSETS = Path(__file__).parent / "assets"
DEFAULT_TEACHER = ASSETS / "teacher-fashion-mnist.pt"
DEFAULT_TEACHER_INFO = ASSETS / "teacher-fashion-mnist.json"


# ---------------------------------------------------------------- recipes


def _conv_bn(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch)]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm, and a (projected) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(in_ch, out_ch, stride), nn.ReLU(), *_conv_bn(out_ch, out_ch))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNetTeacher(nn.Module):
    """A small CIFAR-style ResNet: 3x3 stem, three stages of basic blocks (strides 1, 2, 2)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, blocks: int = 1) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        layers: list[nn.Module] = [*_conv_bn(in_channels, width), nn.ReLU()]
        in_ch = width
        for stage, out_ch in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(in_ch, out_ch, 2 if stage > 0 and b == 0 else 1))
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class VGGTeacher(nn.Module):
    """A wide VGG-style net: pairs of 3x3 conv + BN + ReLU, max-pooled, then dropout and a linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        plan = (width, width, "pool", 2 * width, 2 * width, "pool", 4 * width, 4 * width, "pool")
        layers: list[nn.Module] = []
        in_ch = in_channels
        for item in plan:
            if item == "pool":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [*_conv_bn(in_ch, int(item)), nn.ReLU()]
                in_ch = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).amax((2, 3)))


@dataclass(frozen=True)
class Recipe:
    """A built-in teacher architecture and its default training settings.

    Attributes:
        name: recipe name (`--recipe`).
        family: architecture family, for reports.
        description: one line for `teacher list`.
        build: (in_channels, num_classes) -> untrained model.
        lr: default peak learning rate (SGD, Nesterov momentum, cosine schedule).
        weight_decay: default L2 weight decay.
        batch_size: default images per step.
    """

    name: str
    family: str
    description: str
    build: Callable[[int, int], nn.Module]
    lr: float = 0.1
    weight_decay: float = 5e-4
    batch_size: int = 128


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "resnet",
            "resnet",
            "ResNet-8: 3x3 stem, basic blocks of 32/64/128 channels (0.3M parameters)",
            lambda c, k: ResNetTeacher(c, k, width=32, blocks=1),
        ),
        Recipe(
            "resnet-wide",
            "resnet",
            "ResNet-14: basic blocks of 48/96/192 channels, two per stage (1.6M parameters)",
            lambda c, k: ResNetTeacher(c, k, width=48, blocks=2),
        ),
        Recipe(
            "vgg",
            "vgg",
            "wide VGG-style: conv pairs of 64/128/256 channels with max pooling (1.1M parameters)",
            lambda c, k: VGGTeacher(c, k, width=64),
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The built-in recipe `name`."""
    if name not in RECIPES:
        raise TeacherError(f"unknown teacher recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


@dataclass(frozen=True)
class TeacherTrainResult:
    """A trained recipe teacher.

    Attributes:
        recipe: recipe name.
        dataset: data set name.
        dataset_fingerprint: fingerprint of the data set it was trained on.
        epochs: epochs trained.
        test_accuracy: top-1 accuracy on the test split, in [0, 1].
        val_accuracy: top-1 accuracy on the validation split.
        params: trainable parameters.
        train_s: training wall time, seconds.
        images_per_s: training throughput, images per second.
    """

    recipe: str
    dataset: str
    dataset_fingerprint: str
    epochs: int
    test_accuracy: float
    val_accuracy: float
    params: int
    train_s: float
    images_per_s: float


def train_teacher(
    recipe: str,
    data: Dataset,
    epochs: int,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
    augment: str = "auto",
) -> tuple[nn.Module, TeacherTrainResult]:
    """Train the recipe `recipe` on `data` with labels (cosine schedule) and test it.

    Args:
        recipe: recipe name (see `RECIPES`).
        data: the data set; trains on `train_x`, reports test accuracy.
        epochs: passes over the training split.
        lr: peak learning rate (default: the recipe's).
        batch_size: images per step (default: the recipe's).
        seed: seeds initial weights and batch order.
        device: torch device name.
        on_epoch: called with (epoch, validation accuracy) after each epoch.
        augment: the training's augmentation (`akd_mobile.augment`).

    Returns:
        The trained model (CPU, eval mode) and its result.
    """
    from akd_mobile.distill import TrainConfig, fit

    spec = get_recipe(recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(data.input_shape[0], data.num_classes)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size or spec.batch_size,
        lr=spec.lr if lr is None else lr,
        weight_decay=spec.weight_decay,
        schedule="cosine",
        augment=augment,
    )
    result = fit(model, data, None, config, seed=seed, device=device, on_epoch=on_epoch)
    return model, TeacherTrainResult(
        recipe=recipe,
        dataset=data.name,
        dataset_fingerprint=data.fingerprint,
        epochs=epochs,
        test_accuracy=result.test_accuracy,
        val_accuracy=result.val_accuracy,
        params=result.params,
        train_s=result.train_s,
        images_per_s=result.images_per_s,
    )


def save_teacher(model: nn.Module, result: TeacherTrainResult, data: Dataset, path: Path) -> None:
    """Write a recipe checkpoint that `load_teacher` reads (tensors and plain values only)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "recipe": result.recipe,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
        "result": dataclasses.asdict(result),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(payload, path)


# ---------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class Teacher:
    """A frozen model, or an ensemble whose logits are averaged.

    Attributes:
        spec: the spec it was loaded from.
        hash: SHA-256 (hex, 16 digits) of the teacher's file(s); keys the logits cache.
        models: the member models, each mapping a batch of images to (N, K) logits.
        input_shape: (C, H, W) the members were trained on, when known.
        num_classes: classes, when known.
        trained_on: name of the data set the members were trained on, when known.
    """

    spec: str
    hash: str
    models: tuple[Callable[[torch.Tensor], torch.Tensor], ...]
    input_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    trained_on: str | None = None

    def logits(self, x: torch.Tensor, batch_size: int = 250, device: str = "cpu") -> torch.Tensor:
        """Teacher logits for images `x` (N, C, H, W), averaged over the members, on the CPU.

        Freed memory stays in the process meanwhile (`retain_freed_memory`), as in training.

        Raises:
            TeacherError: a member fails on the images or returns the wrong shape.
        """
        from akd_mobile.distill import torch_device

        dev = torch_device(device)  # `auto` too
        if dev.type != "cpu":
            for model in self.models:
                if isinstance(model, nn.Module):
                    model.to(dev)
        chunks = []
        with torch.no_grad(), retain_freed_memory():
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(dev)
                outs = [self._run(model, xb) for model in self.models]
                if len({out.shape for out in outs}) > 1:
                    raise TeacherError(f"ensemble {self.spec} members disagree on the class count")
                chunks.append(torch.stack(outs).mean(0).float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.num_classes or 0)

    def _run(self, model: Callable[[torch.Tensor], torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        try:
            out = model(xb)
        except Exception as exc:  # third-party programs raise anything on a bad input
            raise TeacherError(
                f"teacher {self.spec} failed on images of shape {tuple(xb.shape)}: {_first_line(exc)}; "
                "it must take normalized float32 NCHW images of the data set"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != xb.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TeacherError(
                f"teacher {self.spec} returned {shape} for {xb.shape[0]} images; it must return (N, classes) logits"
            )
        return out


def absolute_teacher_spec(spec: str) -> str:
    """`spec` with each existing member file's path made absolute (a resume from another
    folder finds it); `default` stays a name."""
    def member(part: str) -> str:
        path = Path(part).expanduser()
        return part if part == "default" or not path.exists() else str(path.resolve())

    return ",".join(member(p.strip()) for p in spec.split(","))


def load_teacher(spec: str) -> Teacher:
    """Load a teacher from a spec: `default`, a `.pt2`, TorchScript or recipe checkpoint file, or `a,b,...`.

    Raises:
        TeacherError: a missing, unreadable or corrupt file, or ensemble members that disagree.
    """
    parts = [p.strip() for p in spec.split(",")]
    if not all(parts):
        raise TeacherError(f"teacher spec {spec!r} has an empty member; join teachers with ',' like a.pt2,b.pt2")
    members = [_load_one(p) for p in parts]
    if len(members) == 1:
        return members[0]
    shapes = {m.input_shape for m in members if m.input_shape is not None}
    classes = {m.num_classes for m in members if m.num_classes is not None}
    sources = {m.trained_on for m in members}
    if len(shapes) > 1 or len(classes) > 1:
        raise TeacherError(f"ensemble {spec!r} mixes teachers of input shapes {shapes} and class counts {classes}")
    digest = hashlib.sha256("ensemble:".encode() + ",".join(sorted(m.hash for m in members)).encode())
    return Teacher(
        spec=spec,
        hash=digest.hexdigest()[:16],
        models=tuple(model for m in members for model in m.models),
        input_shape=next(iter(shapes), None),
        num_classes=next(iter(classes), None),
        trained_on=sources.pop() if len(sources) == 1 else None,
    )


def _load_one(spec: str) -> Teacher:
    if spec == "default":
        if not DEFAULT_TEACHER.is_file():
            raise TeacherError(f"the built-in teacher {DEFAULT_TEACHER} is missing; reinstall akd-mobile")
        return _load_checkpoint(DEFAULT_TEACHER, "default")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TeacherError(
            f"teacher {spec!r} is not 'default' and no such file; pass a .pt2, TorchScript or checkpoint file"
        )
    kind = _file_kind(path)
    if kind == "export":
        return _load_export(path, spec)
    if kind == "torchscript":
        return _load_torchscript(path, spec)
    return _load_checkpoint(path, spec)


def _file_kind(path: Path) -> str:
    """`export`, `torchscript` or `checkpoint`, from the zip archive's entries."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise TeacherError(
            f"teacher {path} is not a torch.export program, TorchScript file or teacher checkpoint ({exc})"
        ) from None
    entries = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in entries or any(e.startswith("models/") for e in entries):
        return "export"
    if any(e.startswith("code/") for e in entries):
        return "torchscript"
    if "data.pkl" in entries:
        return "checkpoint"
    raise TeacherError(f"teacher {path} is a zip archive but not a torch.export, TorchScript or checkpoint file")


def _file_hash(path: Path) -> str:
    return file_sha256(path)[:16]


def _load_export(path: Path, spec: str) -> Teacher:
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as exc:  # the deserializer raises many types on a corrupt archive
        raise TeacherError(f"cannot load torch.export program {path}: {_first_line(exc)}") from None
    model: Callable[[torch.Tensor], torch.Tensor] = module
    batch = _static_batch(program)
    if batch is not None:
        model = _FixedBatch(module, batch)
    return Teacher(spec, _file_hash(path), (model,))


def _static_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size a program was exported with, when its batch dimension is static."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            value = node.meta.get("val")
            if value is not None and value.ndim > 0 and isinstance(value.shape[0], int):
                return int(value.shape[0])
            return None
    return None


class _FixedBatch:
    """Runs a program exported with a static batch size on any batch, padding the last chunk."""

    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], batch: int) -> None:
        self.module, self.batch = module, batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, len(x), self.batch):
            chunk = x[start : start + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
            outs.append(self.module(chunk)[:n])
        return torch.cat(outs)


def _load_torchscript(path: Path, spec: str) -> Teacher:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still supported
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # TorchScript raises RuntimeError and friends on a corrupt file
        raise TeacherError(f"cannot load TorchScript teacher {path}: {_first_line(exc)}") from None
    return Teacher(spec, _file_hash(path), (module.eval(),))


def _load_checkpoint(path: Path, spec: str) -> Teacher:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling a corrupt file raises many types
        raise TeacherError(f"cannot load teacher checkpoint {path}: {_first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TeacherError(
            f"{path} is a torch file but not a teacher checkpoint written by `akd-mobile teacher train`; "
            "export a model with torch.export.save or torch.jit.save instead"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise TeacherError(
            f"{path} is teacher checkpoint version {payload.get('version')}; this akd-mobile reads {CHECKPOINT_VERSION}"
        )
    try:
        shape = tuple(int(v) for v in payload["input_shape"])
        classes = int(payload["num_classes"])
        trained_on = payload.get("result", {}).get("dataset")
        model = get_recipe(payload["recipe"]).build(shape[0], classes)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise TeacherError(f"teacher checkpoint {path} is damaged: {_first_line(exc)}") from None
    model.eval().to(memory_format=torch.channels_last)
    return Teacher(spec, _file_hash(path), (_ChannelsLast(model),), shape, classes, trained_on)  # type: ignore[arg-type]


class _ChannelsLast(nn.Module):
    """Feeds a channels-last model channels-last inputs (oneDNN's fast path on CPU)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def teacher_info(path: Path = DEFAULT_TEACHER_INFO) -> dict:
    """The recipe, accuracy and training command recorded next to the built-in teacher."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TeacherError(f"cannot read teacher record {path}: {exc}") from None


def evaluate_teacher(teacher: Teacher, data: Dataset, split: str = "test", device: str = "cpu") -> float:
    """Top-1 accuracy of `teacher` on a split (`train`, `val` or `test`) of `data`.

    Raises:
        TeacherError: an unknown split, or a teacher for other images or another class count.
    """
    if split not in ("train", "val", "test"):
        raise TeacherError(f"unknown split {split!r}; use train, val or test")
    x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
    return int((_data_logits(teacher, data, x, device).argmax(1) == y).sum()) / max(1, len(y))


# A teacher "near chance" is refused: it must close at least this share of the gap from
# chance to perfect accuracy on the validation split.
FIT_MARGIN = 0.1


def check_teacher_fits(
    teacher: Teacher, dataset: Dataset, device: str = "cpu", cache_dir: Path | None = None
) -> float:
    """Refuse a teacher near chance on `dataset`; return its validation accuracy.

    Chance is the share of the commonest class in the validation split (what always
    guessing that class scores: 1/K on balanced data, more on skewed data). The teacher
    needs `chance + FIT_MARGIN * (1 - chance)`: 0.19 for 10 balanced classes, 0.1009 for
    1000. That refuses only teachers that barely beat guessing, such as one trained on
    another data set (the built-in Fashion-MNIST teacher scores about 0.13 on digits),
    while a teacher trained even briefly on the data clears it (one epoch on digits:
    above 0.3). The accuracy is cached on disk by teacher hash and data set fingerprint,
    next to the logits cache, so a repeated run does not evaluate again.

    Args:
        teacher: the teacher (or ensemble).
        dataset: the data set; the teacher is scored on `val_x`, `val_y`.
        device: torch device for the teacher's forward passes on a miss.
        cache_dir: cache root (default: `default_cache_dir()`); entries go in `fit/`.

    Returns:
        The teacher's top-1 accuracy on the validation split, in [0, 1].

    Raises:
        TeacherError: a teacher for other images or another class count, or near chance.
    """
    path = (cache_dir or default_cache_dir()) / "fit" / f"{teacher.hash}-{dataset.fingerprint}.pt"
    accuracy = _cached_accuracy(path, teacher, dataset)
    if accuracy is None:
        accuracy = evaluate_teacher(teacher, dataset, "val", device)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save({"teacher": teacher.hash, "dataset": dataset.fingerprint, "val_accuracy": accuracy}, path)
    chance = int(dataset.val_y.bincount().max()) / len(dataset.val_y)
    needed = chance + FIT_MARGIN * (1.0 - chance)
    if accuracy < needed:
        source = f" (trained on {teacher.trained_on})" if teacher.trained_on else ""
        raise TeacherError(
            f"teacher {teacher.spec}{source} scores {accuracy:.4f} on the {dataset.name} validation split, "
            f"near chance (guessing the commonest class scores {chance:.4f}; a teacher needs {needed:.4f}): "
            f"train one on this data with `akd-mobile teacher train --recipe resnet --data {dataset.name} "
            "--epochs 10 --out t.pt` and pass `--teacher t.pt`, "
            "or train without a teacher (search `--reward ce`, distill `--mode ce`)"
        )
    return accuracy


def _cached_accuracy(path: Path, teacher: Teacher, dataset: Dataset) -> float | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if (entry.get("teacher"), entry.get("dataset")) == (teacher.hash, dataset.fingerprint):
            return float(entry["val_accuracy"])
    except Exception as exc:  # a damaged cache entry is recomputed, never fatal
        log.warning("re-evaluating damaged teacher fit cache entry %s: %s", path, _first_line(exc))
    return None


# ---------------------------------------------------------------- cached logits


def cached_logits(
    teacher: Teacher, dataset: Dataset, cache_dir: Path | None = None, device: str = "cpu"
) -> torch.Tensor:
    """Teacher logits over `dataset.train_x`, computed once and then read from disk.

    The entry is keyed by the teacher's hash and the data set's fingerprint (source,
    preprocessing and split), so a changed teacher or data set computes a new one.

    Args:
        teacher: the teacher (or ensemble).
        dataset: the data set; logits cover its proxy training split, in order.
        cache_dir: cache root (default: `default_cache_dir()`); entries go in `logits/`.
        device: torch device for the teacher's forward passes on a miss.

    Returns:
        float32 (len(dataset.train_x), num_classes) logits on the CPU.
    """
    path = (cache_dir or default_cache_dir()) / "logits" / f"{teacher.hash}-{dataset.fingerprint}.pt"
    want = (len(dataset.train_y), dataset.num_classes)
    if path.is_file():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            logits = entry["logits"]
            same = (entry.get("teacher"), entry.get("dataset")) == (teacher.hash, dataset.fingerprint)
            if same and tuple(logits.shape) == want:
                log.debug("teacher logits cache hit: %s", path)
                return logits
        except Exception as exc:  # a damaged cache entry is recomputed, never fatal
            log.warning("recomputing damaged teacher logits cache entry %s: %s", path, _first_line(exc))
    log.info("computing teacher logits of %s over %d images", teacher.spec, want[0])
    logits = _data_logits(teacher, dataset, dataset.train_x, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"teacher": teacher.hash, "dataset": dataset.fingerprint, "logits": logits}, path)
    return logits


def _data_logits(teacher: Teacher, data: Dataset, x: torch.Tensor, device: str) -> torch.Tensor:
    """The teacher's logits for images `x` of `data`, refused unless one logit per class of `data`."""
    _check_data(teacher, data)
    logits = teacher.logits(x, device=device)
    if len(logits) and logits.shape[1] != data.num_classes:
        raise TeacherError(
            f"teacher {teacher.spec} gives {logits.shape[1]} class logits but {data.name} has "
            f"{data.num_classes} classes; pass a teacher trained on {data.name}"
        )
    return logits


def _check_data(teacher: Teacher, data: Dataset) -> None:
    if teacher.input_shape is not None and tuple(teacher.input_shape) != tuple(data.input_shape):
        raise TeacherError(
            f"teacher {teacher.spec} takes {'x'.join(map(str, teacher.input_shape))} images but "
            f"{data.name} has {'x'.join(map(str, data.input_shape))}"
        )
    if teacher.num_classes is not None and teacher.num_classes != data.num_classes:
        raise TeacherError(
            f"teacher {teacher.spec} has {teacher.num_classes} classes but {data.name} has {data.num_classes}"
        )


def _atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
