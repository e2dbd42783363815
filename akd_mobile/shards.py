"""Data-parallel training steps over CPU threads: each batch split into shards, one thread each.

A student's training step is hundreds of small, memory-bound operations. Splitting each
operation over intra-op threads makes every one of them wait for its slowest thread
(1.47x one thread's speed on 2 cores). Splitting the batch instead gives each thread its
own shard and a replica of the model that shares the parameters (its batch norm buffers
are its own), and joins the threads once per step to average the gradients (1.73x;
docs/distill.md). Batch norm then normalizes over each shard ("ghost batch norm"), so a
result depends on the thread count: with the same count it is the same every run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

MIN_SHARD_IMAGES = 32  # fewer images than this make batch statistics too noisy to train on

# A shard's loss: (model, batch indices) -> scalar loss averaged over the shard.
ShardLoss = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def plan_shards(threads: int, batch_size: int, device: torch.device) -> tuple[int, int]:
    """How to spend `threads` CPU threads on a batch: (shards, intra-op threads per shard).

    As many shards as threads, each of at least `MIN_SHARD_IMAGES` images; threads left
    over go to each shard's operations. Off the CPU, one shard.
    """
    if device.type != "cpu" or threads <= 1:
        return 1, max(1, threads)
    shards = max(1, min(threads, batch_size // MIN_SHARD_IMAGES))
    return shards, threads // shards


class ShardedSteps:
    """Gradients of one batch, computed as `shards` shards on as many threads.

    Use as a context manager around the training loop: on exit the worker threads stop and
    the model's batch norm running statistics become the mean over its replicas'.

    Args:
        model: the model being trained (its parameters receive the gradients).
        shards: number of shards and threads (1: no threads, the calling thread does it).
        intra_threads: torch intra-op threads of each shard's thread.
    """

    def __init__(self, model: nn.Module, shards: int, intra_threads: int) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.replicas = [model] + [_replica(model) for _ in range(shards - 1)]
        self.pool = (
            ThreadPoolExecutor(shards, thread_name_prefix="akd-shard", initializer=torch.set_num_threads,
                               initargs=(intra_threads,))
            if shards > 1 else None
        )

    def __enter__(self) -> ShardedSteps:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        _average_batch_norm_buffers(self.replicas)

    def gradients(self, idx: torch.Tensor, shard_loss: ShardLoss) -> torch.Tensor:
        """Set each parameter's `.grad` to the gradient of the batch `idx`'s mean loss; return that loss.

        The batch's loss is the shard losses weighted by shard size, as is its gradient.
        """
        parts = idx.tensor_split(len(self.replicas))
        jobs = [(replica, part) for replica, part in zip(self.replicas, parts) if len(part)]
        if self.pool is None:
            results = [self._shard(*job, shard_loss) for job in jobs]
        else:
            results = [f.result() for f in [self.pool.submit(self._shard, *job, shard_loss) for job in jobs]]
        weights = [len(part) / len(idx) for _, part in jobs]
        for i, p in enumerate(self.params):
            p.grad = sum(w * grads[i] for w, (_, grads) in zip(weights, results))
        return sum(w * loss for w, (loss, _) in zip(weights, results))

    def _shard(self, replica: nn.Module, part: torch.Tensor,
               shard_loss: ShardLoss) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss = shard_loss(replica, part)
        return loss.detach(), torch.autograd.grad(loss, self.params, allow_unused=True, materialize_grads=True)


def _replica(model: nn.Module) -> nn.Module:
    """A copy of `model` that shares its parameters and has buffers of its own."""
    replica = copy.deepcopy(model)
    for original, copied in zip(model.modules(), replica.modules()):
        for name, param in original._parameters.items():
            copied._parameters[name] = param
    return replica


def _average_batch_norm_buffers(replicas: list[nn.Module]) -> None:
    """Give the first replica the mean running statistics of all of them."""
    if len(replicas) < 2:
        return
    groups = zip(*([m for m in r.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] for r in replicas))
    with torch.no_grad():
        for first, *others in groups:
            if first.running_mean is None:
                continue
            for name in ("running_mean", "running_var"):
                mine = getattr(first, name)
                mine.copy_(torch.stack([mine, *(getattr(m, name) for m in others)]).mean(0))
