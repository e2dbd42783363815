"""Knowledge distillation: the Hinton KD loss, the short proxy training that scores a
sampled student (AKD's KD-guided reward), and full training of a chosen network.

The teacher never runs here: KD reads teacher logits computed once over the proxy
training split (`akd_mobile.teachers.cached_logits`), indexed by the same batch indices
as the images, so a KD step costs the same as a cross-entropy step plus a softmax over
the classes. Mode `ce` trains on labels only: conventional NAS, the paper's baseline.

Each step gathers one batch by index, from an in-memory tensor or from an image cache on
disk (`image_cache.CachedImages`), with no per-sample Python work; full training augments
the batch (`augment`), the proxy does not. Models and inputs use the channels-last memory
layout, which
oneDNN's CPU convolutions run several times faster than NCHW.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from akd_mobile.augment import Augmentation, check_setting
from akd_mobile.data import Dataset, Images
from akd_base.errors import DeviceError, DistillError
from akd_mobile.malloc import retain_freed_memory
from akd_mobile.shards import ShardedSteps, ShardLoss, plan_shards
from akd_mobile.space import ArchSpec

log = logging.getLogger(__name__)

MODES = ("kd", "ce")
SCHEDULES = ("cosine", "step")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton's distillation loss, averaged over the batch.

    `alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)`.
    The T^2 factor keeps the soft term's gradients on the scale of the hard term's.

    Args:
        student_logits: (N, K) student outputs.
        teacher_logits: (N, K) teacher outputs for the same images.
        labels: (N,) int64 class indices.
        temperature: softmax temperature T > 0.
        alpha: weight of the soft (teacher) term, in [0, 1]; 0 is plain cross-entropy.

    Returns:
        The scalar loss.
    """
    if temperature <= 0:
        raise DistillError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise DistillError(f"alpha must be between 0 and 1, got {alpha}")
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


@dataclass(frozen=True)
class ProxyBudget:
    """The fixed, short training that scores one sampled student.

    Attributes:
        steps: optimizer steps (used unless `epochs` is set); the default 80 x 125 = 10,000 images.
        epochs: passes over the proxy training split instead of `steps` (may be fractional).
        batch_size: images per step.
        lr: peak learning rate of SGD with Nesterov momentum (short warm-up, then cosine decay to 0).
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        temperature: KD softmax temperature (1 scored best on an 80-step budget; see docs/distill.md).
        alpha: weight of the KD term (1 - alpha on the labels).
        eval_images: validation images scored (None: the whole held-out split).
        bn_images: training images whose statistics replace the batch norm running
            averages before scoring (0: keep the running averages, which lag badly after
            fewer than about 60 steps).
    """

    steps: int = 80
    epochs: float | None = None
    batch_size: int = 125
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-5
    temperature: float = 1.0
    alpha: float = 0.9
    eval_images: int | None = 2500
    bn_images: int = 500

    def __post_init__(self) -> None:
        _check_settings(self.batch_size, self.lr, self.temperature, self.alpha)
        if self.steps < 1 or (self.epochs is not None and self.epochs <= 0):
            raise DistillError(f"a proxy budget needs steps >= 1 (or epochs > 0), got {self.steps} / {self.epochs}")
        if (self.eval_images is not None and self.eval_images < 1) or self.bn_images < 0:
            raise DistillError("eval_images must be at least 1 (or None for all) and bn_images at least 0")

    def override(self, **values: Any) -> ProxyBudget:
        """A copy with the given settings that are not None (DistillError for bad ones)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def fitted(self, train_images: int) -> ProxyBudget:
        """This budget for a training split of `train_images` images: a batch larger than the
        split takes the whole split at every step."""
        return dataclasses.replace(self, batch_size=min(self.batch_size, train_images))

    def num_steps(self, train_images: int) -> int:
        """Optimizer steps this budget takes on a split of `train_images` images."""
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * train_images / self.batch_size))
        return self.steps


@dataclass(frozen=True)
class ProxyResult:
    """The score of one proxy training.

    Attributes:
        accuracy: top-1 accuracy on the held-out validation images, in [0, 1].
        train_s: wall time of the training steps, seconds.
        eval_s: wall time of batch norm recalibration and the validation pass, seconds.
        steps: optimizer steps taken.
        images_per_s: training throughput, images per second.
        train_images: images seen in training (steps x batch size).
        val_images: validation images scored.
        final_loss: training loss of the last step.
    """

    accuracy: float
    train_s: float
    eval_s: float
    steps: int
    images_per_s: float
    train_images: int
    val_images: int
    final_loss: float


@dataclass(frozen=True)
class TrainConfig:
    """A full training run.

    Attributes:
        epochs: passes over the proxy training split.
        batch_size: images per step.
        lr: peak learning rate of SGD with Nesterov momentum.
        schedule: `cosine` (warm-up, then cosine decay to 0) or `step` (warm-up, then x0.1
            at 50% and 75% of the steps).
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        temperature: KD softmax temperature.
        alpha: weight of the KD term.
        augment: `auto` (random crop, and flip where the data allow it), `none`, `crop`,
            `flip` or `crop+flip` (see `akd_mobile.augment`).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.9
    augment: str = "auto"

    def __post_init__(self) -> None:
        _check_settings(self.batch_size, self.lr, self.temperature, self.alpha)
        check_setting(self.augment)
        if self.epochs < 1:
            raise DistillError(f"training needs at least one epoch, got {self.epochs}")
        if self.schedule not in SCHEDULES:
            raise DistillError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")


def _check_settings(batch_size: int, lr: float, temperature: float, alpha: float) -> None:
    if batch_size < 1 or not lr > 0:
        raise DistillError(f"batch size must be at least 1 and lr positive, got {batch_size} and {lr}")
    if not temperature > 0 or not 0.0 <= alpha <= 1.0:
        raise DistillError(f"KD needs temperature > 0 and alpha in [0, 1], got T={temperature}, alpha={alpha}")


@dataclass(frozen=True)
class TrainResult:
    """What a full training run reached.

    Attributes:
        test_accuracy: top-1 accuracy on the test split, in [0, 1].
        val_accuracy: top-1 accuracy on the validation split after the last epoch.
        val_history: validation accuracy after each epoch.
        epochs: epochs trained.
        steps: optimizer steps taken.
        train_s: wall time of training (validation passes excluded), seconds.
        images_per_s: training throughput, images per second.
        params: trainable parameters of the model.
        mode: `kd` or `ce`.
    """

    test_accuracy: float
    val_accuracy: float
    val_history: tuple[float, ...]
    epochs: int
    steps: int
    train_s: float
    images_per_s: float
    params: int
    mode: str


def torch_device(name: str) -> torch.device:
    """Resolve `--torch-device`: `cpu`, `cuda`, `cuda:N`, or `auto` (cuda when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown torch device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"torch device {name!r} asked for but CUDA is not available here; use --torch-device cpu")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"torch device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op threads (None: leave torch's setting)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise DistillError(f"threads must be at least 1, got {threads}")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def proxy_score(
    arch: ArchSpec,
    data: Dataset,
    teacher_logits: torch.Tensor | None,
    budget: ProxyBudget = ProxyBudget(),
    mode: str = "kd",
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
) -> ProxyResult:
    """Score a student: build it, train it for the budget, return held-out accuracy and timings.

    After training, the batch norm statistics are recomputed over `budget.bn_images`
    training images and folded into the convolutions for the validation pass.

    Args:
        arch: the student; its input shape and class count must match the data set.
        data: the data set; trains on `train_x`, scores on `val_x`, never reads the test split.
        teacher_logits: (len(data.train_x), K) teacher logits over the proxy training split
            (from `cached_logits`); ignored in `ce` mode.
        budget: the proxy training budget.
        mode: `kd` (distil from the teacher) or `ce` (labels only, conventional NAS).
        seed: seeds the student's initial weights and the batch order; same seed, same result.
        device: torch device name.
        threads: torch intra-op threads for the call (None: leave torch's setting).

    Returns:
        Validation accuracy and timings.
    """
    _check_fit(arch, data)
    _check_teacher(data, teacher_logits, mode)
    dev = torch_device(device)
    from akd_mobile.builder import build_student

    budget = budget.fitted(len(data.train_y))
    steps = budget.num_steps(len(data.train_y))
    n_val = len(data.val_y) if budget.eval_images is None else min(budget.eval_images, len(data.val_y))
    # freed memory kept in the process: no page faults for each batch's activations
    with torch_threads(threads), retain_freed_memory():
        model = build_student(arch, seed=seed)
        optimizer = _ready(model, dev, budget.momentum, budget.weight_decay)
        train_s, loss = _train_steps(
            model,
            optimizer,
            *_on_device(data, teacher_logits if mode == "kd" else None, budget.batch_size, dev),
            steps=steps,
            batch_size=budget.batch_size,
            lr_at=_cosine(budget.lr, steps),
            temperature=budget.temperature,
            alpha=budget.alpha,
            seed=seed,
        )
        start = time.perf_counter()
        _recalibrate_batch_norm(model, data.train_x[: budget.bn_images], dev)
        accuracy = evaluate(_fold_batch_norm(model), data.val_x[:n_val], data.val_y[:n_val], dev)
        eval_s = time.perf_counter() - start
    images = steps * budget.batch_size
    return ProxyResult(accuracy, train_s, eval_s, steps, images / train_s, images, n_val, loss)


def train_student(
    arch: ArchSpec,
    data: Dataset,
    teacher_logits: torch.Tensor | None,
    config: TrainConfig = TrainConfig(),
    mode: str = "kd",
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Fully train the student `arch` with a real schedule and report its test accuracy.

    Args:
        arch: the student; its input shape and class count must match the data set.
        data: the data set (trains on `train_x`, reports `val_x` per epoch and `test_x` at the end).
        teacher_logits: teacher logits over `data.train_x`; ignored in `ce` mode.
        config: epochs, schedule and optimizer settings.
        mode: `kd` or `ce`.
        seed: seeds initial weights and batch order.
        device: torch device name.
        on_epoch: called with (epoch, validation accuracy) after each epoch.

    Returns:
        The trained model (on the CPU, in eval mode; its `state_dict` loads into
        `build_student(arch)`) and the result.
    """
    _check_fit(arch, data)
    _check_teacher(data, teacher_logits, mode)
    from akd_mobile.builder import build_student

    model = build_student(arch, seed=seed)
    result = fit(model, data, teacher_logits if mode == "kd" else None, config, seed, device, on_epoch)
    return model, result


def fit(
    model: nn.Module,
    data: Dataset,
    teacher_logits: torch.Tensor | None,
    config: TrainConfig,
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train any classifier on `data` for `config.epochs` (KD when teacher logits are given).

    The model is left on the CPU in eval mode with the NCHW (contiguous) memory layout.

    Returns:
        Test and validation accuracy, history and timings.
    """
    dev = torch_device(device)
    per_epoch = max(1, len(data.train_y) // config.batch_size)
    total = per_epoch * config.epochs
    lr_at = _cosine(config.lr, total) if config.schedule == "cosine" else _step(config.lr, total)
    optimizer = _ready(model, dev, config.momentum, config.weight_decay)
    split = _on_device(data, teacher_logits, config.batch_size, dev)
    augment = Augmentation.resolve(config.augment, data.input_shape[-1], data.mirror_safe)
    history: list[float] = []
    train_s = 0.0
    with retain_freed_memory():  # as in proxy_score
        for epoch in range(config.epochs):
            seconds, _ = _train_steps(
                model,
                optimizer,
                *split,
                steps=per_epoch,
                batch_size=config.batch_size,
                lr_at=lr_at,
                temperature=config.temperature,
                alpha=config.alpha,
                seed=seed,
                first_step=epoch * per_epoch,
                augment=augment,
            )
            train_s += seconds
            history.append(evaluate(model, data.val_x, data.val_y, dev))
            log.info("epoch %d/%d: val accuracy %.4f", epoch + 1, config.epochs, history[-1])
            if on_epoch is not None:
                on_epoch(epoch + 1, history[-1])
        test_accuracy = evaluate(model, data.test_x, data.test_y, dev)
    model.to(device="cpu", memory_format=torch.contiguous_format)
    return TrainResult(
        test_accuracy=test_accuracy,
        val_accuracy=history[-1],
        val_history=tuple(history),
        epochs=config.epochs,
        steps=total,
        train_s=train_s,
        images_per_s=total * config.batch_size / train_s,
        params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        mode="kd" if teacher_logits is not None else "ce",
    )


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str = "cpu",
             batch_size: int = 250) -> float:
    """Top-1 accuracy of `model` on images `x` with labels `y`, in eval mode (batches of 250:
    a student's activations then stay in the CPU's caches; 1,000 took 2-3x as long)."""
    dev = torch.device(device)
    model.to(dev).eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            xb = _layout(x[start : start + batch_size].to(dev))
            correct += int((model(xb).argmax(1).cpu() == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


# ---------------------------------------------------------------- the training loop


def _train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Images,
    y: torch.Tensor,
    t: torch.Tensor | None,
    *,
    steps: int,
    batch_size: int,
    lr_at: Callable[[int], float],
    temperature: float,
    alpha: float,
    seed: int,
    first_step: int = 0,
    augment: Augmentation = Augmentation(),
) -> tuple[float, float]:
    """Run `steps` SGD steps on images `x`, labels `y` and teacher logits `t` (None: CE only)
    from global step `first_step`; return (seconds, last loss).

    On the CPU, torch's thread count is spent as `akd_mobile.shards.plan_shards` says:
    each batch is split into shards trained on threads of their own.

    Batches are consecutive slices of a seeded permutation per pass over the split (the
    last partial batch of a pass is dropped), so global step s sees the same images, and
    the same augmentation draws, for the same seed, whichever call runs it.
    """
    n = len(y)
    model.train()
    per_pass = n // batch_size
    perms: dict[int, torch.Tensor] = {}
    loss = torch.zeros(())

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor, tb: torch.Tensor | None) -> ShardLoss:
        """The loss of a shard (positions `part` within the batch) on a replica."""
        def shard_loss(replica: nn.Module, part: torch.Tensor) -> torch.Tensor:
            out = replica(_layout(xb[part]))
            return F.cross_entropy(out, yb[part]) if tb is None else kd_loss(out, tb[part], yb[part], temperature, alpha)

        return shard_loss

    shards, intra_threads = plan_shards(torch.get_num_threads(), batch_size, y.device)
    within_batch = torch.arange(batch_size, device=y.device)
    start = time.perf_counter()
    with torch_threads(intra_threads), ShardedSteps(model, shards, intra_threads) as sharded:
        for step in range(first_step, first_step + steps):
            epoch, within = divmod(step, per_pass)
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            idx = perms[epoch][within * batch_size : (within + 1) * batch_size]
            xb = x[idx.to(x.device) if isinstance(x, torch.Tensor) else idx].to(y.device)
            if augment.active:
                xb = augment(xb, torch.Generator().manual_seed(seed * 1_000_003 + step))
            on = idx.to(y.device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = sharded.gradients(within_batch, batch_loss(xb, y[on], None if t is None else t[on]))
            optimizer.step()
    seconds = time.perf_counter() - start
    final = float(loss.detach())
    if not math.isfinite(final):
        raise DistillError(f"training diverged (loss {final}); lower the learning rate")
    return seconds, final


def _on_device(
    data: Dataset, teacher_logits: torch.Tensor | None, batch_size: int, device: torch.device
) -> tuple[Images, torch.Tensor, torch.Tensor | None]:
    """The proxy training split and its teacher logits: labels and logits moved to `device`
    once, in-memory images too (images in a cache on disk are read and moved per batch)."""
    n = len(data.train_y)
    if batch_size > n:
        raise DistillError(f"batch size {batch_size} exceeds the {n} training images of {data.name}")
    t = teacher_logits.to(device) if teacher_logits is not None else None
    x = data.train_x.to(device) if isinstance(data.train_x, torch.Tensor) else data.train_x
    return x, data.train_y.to(device), t


def _ready(model: nn.Module, device: torch.device, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """Move `model` to `device` in the channels-last layout and give it an SGD optimizer."""
    model.to(device=device, memory_format=torch.channels_last)
    return torch.optim.SGD(
        model.parameters(), lr=0.0, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
    )


def _recalibrate_batch_norm(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 250) -> None:
    """Replace batch norm running averages by the exact mean and variance over images `x`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not len(x) or not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(_layout(x[start : start + batch_size].to(device)))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


def _fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each batch norm folded into the convolution before it
    (a convolution directly followed by a batch norm in an `nn.Sequential`, as the builder makes them)."""
    folded = copy.deepcopy(model).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return folded.to(memory_format=torch.channels_last)


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _warmup(total: int) -> int:
    return max(1, round(0.05 * total))


def _cosine(lr: float, total: int) -> Callable[[int], float]:
    """Linear warm-up over 5% of the steps, then cosine decay to 0."""
    warm = _warmup(total)

    def at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return at


def _step(lr: float, total: int) -> Callable[[int], float]:
    """Linear warm-up over 5% of the steps, then x0.1 at 50% and again at 75% of the steps."""
    warm = _warmup(total)

    def at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        return lr * 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))

    return at


def _check_fit(arch: ArchSpec, data: Dataset) -> None:
    if tuple(arch.input_shape) != tuple(data.input_shape) or arch.num_classes != data.num_classes:
        c, h, w = arch.input_shape
        dc, dh, dw = data.input_shape
        raise DistillError(
            f"student of {arch.space} takes {c}x{h}x{w} inputs and {arch.num_classes} classes, but data set "
            f"{data.name} has {dc}x{dh}x{dw} images and {data.num_classes} classes; "
            f"build the space with --input {dc}x{dh}x{dw} --classes {data.num_classes}"
        )


def _check_teacher(data: Dataset, teacher_logits: torch.Tensor | None, mode: str) -> None:
    if mode not in MODES:
        raise DistillError(f"unknown mode {mode!r}; use kd (distil from the teacher) or ce (labels only)")
    if mode == "ce":
        return
    if teacher_logits is None:
        raise DistillError("mode kd needs teacher logits (cached_logits(teacher, data)); use mode ce to train without")
    want = (len(data.train_y), data.num_classes)
    if tuple(teacher_logits.shape) != want:
        raise DistillError(
            f"teacher logits have shape {tuple(teacher_logits.shape)} but {data.name}'s proxy training split "
            f"needs {want}; compute them with cached_logits(teacher, data) for this data set and seed"
        )
