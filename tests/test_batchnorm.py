"""The students' batch norm: the same numbers as nn.BatchNorm2d, its own backward only on several threads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from akd_mobile.batchnorm import BatchNorm2d
from akd_mobile.distill import torch_threads


def _pair(channels: int) -> tuple[nn.BatchNorm2d, BatchNorm2d]:
    reference = nn.BatchNorm2d(channels)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
        reference.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))
    ours = BatchNorm2d(channels)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def _step(norm: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().clone().requires_grad_()
    y = norm(x)
    y.backward(g)
    return y.detach(), x.grad, norm.weight.grad, norm.bias.grad, norm.running_mean.clone(), norm.running_var.clone()


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("shape", [(16, 12, 7, 7), (5, 40, 3, 3)])
def test_on_two_threads_its_own_backward_matches_aten(shape, layout):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).contiguous(memory_format=layout)
    g = torch.randn(shape, generator=gen).contiguous(memory_format=layout)
    reference, ours = _pair(shape[1])
    with torch_threads(2):
        assert type(ours(x.clone().requires_grad_()).grad_fn).__name__ == "_BatchNormTrainBackward"
        ours.load_state_dict(reference.state_dict())
        expected, got = _step(reference, x, g), _step(ours, x, g)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad", "running mean", "running var"),
                          expected, got):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), name
    assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked) == 1


def test_on_one_thread_in_eval_mode_and_without_gradients_it_is_aten_batch_norm():
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    reference, ours = _pair(4)
    with torch_threads(1):
        assert type(ours(x).grad_fn) is type(reference(x).grad_fn)
    with torch_threads(2):
        with torch.no_grad():
            assert torch.allclose(ours(x), reference(x))
        ours.eval(), reference.eval()
        assert type(ours(x).grad_fn) is type(reference(x).grad_fn)
    assert ours.state_dict().keys() == reference.state_dict().keys()


def test_cumulative_averaging_momentum_none_keeps_aten_behaviour():
    x = torch.randn(8, 4, 5, 5)
    reference, ours = _pair(4)
    reference.momentum = ours.momentum = None
    with torch_threads(2):
        for _ in range(2):
            reference(x), ours(x)
    assert torch.allclose(ours.running_mean, reference.running_mean)
    assert torch.allclose(ours.running_var, reference.running_var)
