"""Search throughput on the default configuration: candidates per hour and where the time goes.

Runs the default search (local device, Fashion-MNIST, built-in teacher, mnasnet-small)
twice on one fresh database: cold (every latency exported and measured) and warm (the
same seed proposes the same candidates, whose latencies are now database hits). Writes
docs/search.md.

    .venv/bin/python benchmarks/bench_search.py [--budget 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from akd_mobile.engines import TRAIN_THREADS
from akd_mobile.search import SearchConfig, run_search
from devices.profiles import load_profile

DOC = Path(__file__).resolve().parents[1] / "docs" / "search.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        config = SearchConfig(budget=args.budget)
        # the teacher's logits are computed once per dataset and cached: do it before timing
        from akd_mobile.data import load_dataset
        from akd_mobile.teachers import cached_logits, load_teacher

        cached_logits(load_teacher(config.teacher), load_dataset(config.data, seed=config.seed))
        rows = []
        for label in ("cold database", "warm database"):
            start = time.perf_counter()
            summary = run_search(config, db)
            wall = time.perf_counter() - start
            split = summary.time_split_s
            rows.append((label, summary, wall, split))
            print(label, f"{wall:.1f} s", split)
    cpu = platform.processor() or platform.machine()
    min_time = load_profile(config.device).measure.min_time_s
    lines = [
        "# Search throughput",
        "",
        "Default configuration (`akd-mobile search`: local device, Fashion-MNIST, built-in teacher,",
        f"`mnasnet-small`, RL controller, batch 4), budget {args.budget} candidates, on this machine",
        f"({os.cpu_count()} cores, {cpu}). Teacher logits were cached before timing.",
        "",
        "Command:",
        "",
        "```",
        f".venv/bin/python benchmarks/bench_search.py --budget {args.budget}",
        "```",
        "",
        "| run | wall s | candidates/hour | KD training s | export s | measurement s | controller s | other s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, summary, wall, split in rows:
        n = summary.evaluated + summary.failed
        other = wall - sum(split.values())
        lines.append(
            f"| {label} | {wall:.1f} | {3600 * n / wall:.0f} | {split['train_s']:.1f} | {split['export_s']:.1f} | "
            f"{split['measure_s']:.1f} | {split['controller_s']:.2f} | {other:.1f} |"
        )
    lines += [
        "",
        "Exports run in a background process while the foreground trains: `export s` is only the",
        "time the foreground waited for one (the first candidate of a run, and any export slower",
        f"than the training it overlaps). KD training is the 80-step proxy on {TRAIN_THREADS} torch threads",
        "(the batch in two shards, docs/distill.md), while the export worker's process takes a core",
        "whenever a candidate's latency is not in the database yet.",
        f"A measurement on the local device takes at least its profile's `min_time_s` ({min_time:g} s) of timed",
        "runs over and above the processes' start (docs/latency.md): that is the `measurement s` column.",
        "With a warm database every latency is a hit: export and measurement take no time and",
        "the search is KD training and the controller. `other` is data loading, model building",
        "and database writes.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
