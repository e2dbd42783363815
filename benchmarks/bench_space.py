"""Spread of student sizes in each preset: writes the size table of docs/search-space.md.

    .venv/bin/python benchmarks/bench_space.py [--samples 1000]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from akd_mobile.space import get_space
from bench_support import fill_block

DOC = Path(__file__).resolve().parents[1] / "docs" / "search-space.md"


def extremes(space):
    """The smallest (all dw_k3_se0_none_f75, fewest layers) and largest (all
    conv_k5_se25_pool_f125, most layers) architectures."""
    small = [1, 0, 0, 0, 0, 0] * space.num_blocks
    large = []
    for b in range(space.num_blocks):
        large += [0, 1, 1, 1, 2, len(space.layer_choices(b)) - 1]
    return space.from_indices(small), space.from_indices(large)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for name in ("mnasnet-small", "mnasnet-imagenet"):
        space = get_space(name)
        rng = random.Random(0)
        costs = [space.cost(space.sample(rng)) for _ in range(args.samples)]
        lo, hi = (space.cost(a) for a in extremes(space))
        for unit, get, scale, fmt in (("params", lambda c: c.params, 1, "{:,.0f}"), ("MMACs", lambda c: c.macs, 1e6, "{:,.2f}")):
            vals = sorted(get(c) / scale for c in costs)
            pick = [get(lo) / scale, vals[len(vals) // 20], vals[len(vals) // 2], vals[len(vals) * 19 // 20], get(hi) / scale]
            rows.append(f"| `{name}` {unit} | " + " | ".join(fmt.format(v) for v in pick) + " |")
        print(name, space.size())
    table = "\n".join([
        f"Command: `.venv/bin/python benchmarks/bench_space.py --samples {args.samples}` ({args.samples} uniform",
        "samples, `random.Random(0)`, `SearchSpace.cost`; the extremes are the all-`dw_k3_se0_none_f75`",
        "minimum-depth and the all-`conv_k5_se25_pool_f125` maximum-depth architectures).",
        "",
        "| preset | smallest | 5% | median | 95% | largest |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
    ])
    fill_block(DOC, "bench_space", table)
    print(table)


if __name__ == "__main__":
    main()
