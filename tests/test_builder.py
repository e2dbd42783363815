"""The student builder: every sampled arch builds, runs, exports and matches its analytic cost."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from akd_mobile.builder import SearchLayer, build_student, example_input
from akd_mobile.space import get_space

SMALL = get_space("mnasnet-small")
IMAGENET = get_space("mnasnet-imagenet")
SMALL_RGB = get_space("mnasnet-small", (3, 32, 32), 10)


def _archs(space, n, seed):
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


CASES = (
    [(SMALL, a) for a in _archs(SMALL, 30, 1)]
    + [(SMALL_RGB, a) for a in _archs(SMALL_RGB, 10, 2)]
    + [(IMAGENET, a) for a in _archs(IMAGENET, 6, 3)]
)


@pytest.mark.parametrize("space, arch", CASES, ids=[f"{s.name}-{a.key}" for s, a in CASES])
def test_forward_shape_params_and_macs_match_the_analytic_count(space, arch):
    model = build_student(arch, seed=0).eval()
    x = example_input(arch, batch=2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = model(x)
    assert y.shape == (2, space.num_classes)
    assert torch.isfinite(y).all()
    cost = space.cost(arch)
    assert sum(p.numel() for p in model.parameters()) == cost.params
    flops = counter.get_total_flops()
    assert abs(flops - 2 * 2 * cost.macs) <= 0.01 * flops


@pytest.mark.parametrize("space, arch", CASES[:8] + CASES[-2:], ids=lambda v: getattr(v, "key", getattr(v, "name", "")))
def test_torch_export_traces_the_whole_network(space, arch):
    model = build_student(arch, seed=0).eval()
    x = example_input(arch)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)


def test_same_seed_same_weights_and_training_step_works():
    arch = _archs(SMALL, 1, 7)[0]
    a, b = build_student(arch, seed=5), build_student(arch, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    x, labels = example_input(arch, batch=8), torch.arange(8) % 10
    loss = torch.nn.functional.cross_entropy(a(x), labels)
    loss.backward()
    opt.step()
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _block4_layers(skip):
    """The layer plans of block 4 (stride 2, 16 -> 24 channels) of a small arch with the given skip."""
    blocks = [f"dw_k3_se0_none_f100_l{SMALL.base_depths[b]}" for b in range(7)]
    blocks[3] = f"mb3_k3_se0_{skip}_f100_l3"
    return [p for p in SMALL.plan(SMALL.decode("-".join(blocks))) if p.block == 3]


@pytest.mark.parametrize("skip", ["none", "pool", "id"])
def test_skip_ops_follow_the_documented_rules(skip):
    first, second, *_ = _block4_layers(skip)
    # block 4 changes shape in its first layer (stride 2, 16 -> 24 channels) and keeps it in the second
    assert (first.stride, first.in_ch, first.out_ch) == (2, 16, 24)
    assert not first.residual and second.residual
    l1, l2 = SearchLayer(first), SearchLayer(second)
    if skip == "none":
        assert l1.shortcut is None and l2.shortcut is None
    elif skip == "id":
        assert l1.shortcut is None and isinstance(l2.shortcut, torch.nn.Identity)
    else:
        pool, conv = l1.shortcut[0], l1.shortcut[1]
        assert isinstance(pool[1], torch.nn.AvgPool2d) and pool[1].stride == 2
        assert isinstance(conv, torch.nn.Conv2d) and (conv.in_channels, conv.out_channels) == (16, 24)
        assert isinstance(l2.shortcut[1], torch.nn.AvgPool2d) and l2.shortcut[1].stride == 1
        x = torch.randn(1, 24, 7, 7)
        assert torch.allclose(l2.shortcut(x), torch.nn.functional.avg_pool2d(x, 3, 1, 1), atol=1e-6)
    x = torch.randn(1, 16, *first.in_hw)
    assert l2(l1(x)).shape == (1, 24, *second.out_hw) == (1, 24, 7, 7)
