"""`search --latency hybrid` (and `predict`) against `--latency measure`: candidates per hour
and the best student under the target, the same search side by side.

    .venv/bin/python benchmarks/bench_hybrid_search.py [--model-db benchmarks/results/latency-sweep-tflite.sqlite]
        [--modes measure,hybrid] [--seeds 0,1,2] [--budget 16] [--constraint hard] [--target-ms T]

Needs a latency model of this host's `local` device in `--model-db` (bench_latency_predictor.py
sweeps and `akd-mobile latency fit --device local --db ...` fits one). For each seed, every mode
runs the default search (Fashion-MNIST, built-in teacher, `mnasnet-small`) with that seed on
its own copy of the model database and its own export cache, so no mode finds another's
measurements or exports; the order of the modes rotates from seed to seed (the host drifts).
The best candidate under the target of a run that predicts is measured afterwards if it was
predicted, and counts only if the measurement keeps it under the target. The figures replace
the block of the target (the profile's, or `--target-ms`) between the markers in
docs/latency-predictor.md. Measure on a quiet host.
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

DOC = ROOT / "docs" / "latency-predictor.md"


def one_search(mode: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    """Run one search in a fresh database copy and export cache; its throughput and best under target."""
    from akd_mobile.latency import LatencyService
    from akd_mobile.search import SearchConfig, resolve_device_defaults, run_search
    from akd_mobile.space import get_space
    from devices.profiles import open_device
    from latency_db import open_db

    folder = work / f"{mode}-{seed}"
    folder.mkdir()
    db = folder / "search.sqlite"
    shutil.copyfile(args.model_db, db)
    os.environ["AKD_CACHE_DIR"] = str(folder / "cache")
    shutil.copytree(work / "logits", folder / "cache" / "logits")  # the teacher's logits, computed once
    config = SearchConfig(budget=args.budget, seed=seed, constraint=args.constraint, target_ms=args.target_ms,
                          latency=mode)
    start = time.perf_counter()
    summary = run_search(config, db)
    wall = time.perf_counter() - start
    best = summary.best_under_target
    verified = None
    if best is not None:
        resolved = resolve_device_defaults(config)
        arch = get_space(resolved.space).decode(best["arch"])
        with open_db(db) as handle:
            latency = LatencyService(open_device(resolved.device), handle, resolved.measure).latency(arch)
        verified = latency.result.median_ms
    counted = summary.evaluated + summary.failed + summary.latency_sources.get("skipped", 0)
    return {
        "mode": mode, "seed": seed, "wall_s": wall, "candidates": counted, "per_hour": 3600 * counted / wall,
        "sources": summary.latency_sources, "split": summary.time_split_s, "target_ms": summary.config["target_ms"],
        "best_accuracy": None if best is None else best["accuracy"], "best_ms": None if best is None else best["latency_ms"],
        "best_measured_ms": verified,
        "best_counts": best is not None and verified is not None and verified <= summary.config["target_ms"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-db", type=Path, default=ROOT / "benchmarks" / "results" / "latency-sweep-tflite.sqlite")
    parser.add_argument("--modes", default="measure,hybrid")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--constraint", choices=("soft", "hard"), default="hard")
    parser.add_argument("--target-ms", type=float, default=None, help="default: the local profile's")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.model_db.is_file():
        raise SystemExit(f"no model database {args.model_db}: run bench_latency_predictor.py and latency fit first")
    rows = []
    with tempfile.TemporaryDirectory(prefix="akd-hybrid-") as tmp:
        work = Path(tmp)
        cache_default_logits(work)
        for i, seed in enumerate(seeds):
            for mode in modes[i % len(modes):] + modes[: i % len(modes)]:
                row = one_search(mode, seed, args, work)
                print(row, flush=True)
                rows.append(row)
    command = (f".venv/bin/python benchmarks/bench_hybrid_search.py --modes {args.modes} --seeds {args.seeds} "
               f"--budget {args.budget} --constraint {args.constraint}"
               + (f" --target-ms {args.target_ms:g}" if args.target_ms else ""))
    name = f"bench_hybrid_search:target-{args.target_ms:g}" if args.target_ms else "bench_hybrid_search:profile-target"
    fill_block(DOC, name, _block(rows, modes, command))


def _block(rows: list[dict], modes: list[str], command: str) -> str:
    lines = [
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}. "
        f"Load average {os.getloadavg()[0]:.2f} at the end.",
        "",
        "| seed | mode | wall s | candidates/hour | database / measured / predicted / skipped | seconds training / "
        "waiting for exports / measuring | best under target: accuracy, ms (measured ms) |",
        "| ---: | --- | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        s = r["sources"]
        best = "none" if r["best_accuracy"] is None else (
            f"{r['best_accuracy']:.4f}, {r['best_ms']:.3f} ({r['best_measured_ms']:.3f})"
            + ("" if r["best_counts"] else ": over the target when measured"))
        lines.append(f"| {r['seed']} | {r['mode']} | {r['wall_s']:.0f} | {r['per_hour']:.0f} | "
                     f"{s['database']} / {s['measured']} / {s['predicted']} / {s['skipped']} | "
                     f"{r['split']['train_s']:.0f} / {r['split']['export_s']:.0f} / {r['split']['measure_s']:.0f} | {best} |")
    base = modes[0]
    for mode in modes[1:]:
        ratios, deltas = [], []
        for seed in sorted({r["seed"] for r in rows}):
            a = next(r for r in rows if r["seed"] == seed and r["mode"] == base)
            b = next(r for r in rows if r["seed"] == seed and r["mode"] == mode)
            ratios.append(b["per_hour"] / a["per_hour"])
            if a["best_counts"] and b["best_counts"]:
                deltas.append(b["best_accuracy"] - a["best_accuracy"])
        lines += ["", f"{mode} against {base}: candidates per hour x{statistics.median(ratios):.2f} (median over "
                      f"{len(ratios)} seeds, {min(ratios):.2f} .. {max(ratios):.2f}); best accuracy under the target "
                      + ("differs by " + ", ".join(f"{d:+.4f}" for d in deltas) if deltas else
                         "not comparable (a run without a measured student under the target)") + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
