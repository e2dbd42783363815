"""MnasNet's factorized hierarchical search space and the `ArchSpec` it samples.

A network is a stem, B blocks and a head. Every block makes six decisions:

| decision | options | string token |
| --- | --- | --- |
| conv op | regular conv, depthwise-separable conv, MBConv expand 3, MBConv expand 6 | `conv`, `dw`, `mb3`, `mb6` |
| kernel | 3, 5 | `k3`, `k5` |
| squeeze-excite ratio | 0, 0.25 | `se0`, `se25` |
| skip op | none, pooled shortcut, identity residual | `none`, `pool`, `id` |
| filter ratio of the base width | 0.75, 1.0, 1.25 | `f75`, `f100`, `f125` |
| layers | base-1, base, base+1 (at least 1) | `l<n>` |

The canonical string writes each block's six tokens joined by `_`, in that order, and the
blocks joined by `-`, e.g. `mb6_k3_se25_id_f100_l2-...`. It is the only accepted
spelling: anything else is rejected with the offending token named.

Skip ops, per layer: `id` adds the input when the layer keeps its shape (stride 1, same
channels) and is absent otherwise. `pool` always adds a shortcut: a 3x3 average pool with
the layer's stride (padding 1, so its output size matches the convolution's), followed by
a 1x1 convolution with batch norm when the channel count changes. On a layer that keeps
its shape it is a 3x3 average pool of the input added to the output.

`size()` counts distinct canonical strings. Two strings can describe the same network
(an `id` skip on a one-layer block that changes shape adds nothing, like `none`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from akd_base.errors import ArchStringError, SpaceError

OPS = ("conv", "dw", "mb3", "mb6")
KERNELS = (3, 5)
SE_RATIOS = (0.0, 0.25)
SKIPS = ("none", "pool", "id")
FILTER_RATIOS = (0.75, 1.0, 1.25)
LAYER_DELTAS = (-1, 0, 1)

DECISION_NAMES = ("op", "kernel", "se", "skip", "filters", "layers")
_EXPANSION = {"mb3": 3, "mb6": 6}


@dataclass(frozen=True)
class BlockSpec:
    """The six decisions of one block."""

    op: str
    kernel: int
    se_ratio: float
    skip: str
    filter_ratio: float
    layers: int

    @property
    def canonical(self) -> str:
        """The block's token group, e.g. `mb6_k3_se25_id_f100_l2`."""
        return "_".join(
            (
                self.op,
                f"k{self.kernel}",
                f"se{round(self.se_ratio * 100)}",
                self.skip,
                f"f{round(self.filter_ratio * 100)}",
                f"l{self.layers}",
            )
        )


@dataclass(frozen=True)
class ArchSpec:
    """One student architecture of a search space.

    Attributes:
        space: name of the search space preset.
        input_shape: (channels, height, width) of one input image.
        num_classes: number of classifier outputs.
        blocks: the decisions of each block, in order.
    """

    space: str
    input_shape: tuple[int, int, int]
    num_classes: int
    blocks: tuple[BlockSpec, ...]

    @property
    def canonical(self) -> str:
        """The one canonical, human-readable string of the blocks."""
        return "-".join(b.canonical for b in self.blocks)

    @property
    def key(self) -> str:
        """Short stable key: names this architecture in the database, files and logs.

        It hashes the space's name, input shape and class count, the canonical string, and
        the preset's fixed structure (stem, widths, depths, strides, head), so a change to a
        preset can never let an old measurement stand for a different network.
        """
        space = get_space(self.space, self.input_shape, self.num_classes)
        ident = f"{space.signature}|{self.canonical}"
        return hashlib.sha256(ident.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        """JSON form: space, input shape, class count and canonical string."""
        return {
            "space": self.space,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "arch": self.canonical,
            "key": self.key,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> ArchSpec:
        """Inverse of `to_json` (a dict or its JSON text)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ArchStringError(f"architecture JSON is not valid JSON: {exc}") from None
        try:
            space = get_space(data["space"], tuple(data["input_shape"]), int(data["num_classes"]))
            arch = space.decode(data["arch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchStringError(f"architecture JSON lacks or mangles a field: {exc}") from None
        if "key" in data and data["key"] != arch.key:
            raise ArchStringError(f"architecture JSON key {data['key']!r} does not match its arch")
        return arch


@dataclass(frozen=True)
class LayerPlan:
    """One layer of a built network: what the builder builds and the counter counts."""

    block: int
    op: str
    kernel: int
    se_ratio: float
    skip: str
    in_ch: int
    out_ch: int
    stride: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def mid_ch(self) -> int:
        """Channels inside the layer (expanded width of an MBConv)."""
        return self.in_ch * _EXPANSION.get(self.op, 1)

    @property
    def se_ch(self) -> int:
        """Squeeze width of the SE module (0 when the layer has none)."""
        return max(1, int(self.in_ch * self.se_ratio)) if self.se_ratio > 0 else 0

    @property
    def residual(self) -> bool:
        """Whether the layer keeps its shape, so an identity residual applies."""
        return self.stride == 1 and self.in_ch == self.out_ch


@dataclass(frozen=True)
class Cost:
    """Analytic cost: multiply-accumulates of convolutions and linear layers, and parameters."""

    macs: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.params + other.params)


@dataclass(frozen=True)
class SearchSpace:
    """A MnasNet-style space: fixed stem and head, `len(base_widths)` searchable blocks."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    stem_channels: int
    stem_stride: int
    head_channels: int
    base_widths: tuple[int, ...]
    base_depths: tuple[int, ...]
    strides: tuple[int, ...]
    channel_divisor: int

    @property
    def signature(self) -> str:
        """Everything that fixes the network besides the decisions, as one string."""
        c, h, w = self.input_shape
        return (
            f"{self.name}|{c}x{h}x{w}|{self.num_classes}|stem{self.stem_channels}s{self.stem_stride}"
            f"|w{','.join(map(str, self.base_widths))}|d{','.join(map(str, self.base_depths))}"
            f"|s{','.join(map(str, self.strides))}|head{self.head_channels}|div{self.channel_divisor}"
        )

    @property
    def num_blocks(self) -> int:
        return len(self.base_widths)

    def layer_choices(self, block: int) -> tuple[int, ...]:
        """Distinct layer counts of a block: base-1, base, base+1, at least 1."""
        base = self.base_depths[block]
        return tuple(sorted({max(1, base + d) for d in LAYER_DELTAS}))

    def decisions(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Every decision in order, as (name, options): what a controller samples."""
        out: list[tuple[str, tuple[Any, ...]]] = []
        for b in range(self.num_blocks):
            per_block = (OPS, KERNELS, SE_RATIOS, SKIPS, FILTER_RATIOS, self.layer_choices(b))
            out.extend((f"b{b + 1}.{n}", opts) for n, opts in zip(DECISION_NAMES, per_block))
        return out

    def size(self) -> int:
        """Number of distinct architectures (canonical strings) in the space."""
        return math.prod(len(opts) for _, opts in self.decisions())

    def from_indices(self, indices: list[int] | tuple[int, ...]) -> ArchSpec:
        """Build an ArchSpec from one option index per decision."""
        decisions = self.decisions()
        if len(indices) != len(decisions):
            raise ArchStringError(f"expected {len(decisions)} decisions, got {len(indices)}")
        values = []
        for (name, opts), i in zip(decisions, indices):
            if not 0 <= int(i) < len(opts):
                raise ArchStringError(f"decision {name}: index {i} out of range 0..{len(opts) - 1}")
            values.append(opts[int(i)])
        blocks = tuple(BlockSpec(*values[j : j + 6]) for j in range(0, len(values), 6))
        return self._arch(blocks)

    def to_indices(self, arch: ArchSpec) -> list[int]:
        """One option index per decision: the inverse of `from_indices`."""
        self._check_member(arch)
        values = [getattr(b, f) for b in arch.blocks for f in _FIELDS]
        return [opts.index(v) for (_, opts), v in zip(self.decisions(), values)]

    def sample(self, rng: random.Random) -> ArchSpec:
        """A uniformly random architecture."""
        return self.from_indices([rng.randrange(len(opts)) for _, opts in self.decisions()])

    def mutate(self, arch: ArchSpec, rng: random.Random) -> ArchSpec:
        """Change one decision of `arch` to a different option, chosen uniformly."""
        indices = self.to_indices(arch)
        decisions = self.decisions()
        d = rng.randrange(len(decisions))
        n = len(decisions[d][1])
        indices[d] = (indices[d] + rng.randrange(1, n)) % n
        return self.from_indices(indices)

    def encode(self, arch: ArchSpec) -> str:
        """The canonical string of `arch`."""
        self._check_member(arch)
        return arch.canonical

    def decode(self, text: str) -> ArchSpec:
        """Parse a canonical string; any other spelling raises ArchStringError naming the token."""
        if not isinstance(text, str):
            raise ArchStringError(f"architecture must be a string, got {type(text).__name__}")
        groups = text.split("-")
        if len(groups) != self.num_blocks:
            raise ArchStringError(
                f"{self.name} needs {self.num_blocks} blocks joined by '-', got {len(groups)} in {text!r}"
            )
        blocks = []
        for b, group in enumerate(groups):
            tokens = group.split("_")
            if len(tokens) != len(DECISION_NAMES):
                raise ArchStringError(
                    f"block {b + 1} {group!r}: needs 6 tokens op_kernel_se_skip_filters_layers, "
                    f"got {len(tokens)}"
                )
            values = []
            for t, (token, table) in enumerate(zip(tokens, self._token_tables(b))):
                if token not in table:
                    raise ArchStringError(
                        f"block {b + 1} token {t + 1} {token!r}: {DECISION_NAMES[t]} must be one of "
                        + ", ".join(table)
                    )
                values.append(table[token])
            blocks.append(BlockSpec(*values))
        return self._arch(tuple(blocks))

    def plan(self, arch: ArchSpec) -> list[LayerPlan]:
        """Every layer of the network `arch` describes, with its shapes."""
        self._check_member(arch)
        _, h, w = self.input_shape
        hw = (_conv_out(h, self.stem_stride), _conv_out(w, self.stem_stride))
        in_ch = self.stem_channels
        layers = []
        for b, (blk, base, stride) in enumerate(zip(arch.blocks, self.base_widths, self.strides)):
            out_ch = round_channels(base * blk.filter_ratio, self.channel_divisor)
            for i in range(blk.layers):
                s = stride if i == 0 else 1
                out_hw = (_conv_out(hw[0], s), _conv_out(hw[1], s))
                layers.append(
                    LayerPlan(b, blk.op, blk.kernel, blk.se_ratio, blk.skip, in_ch, out_ch, s, hw, out_hw)
                )
                in_ch, hw = out_ch, out_hw
        return layers

    def last_channels(self, arch: ArchSpec) -> int:
        """Channels entering the head."""
        last = arch.blocks[-1]
        return round_channels(self.base_widths[-1] * last.filter_ratio, self.channel_divisor)

    def cost(self, arch: ArchSpec) -> Cost:
        """Analytic MACs and parameter count of the whole network."""
        total = self.stem_cost() + self.head_cost(self.last_channels(arch))
        for layer in self.plan(arch):
            total = total + layer_cost(layer)
        return total

    def stem_cost(self) -> Cost:
        """Stem: 3x3 conv (no bias) with batch norm."""
        c, h, w = self.input_shape
        oh, ow = _conv_out(h, self.stem_stride), _conv_out(w, self.stem_stride)
        return _conv(c, self.stem_channels, 3, oh * ow) + _bn(self.stem_channels)

    def head_cost(self, in_ch: int) -> Cost:
        """Head: 1x1 conv with batch norm, global pooling, linear classifier with bias."""
        h, w = self.head_hw()
        return (
            _conv(in_ch, self.head_channels, 1, h * w)
            + _bn(self.head_channels)
            + Cost(self.head_channels * self.num_classes, (self.head_channels + 1) * self.num_classes)
        )

    def head_hw(self) -> tuple[int, int]:
        """Spatial size entering the head (independent of the decisions)."""
        _, h, w = self.input_shape
        for s in (self.stem_stride, *self.strides):
            h, w = _conv_out(h, s), _conv_out(w, s)
        return h, w

    def _token_tables(self, block: int) -> tuple[dict[str, Any], ...]:
        return (
            {o: o for o in OPS},
            {f"k{k}": k for k in KERNELS},
            {f"se{round(r * 100)}": r for r in SE_RATIOS},
            {s: s for s in SKIPS},
            {f"f{round(r * 100)}": r for r in FILTER_RATIOS},
            {f"l{n}": n for n in self.layer_choices(block)},
        )

    def _arch(self, blocks: tuple[BlockSpec, ...]) -> ArchSpec:
        return ArchSpec(self.name, self.input_shape, self.num_classes, blocks)

    def _check_member(self, arch: ArchSpec) -> None:
        if (arch.space, arch.input_shape, arch.num_classes) != (
            self.name,
            self.input_shape,
            self.num_classes,
        ):
            raise ArchStringError(
                f"architecture of {arch.space} {arch.input_shape}/{arch.num_classes} classes does not "
                f"belong to {self.name} {self.input_shape}/{self.num_classes} classes"
            )
        if self.decode(arch.canonical) != arch:
            raise ArchStringError(f"architecture {arch.canonical!r} is not canonical")


_FIELDS = ("op", "kernel", "se_ratio", "skip", "filter_ratio", "layers")


def round_channels(value: float, divisor: int) -> int:
    """Round a width to a multiple of `divisor`, never dropping more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _conv_out(size: int, stride: int) -> int:
    """Output size of an odd-kernel convolution padded by kernel//2."""
    return (size - 1) // stride + 1


def _conv(in_ch: int, out_ch: int, kernel: int, out_pixels: int, groups: int = 1, bias: bool = False) -> Cost:
    weights = kernel * kernel * (in_ch // groups) * out_ch
    return Cost(weights * out_pixels, weights + (out_ch if bias else 0))


def _bn(ch: int) -> Cost:
    return Cost(0, 2 * ch)


def _se(ch: int, squeeze: int) -> Cost:
    return _conv(ch, squeeze, 1, 1, bias=True) + _conv(squeeze, ch, 1, 1, bias=True)


def layer_cost(layer: LayerPlan) -> Cost:
    """Analytic MACs and parameters of one layer (batch norm: parameters only)."""
    in_px = layer.in_hw[0] * layer.in_hw[1]
    out_px = layer.out_hw[0] * layer.out_hw[1]
    k, cin, cout, mid = layer.kernel, layer.in_ch, layer.out_ch, layer.mid_ch
    if layer.op == "conv":
        cost = _conv(cin, cout, k, out_px) + _bn(cout)
        se_on = cout
    elif layer.op == "dw":
        cost = _conv(cin, cin, k, out_px, groups=cin) + _bn(cin) + _conv(cin, cout, 1, out_px) + _bn(cout)
        se_on = cin
    else:
        cost = (
            _conv(cin, mid, 1, in_px)
            + _bn(mid)
            + _conv(mid, mid, k, out_px, groups=mid)
            + _bn(mid)
            + _conv(mid, cout, 1, out_px)
            + _bn(cout)
        )
        se_on = mid
    if layer.se_ch:
        cost = cost + _se(se_on, layer.se_ch)
    if layer.skip == "pool" and cin != cout:
        cost = cost + _conv(cin, cout, 1, out_px) + _bn(cout)
    return cost


def _imagenet(input_shape: tuple[int, int, int], num_classes: int) -> SearchSpace:
    c, h, w = input_shape
    if c != 3 or h < 32 or w < 32:
        raise SpaceError(f"mnasnet-imagenet takes 3-channel inputs of at least 32x32, got {c}x{h}x{w}")
    return SearchSpace(
        name="mnasnet-imagenet",
        input_shape=input_shape,
        num_classes=num_classes,
        stem_channels=32,
        stem_stride=2,
        head_channels=1280,
        base_widths=(16, 24, 32, 64, 96, 160, 320),
        base_depths=(1, 2, 3, 4, 3, 3, 1),
        strides=(1, 2, 2, 2, 1, 2, 1),
        channel_divisor=8,
    )


def _small(input_shape: tuple[int, int, int], num_classes: int) -> SearchSpace:
    c, h, w = input_shape
    if c not in (1, 3) or not (28 <= h <= 32 and 28 <= w <= 32):
        raise SpaceError(f"mnasnet-small takes 1- or 3-channel inputs of 28 to 32 px, got {c}x{h}x{w}")
    return SearchSpace(
        name="mnasnet-small",
        input_shape=input_shape,
        num_classes=num_classes,
        stem_channels=8,
        stem_stride=2,
        head_channels=128,
        base_widths=(8, 12, 16, 24, 32, 40, 80),
        base_depths=(1, 2, 3, 4, 3, 3, 1),
        strides=(1, 1, 1, 2, 1, 2, 1),
        channel_divisor=2,
    )


PRESETS = {"mnasnet-imagenet": _imagenet, "mnasnet-small": _small}
DEFAULT_SHAPES = {"mnasnet-imagenet": ((3, 224, 224), 1000), "mnasnet-small": ((1, 28, 28), 10)}
# the channel counts each preset takes (the first where the data leave a choice)
INPUT_CHANNELS = {"mnasnet-imagenet": (3,), "mnasnet-small": (1, 3)}


def input_preference(name: str) -> tuple[int, tuple[int, ...]]:
    """The square input size (px) images are brought to for preset `name` unless the user
    says otherwise, and the channel counts it takes."""
    if name not in PRESETS:
        raise SpaceError(f"unknown search space {name!r}; known: {', '.join(sorted(PRESETS))}")
    return DEFAULT_SHAPES[name][0][1], INPUT_CHANNELS[name]


def get_space(
    name: str = "mnasnet-small",
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> SearchSpace:
    """A preset space, with its default input shape and class count unless given."""
    if name not in PRESETS:
        raise SpaceError(f"unknown search space {name!r}; known: {', '.join(sorted(PRESETS))}")
    default_shape, default_classes = DEFAULT_SHAPES[name]
    shape = tuple(int(x) for x in (input_shape or default_shape))
    classes = int(num_classes if num_classes is not None else default_classes)
    if len(shape) != 3:
        raise SpaceError(f"input shape must be CxHxW, got {shape}")
    if classes < 2:
        raise SpaceError(f"a classifier needs at least 2 classes, got {classes}")
    return PRESETS[name](shape, classes)  # type: ignore[arg-type]


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse `CxHxW` (e.g. `1x28x28`)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SpaceError(f"input shape must be CxHxW with positive integers, e.g. 1x28x28, got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])
