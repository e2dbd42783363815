"""Measure the KD proxy: KD vs CE step cost, proxy-score wall time, images/s and FLOP-rate use.

Run from the repository root:

    .venv/bin/python benchmarks/bench_distill.py --repeats 5 --threads 1,2

It picks a typical `mnasnet-small` student (about 100k parameters), computes the default
teacher's logits over Fashion-MNIST once (cached), then times `proxy_score` in `kd` and `ce`
mode on each thread count, all interleaved, with the default `ProxyBudget` (10,000 training
images). The figures go into docs/distill.md between the `bench` markers, with this command
line.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from akd_mobile.builder import build_student
from akd_mobile.data import load_dataset
from akd_mobile.distill import ProxyBudget, proxy_score, torch_threads
from akd_mobile.space import ArchSpec, SearchSpace, get_space
from akd_mobile.teachers import cached_logits, load_teacher
from bench_support import fill_block


def typical_student(space: SearchSpace, target_params: int = 100_000, samples: int = 400) -> ArchSpec:
    """Among seeded samples within 10% of `target_params`, the one of median MACs."""
    rng = random.Random(0)
    near = [a for a in (space.sample(rng) for _ in range(samples)) if abs(space.cost(a).params - target_params) <= 0.1 * target_params]
    near.sort(key=lambda a: space.cost(a).macs)
    return near[len(near) // 2]


def train_flops_per_image(arch: ArchSpec) -> float:
    """FLOPs of one training step per image: 3x the forward pass counted by torch.

    Forward, input gradient and weight gradient each cost about one forward pass. torch's
    FLOP counter is not used for the backward pass because it counts grouped (depthwise)
    convolution gradients as dense ones (about 14x too many on these students).
    """
    model = build_student(arch, seed=0).eval()
    x = torch.randn(8, *arch.input_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return 3 * counter.get_total_flops() / 8


def cpu_peak() -> tuple[float, str]:
    """Estimated peak fp32 FLOP/s of the CPUs torch may use, and how it was estimated."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cores = len(os.sched_getaffinity(0))
    if fields.get("CPU max MHz"):
        mhz, source = float(fields["CPU max MHz"]), "CPU max MHz"
    else:
        mhz, source = float(fields.get("BogoMIPS", "0")) / 2, "BogoMIPS / 2 (no MHz field under this hypervisor)"
    flags = set(fields.get("Flags", "").split())
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma = 2 if "fma" in flags or "avx512f" in flags else 1
    # Vector FMA pipes per core at that width: server Xeons with AVX-512 have two 512-bit ones
    # (an assumption; lscpu cannot tell); AMD's Zen 4 runs AVX-512 on two 256-bit pipes,
    # which is one 512-bit FMA per cycle.
    units = 1 if lanes == 16 and fields.get("Vendor ID") == "AuthenticAMD" else 2
    per_cycle = lanes * fma * units
    peak = cores * mhz * 1e6 * per_cycle
    how = (
        f"{cores} cores x {mhz:.0f} MHz ({source}) x {per_cycle} FP32 FLOP/cycle "
        f"({lanes} lanes ({'AVX-512' if lanes == 16 else 'AVX2' if lanes == 8 else 'SSE'}) x {fma} (FMA) x {units} FMA units)"
        f" = {peak / 1e9:.0f} GFLOP/s; model: {fields.get('Model name', '?')}"
    )
    return peak, how


def host_gflops() -> float:
    """One thread's float32 matmul rate now: a yardstick of how fast the host runs at the moment."""
    a = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch_threads(1):
        for _ in range(3):
            a @ a
        start = time.perf_counter()
        for _ in range(30):
            a @ a
        return 30 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--teacher", default="default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="Comma-separated torch thread counts to measure.")
    parser.add_argument("--out", type=Path, default=Path("docs/distill.md"))
    args = parser.parse_args()

    load_start = os.getloadavg()
    data = load_dataset(args.data)
    space = get_space("mnasnet-small", data.input_shape, data.num_classes)
    arch = typical_student(space)
    cost = space.cost(arch)
    budget = ProxyBudget()
    teacher = load_teacher(args.teacher)
    with tempfile.TemporaryDirectory() as fresh:  # time a miss, then a hit, in an empty cache
        t0 = time.perf_counter()
        logits = cached_logits(teacher, data, Path(fresh))
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached_logits(teacher, data, Path(fresh))
        hit_s = time.perf_counter() - t0
    flops_img = train_flops_per_image(arch)
    peak, how = cpu_peak()

    thread_counts = [int(t) for t in args.threads.split(",")]
    host_start = host_gflops()
    # thread counts and modes interleaved in each repeat: the host's own speed drifts over minutes
    runs: dict[tuple[int, str], list] = {(t, m): [] for t in thread_counts for m in ("kd", "ce")}
    for _ in range(args.repeats):
        for threads in thread_counts:
            with torch_threads(threads):
                for mode in ("kd", "ce"):
                    start = time.perf_counter()
                    result = proxy_score(arch, data, logits, budget, mode=mode, seed=0)
                    runs[threads, mode].append((time.perf_counter() - start, result))
                    print(f"threads {threads} {mode}: {runs[threads, mode][-1][0]:.2f} s, train {result.train_s:.2f} s, "
                          f"acc {result.accuracy:.4f}", file=sys.stderr)
    host_end = host_gflops()
    rows = []
    for threads in thread_counts:
        for mode in ("kd", "ce"):
            done = runs[threads, mode]
            wall = statistics.median(w for w, _ in done)
            train = statistics.median(r.train_s for _, r in done)
            ips = statistics.median(r.images_per_s for _, r in done)
            rows.append({
                "threads": threads, "mode": mode, "wall_s": wall, "train_s": train,
                "eval_s": statistics.median(r.eval_s for _, r in done),
                "images_per_s": ips, "gflops": ips * flops_img / 1e9,
                "accuracy": statistics.median(r.accuracy for _, r in done),
                "min_wall_s": min(w for w, _ in done), "max_wall_s": max(w for w, _ in done),
            })
    load_end = os.getloadavg()

    command = "python benchmarks/bench_distill.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` (from the repository root, `.venv/bin/python`).",
        "",
        f"- Host: {platform.machine()}, {how}.",
        f"- torch {torch.__version__}; load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; "
        f"the host's own speed, one thread's 1024x1024 float32 matmul: {host_start:.0f} GFLOP/s at the start, "
        f"{host_end:.0f} at the end (it drifts by 10-20% over minutes on a shared host).",
        f"- Student `{arch.canonical}` (key {arch.key}): {cost.params:,} parameters, {cost.macs / 1e6:.2f} MMACs per image; "
        f"one training step costs {flops_img / 1e6:.1f} MFLOP per image (3 x the forward FLOPs torch counts).",
        f"- Budget: {budget.steps} steps x {budget.batch_size} images = {budget.steps * budget.batch_size:,} training images, "
        f"{budget.eval_images} validation images; {args.repeats} repeats per row, thread counts and KD and CE interleaved.",
        f"- Teacher logits ({args.teacher}, {len(data.train_y):,} images, torch's default threads): "
        f"{first_s:.1f} s to compute and store, {hit_s * 1000:.0f} ms to read back from the cache.",
        "",
        "| threads | mode | proxy wall s (median) | min..max s | train s | eval s | train images/s | GFLOP/s | of peak | val accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['threads']} | {r['mode']} | {r['wall_s']:.2f} | {r['min_wall_s']:.2f}..{r['max_wall_s']:.2f} | "
            f"{r['train_s']:.2f} | {r['eval_s']:.2f} | {r['images_per_s']:.0f} | {r['gflops']:.1f} | "
            f"{r['gflops'] * 1e9 / peak:.1%} | {r['accuracy']:.4f} |"
        )
    lines.append("")
    for threads in sorted({r["threads"] for r in rows}):
        kd = next(r for r in rows if r["threads"] == threads and r["mode"] == "kd")
        ce = next(r for r in rows if r["threads"] == threads and r["mode"] == "ce")
        lines.append(f"- {threads} thread(s): KD / CE training time = {kd['train_s'] / ce['train_s']:.3f} "
                     f"(limit 1.15); KD proxy wall time {kd['wall_s']:.2f} s median (limit 15 s).")
    block = "\n".join(lines)
    print(block)
    fill_block(args.out, "bench_distill", block)


if __name__ == "__main__":
    main()
