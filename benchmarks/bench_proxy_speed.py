"""What each of the KD proxy's speed choices buys, on the typical student of bench_distill.py.

    .venv/bin/python benchmarks/bench_proxy_speed.py [--rounds 5] [--steps 10]

Times training steps (KD loss, batches of 125, channels-last, SGD) under each variant,
the variants interleaved over `--rounds` rounds, each run a fresh process (glibc's heap
and torch's thread pools start afresh) with a fresh model, 3 untimed steps, then
`--steps` timed ones; reports the median seconds per step and the page faults per step.
Then times the validation pass over 2,500 images in batches of 1,000 and of 250, also
one fresh process each. Writes a table into docs/distill.md between the bench_proxy_speed markers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from akd_mobile.builder import build_student
from akd_mobile.data import load_dataset
from akd_mobile.distill import evaluate, kd_loss, torch_threads
from akd_mobile.malloc import retain_freed_memory
from akd_mobile.shards import ShardedSteps
from akd_mobile.space import get_space
from bench_distill import typical_student
from bench_support import fill_block

DOC = Path(__file__).resolve().parents[1] / "docs" / "distill.md"
BATCH = 125
# name: (threads, shards, keep freed memory, bfloat16 autocast)
VARIANTS = {
    "1 thread (the proxy's way)": (1, 1, True, False),
    "1 thread, glibc's default malloc settings": (1, 1, False, False),
    "1 thread, bfloat16 autocast": (1, 1, True, True),
    "2 threads, torch's intra-op threading": (2, 1, True, False),
    "2 threads, two shards (the proxy's way)": (2, 2, True, False),
}


def time_steps(arch, data, logits, variant, steps: int) -> tuple[float, float]:
    """(seconds per step, minor page faults per step) of one variant."""
    threads, shards, keep, bf16 = variant
    x, y = data.train_x, data.train_y

    def shard_loss(model, idx):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            out = model(x[idx].contiguous(memory_format=torch.channels_last))
        return kd_loss(out.float(), logits[idx], y[idx], 1.0, 0.9)

    model = build_student(arch, seed=0).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    memory = retain_freed_memory() if keep else contextlib.nullcontext()
    with torch_threads(threads // shards), memory, ShardedSteps(model, shards, threads // shards) as sharded:
        for i in range(3 + steps):
            if i == 3:
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
            sharded.gradients(torch.arange(i * BATCH, (i + 1) * BATCH), shard_loss)
            optimizer.step()
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return seconds / steps, faults / steps


def time_validation(arch, data, batch_size: int) -> float:
    model = build_student(arch, seed=0).to(memory_format=torch.channels_last).eval()
    with torch_threads(2), retain_freed_memory():
        start = time.perf_counter()
        evaluate(model, data.val_x[:2500], data.val_y[:2500], batch_size=batch_size)
        return time.perf_counter() - start


def _in_child(*args: str) -> list[float]:
    """Run this script with `args` in a fresh process; the numbers it prints."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    """One measurement, in this (fresh) process: prints a JSON list."""
    data = load_dataset("fashion-mnist", seed=0)
    arch = typical_student(get_space("mnasnet-small", data.input_shape, data.num_classes))
    if args.validation:
        print(json.dumps([time_validation(arch, data, args.validation)]))
        return
    logits = torch.randn(len(data.train_y), data.num_classes, generator=torch.Generator().manual_seed(0))
    print(json.dumps(list(time_steps(arch, data, logits, VARIANTS[args.variant], args.steps))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variant", choices=VARIANTS, help="internal: measure one variant in this process")
    parser.add_argument("--validation", type=int, help="internal: time validation with this batch size")
    args = parser.parse_args()
    if args.variant or args.validation:
        child(args)
        return
    data = load_dataset("fashion-mnist", seed=0)
    arch = typical_student(get_space("mnasnet-small", data.input_shape, data.num_classes))
    steps: dict[str, list[list[float]]] = {name: [] for name in VARIANTS}
    validation: dict[int, list[float]] = {1000: [], 250: []}
    for _ in range(args.rounds):
        for name in VARIANTS:
            steps[name].append(_in_child("--variant", name, "--steps", str(args.steps)))
            print(f"{name}: {steps[name][-1][0]:.4f} s/step", flush=True)
        for batch_size in validation:
            validation[batch_size] += _in_child("--validation", str(batch_size))
    base = statistics.median(s for s, _ in steps["1 thread (the proxy's way)"])
    rows = []
    for name, results in steps.items():
        per_step = statistics.median(s for s, _ in results)
        rows.append(f"| {name} | {per_step:.3f} | {base / per_step:.2f}x | "
                    f"{statistics.median(f for _, f in results):,.0f} |")
    block = "\n".join([
        f"Command: `.venv/bin/python benchmarks/bench_proxy_speed.py --rounds {args.rounds} --steps {args.steps}` "
        f"(student `{arch.key}`, batches of {BATCH}, KD loss; medians over the rounds).",
        "",
        "| training step | seconds per step | speed against one thread | page faults per step |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        "Validation pass over 2,500 images, two threads: "
        + ", ".join(f"batches of {b:,}: {statistics.median(v):.2f} s" for b, v in validation.items()) + ".",
    ])
    print(block)
    fill_block(DOC, "bench_proxy_speed", block)


if __name__ == "__main__":
    main()
