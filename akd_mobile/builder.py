"""Turn an `ArchSpec` into a `torch.nn.Module` that trains and exports.

The network follows `SearchSpace.plan` layer by layer, so its shapes, MACs and
parameters are exactly what `SearchSpace.cost` counts. No data-dependent control flow:
every branch is decided when the module is built, so `torch.export` traces it whole.
"""

from __future__ import annotations

import torch
from torch import nn

from akd_mobile.space import ArchSpec, LayerPlan, SearchSpace, get_space


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 reduce + ReLU, 1x1 expand + sigmoid, scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.relu(self.reduce(s))
        return x * torch.sigmoid(self.expand(s))


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


def _relu() -> nn.ReLU:
    """In place: each ReLU follows a batch norm, whose backward needs its input, not its output."""
    return nn.ReLU(inplace=True)


class SearchLayer(nn.Module):
    """One layer of a block: its conv op, optional SE, and its skip op."""

    def __init__(self, plan: LayerPlan) -> None:
        super().__init__()
        k, s, cin, cout, mid = plan.kernel, plan.stride, plan.in_ch, plan.out_ch, plan.mid_ch
        if plan.op == "conv":
            main = [*_conv_bn(cin, cout, k, s), _relu()]
            se_on, tail = cout, []
        elif plan.op == "dw":
            main = [*_conv_bn(cin, cin, k, s, groups=cin), _relu()]
            se_on, tail = cin, _conv_bn(cin, cout, 1)
        else:
            main = [*_conv_bn(cin, mid, 1), _relu(), *_conv_bn(mid, mid, k, s, groups=mid), _relu()]
            se_on, tail = mid, _conv_bn(mid, cout, 1)
        if plan.se_ch:
            main.append(SqueezeExcite(se_on, plan.se_ch))
        self.body = nn.Sequential(*main, *tail)
        self.shortcut: nn.Module | None = None
        self.residual = plan.skip == "pool" or (plan.skip == "id" and plan.residual)
        if plan.skip == "pool":
            # Zero padding as its own op, then an unpadded pool: the same values as
            # AvgPool2d(3, s, 1), but both XNNPACK and LiteRT run it as one delegated pool.
            pool = nn.Sequential(nn.ZeroPad2d(1), nn.AvgPool2d(3, s))
            self.shortcut = nn.Sequential(pool, *_conv_bn(cin, cout, 1)) if cin != cout else pool
        elif self.residual:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return y


class StudentNet(nn.Module):
    """Stem, the searched layers, and a head of 1x1 conv, global pooling and a linear classifier."""

    def __init__(self, space: SearchSpace, arch: ArchSpec, dropout: float = 0.0) -> None:
        super().__init__()
        c = space.input_shape[0]
        self.stem = nn.Sequential(*_conv_bn(c, space.stem_channels, 3, space.stem_stride), _relu())
        self.layers = nn.Sequential(*(SearchLayer(p) for p in space.plan(arch)))
        self.head = nn.Sequential(*_conv_bn(space.last_channels(arch), space.head_channels, 1), _relu())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.layers(self.stem(x)))
        # keepdim then flatten: the .tflite graph keeps no transpose before the classifier
        return self.classifier(self.dropout(x.mean((2, 3), keepdim=True).flatten(1)))


def build_student(arch: ArchSpec, dropout: float = 0.0, seed: int | None = None) -> StudentNet:
    """Build the network of `arch`; with `seed`, its initial weights are reproducible."""
    space = get_space(arch.space, arch.input_shape, arch.num_classes)
    if seed is None:
        return StudentNet(space, arch, dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StudentNet(space, arch, dropout)


def example_input(arch: ArchSpec, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A fixed random input of the architecture's shape (NCHW)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *arch.input_shape), generator=gen)
