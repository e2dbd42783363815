"""The Ray engine against the in-process engine on this machine: the same search, same seed,
side by side; candidates per hour and whether both stored the same candidates and scores.

    .venv/bin/python benchmarks/bench_ray_engine.py [--seeds 0,1] [--budget 8] [--strategy random]

Every run is the default search (Fashion-MNIST, built-in teacher, `mnasnet-small`, local
device) with a cold latency database and export cache of its own, so each engine exports
and measures every candidate. The Ray runs start a local Ray of 2 CPUs (`ray.init(num_cpus=2)`,
started before the clock, as a cluster would be) and the engine joins it. The engines
alternate in order from seed to seed (the host drifts). `--strategy random` by default:
its proposals do not depend on the rewards, so both engines evaluate the same students even
though their latency measurements differ by the host's noise, and the proxy accuracies can
be compared exactly. The figures replace the block between the markers in docs/ray.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_support import cache_default_logits, fill_block  # noqa: E402

DOC = ROOT / "docs" / "ray.md"
ENGINES = ("in-process", "ray")


def one_search(engine: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    """One search on `engine` in a fresh database and export cache: its throughput and rows."""
    from akd_mobile.engines import Execution
    from akd_mobile.runs import RunStore
    from akd_mobile.search import SearchConfig, run_search
    from latency_db import open_db

    folder = work / f"{engine}-{seed}"
    folder.mkdir()
    os.environ["AKD_CACHE_DIR"] = str(folder / "cache")
    shutil.copytree(work / "logits", folder / "cache" / "logits")  # the teacher's logits, computed once
    db = folder / "search.sqlite"
    config = SearchConfig(budget=args.budget, batch=args.batch, seed=seed, strategy=args.strategy)
    ray = None
    if engine == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 _system_config={"worker_niceness": 0})
    try:
        start = time.perf_counter()
        summary = run_search(config, db, execution=Execution(ray="auto") if ray else None)
        wall = time.perf_counter() - start
    finally:
        if ray:
            ray.shutdown()
    rows = RunStore(open_db(db)).candidates(summary.run_id)
    return {"engine": engine, "seed": seed, "wall_s": wall, "per_hour": 3600 * len(rows) / wall,
            "scores": [(r.arch_key, r.status, r.accuracy) for r in rows],
            "latencies": {r.arch_key: r.latency_ms for r in rows if r.status == "done"}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--strategy", default="random")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="akd-ray-bench-") as tmp:
        work = Path(tmp)
        cache_default_logits(work)
        for i, seed in enumerate(seeds):
            for engine in ENGINES[i % 2:] + ENGINES[: i % 2]:
                row = one_search(engine, seed, args, work)
                print({k: v for k, v in row.items() if k not in ("scores", "latencies")}, flush=True)
                rows.append(row)
    command = (f".venv/bin/python benchmarks/bench_ray_engine.py --seeds {args.seeds} --budget {args.budget} "
               f"--batch {args.batch} --strategy {args.strategy}")
    fill_block(DOC, "bench_ray_engine", _block(rows, command, load_before))


def _block(rows: list[dict], command: str, load_before: float) -> str:
    lines = [
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}. "
        f"Load average {load_before:.2f} before and {os.getloadavg()[0]:.2f} after.",
        "",
        "| seed | engine | wall s | candidates/hour |",
        "| ---: | --- | ---: | ---: |",
    ]
    lines += [f"| {r['seed']} | {r['engine']} | {r['wall_s']:.0f} | {r['per_hour']:.0f} |" for r in rows]
    ratios, same, drift = [], [], []
    for seed in sorted({r["seed"] for r in rows}):
        here = next(r for r in rows if r["seed"] == seed and r["engine"] == "in-process")
        there = next(r for r in rows if r["seed"] == seed and r["engine"] == "ray")
        ratios.append(there["per_hour"] / here["per_hour"])
        same.append(here["scores"] == there["scores"])
        drift += [there["latencies"][k] / ms - 1 for k, ms in here["latencies"].items() if k in there["latencies"]]
    lines += ["", f"Ray against in-process: candidates per hour x{statistics.median(ratios):.2f} (median over "
                  f"{len(ratios)} seeds, {min(ratios):.2f} .. {max(ratios):.2f}). Same candidates and proxy "
                  f"accuracies: {sum(same)} of {len(same)} seeds. The two engines' measurements of the same students "
                  f"differ by {statistics.median(abs(d) for d in drift):.1%} in the median "
                  f"(largest {max(abs(d) for d in drift):.1%})." if drift else ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
