"""Human-readable and JSON reports of architectures."""

from __future__ import annotations

from typing import Any

from akd_mobile.space import ArchSpec, Cost, SearchSpace, layer_cost


def describe_arch(space: SearchSpace, arch: ArchSpec) -> dict[str, Any]:
    """Parameters, MACs and per-block input/output shapes of `arch`."""
    plan = space.plan(arch)
    blocks = []
    for b, blk in enumerate(arch.blocks):
        layers = [p for p in plan if p.block == b]
        cost = sum((layer_cost(p) for p in layers), Cost(0, 0))
        first, last = layers[0], layers[-1]
        blocks.append(
            {
                "block": b + 1,
                "tokens": blk.canonical,
                "in_shape": [first.in_ch, *first.in_hw],
                "out_shape": [last.out_ch, *last.out_hw],
                "layers": len(layers),
                "params": cost.params,
                "macs": cost.macs,
            }
        )
    stem, head = space.stem_cost(), space.head_cost(space.last_channels(arch))
    total = space.cost(arch)
    return {
        **arch.to_json(),
        "params": total.params,
        "macs": total.macs,
        "stem": {"params": stem.params, "macs": stem.macs},
        "blocks": blocks,
        "head": {"params": head.params, "macs": head.macs},
    }


def format_description(desc: dict[str, Any]) -> str:
    """A table of `describe_arch`'s result for the terminal."""
    lines = [
        f"arch   {desc['arch']}",
        f"key    {desc['key']}   space {desc['space']} {'x'.join(map(str, desc['input_shape']))}, "
        f"{desc['num_classes']} classes",
        f"total  {desc['params']:,} params, {desc['macs'] / 1e6:.2f} MMACs",
        "",
        f"{'block':<6}{'tokens':<26}{'in':>12}{'out':>12}{'layers':>7}{'params':>11}{'MMACs':>9}",
        f"{'stem':<6}{'':<26}{'':>12}{'':>12}{'':>7}{desc['stem']['params']:>11,}{desc['stem']['macs'] / 1e6:>9.2f}",
    ]
    for b in desc["blocks"]:
        lines.append(
            f"{b['block']:<6}{b['tokens']:<26}{'x'.join(map(str, b['in_shape'])):>12}"
            f"{'x'.join(map(str, b['out_shape'])):>12}{b['layers']:>7}{b['params']:>11,}{b['macs'] / 1e6:>9.2f}"
        )
    lines.append(
        f"{'head':<6}{'':<26}{'':>12}{'':>12}{'':>7}{desc['head']['params']:>11,}{desc['head']['macs'] / 1e6:>9.2f}"
    )
    return "\n".join(lines)
