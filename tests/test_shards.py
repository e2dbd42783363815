"""Sharded training steps: the gradient of the batch, shared parameters, own batch norm buffers."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from akd_mobile.data import load_dataset
from akd_mobile.distill import ProxyBudget, proxy_score, torch_threads
from akd_mobile.shards import MIN_SHARD_IMAGES, ShardedSteps, plan_shards
from akd_mobile.space import get_space

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("threads", "batch", "device", "plan"),
    [
        (1, 125, CPU, (1, 1)),
        (2, 125, CPU, (2, 1)),
        (16, 128, CPU, (128 // MIN_SHARD_IMAGES, 16 // (128 // MIN_SHARD_IMAGES))),
        (3, MIN_SHARD_IMAGES, CPU, (1, 3)),  # too few images for two shards: one, on all threads
        (8, 125, CUDA, (1, 8)),
    ],
)
def test_plan_shards(threads, batch, device, plan):
    assert plan_shards(threads, batch, device) == plan


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 4, 4, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def _loss(x, y):
    return lambda model, idx: F.cross_entropy(model(x[idx]), y[idx])


def test_without_batch_statistics_the_sharded_gradient_is_the_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 5))
    x, y = _data(37)  # shards of 13, 12 and 12: weighted by size
    idx = torch.arange(37)
    F.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    with ShardedSteps(model, shards=3, intra_threads=1) as sharded:
        loss = sharded.gradients(idx, _loss(x, y))
    assert torch.allclose(loss, F.cross_entropy(model(x), y), atol=1e-6)
    for p, want in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, want, atol=1e-6)


def test_with_batch_norm_each_shard_is_normalized_on_its_own_and_the_buffers_are_averaged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 5)).train()
    x, y = _data(40)
    halves = torch.arange(40).tensor_split(2)
    separate = [copy.deepcopy(model) for _ in halves]  # what ghost batch norm computes, half by half
    grads = []
    for half, net in zip(halves, separate):
        F.cross_entropy(net(x[half]), y[half]).backward()
        grads.append([p.grad for p in net.parameters()])
    with ShardedSteps(model, shards=2, intra_threads=1) as sharded:
        replica = sharded.replicas[1]
        assert all(a is b for a, b in zip(model.parameters(), replica.parameters()))
        assert replica[1].running_mean is not model[1].running_mean
        sharded.gradients(torch.arange(40), _loss(x, y))
    for i, p in enumerate(model.parameters()):
        assert torch.allclose(p.grad, (grads[0][i] + grads[1][i]) / 2, atol=1e-6)
    for name in ("running_mean", "running_var"):
        want = (getattr(separate[0][1], name) + getattr(separate[1][1], name)) / 2
        assert torch.allclose(getattr(model[1], name), want, atol=1e-6)


def test_two_thread_proxy_scores_are_the_same_every_run():
    digits = load_dataset("digits", seed=0)
    arch = get_space("mnasnet-small", digits.input_shape, digits.num_classes).sample(random.Random(3))
    budget = ProxyBudget(steps=12, batch_size=64, lr=0.1, eval_images=None)
    with torch_threads(2):
        a, b = (proxy_score(arch, digits, None, budget, mode="ce", seed=0) for _ in range(2))
    assert (a.accuracy, a.final_loss) == (b.accuracy, b.final_loss)
