"""The data path of the user's own images (issue 15): cache build rate, reading against
training, and memory against the set's size.

    .venv/bin/python benchmarks/bench_image_data.py [--work /tmp/akd-image-bench] [--rounds 3]

1. Cache build: a generated ImageFolder of 20,000 JPEGs of mixed sizes (100 to 500 px a
   side, colour) decoded into a fresh cache at 32 px (`mnasnet-small`) and at 224 px
   (`mnasnet-imagenet`), `--rounds` times each, alternating; images decoded per second.
2. Reading against training: on the 32 px cache, the proxy's batches (125 random training
   images) read and normalized, against the proxy's training steps on the same student
   (the search's two threads), alternating over rounds; the ratio is training time over
   reading time per batch.
3. Memory: a KD proxy score (the search's default budget, a teacher trained by our own
   `train_teacher` for the purpose) on a cache of 200,000 images against one of 20,000
   (the first 20,000 of the same generated files, through the CSV layout), each in a
   fresh process, alternating; peak resident memory (VmHWM).

The generated files and caches live in `--work` (several GB); the figures go into
docs/data.md between the bench_image_data markers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_support import fill_block

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOC = ROOT / "docs" / "data.md"
CLASSES = 10


def generate(folder: Path, count: int, sizes: tuple[int, int], seed: int) -> list[tuple[Path, int]]:
    """`count` JPEGs in `folder/<class>/`: a class-coloured gradient with noise, each of a random
    size within `sizes`; returns (path, label) pairs. Files already there are kept."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        label = i % CLASSES
        path = folder / f"c{label}" / f"{i:06d}.jpg"
        h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            base = np.linspace(0, 200, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
            base[..., label % 3] += 25 * (label // 3)
            noise = rng.integers(0, 40, (h, w, 3))
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
        out.append((path, label))
    return out


def write_csv(pairs: list[tuple[Path, int]], path: Path) -> Path:
    path.write_text("path,label\n" + "".join(f"{p.relative_to(path.parent)},{label}\n" for p, label in pairs))
    return path


def build_rate(data: Path, size: int, space: str, cache: Path) -> float:
    """Images decoded per second into a fresh cache (a fresh process, so nothing is warm)."""
    shutil.rmtree(cache, ignore_errors=True)
    code = ("import sys, time, json; sys.path.insert(0, %r)\n"
            "from akd_mobile.data import DataOptions, load_dataset\n"
            "t = time.perf_counter(); d = load_dataset(%r, options=DataOptions(input_size=%d), space=%r)\n"
            "print(json.dumps({'s': time.perf_counter() - t, 'n': len(d.train_y) + len(d.val_y) + len(d.test_y)}))"
            % (str(ROOT), str(data), size, space))
    out = json.loads(_run(code, cache))
    return out["n"] / out["s"]


def read_vs_train(data_spec: Path, cache: Path, rounds: int) -> dict:
    """Seconds per proxy batch read from the cache and per proxy training step, alternating."""
    code = f"""
import json, random, sys, time
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
import torch
from akd_mobile.data import DataOptions, load_dataset
from akd_mobile.distill import ProxyBudget, proxy_score
from akd_mobile.engines import TRAIN_THREADS
from akd_mobile.space import get_space
data = load_dataset({str(data_spec)!r}, options=DataOptions(input_size=32))
space = get_space("mnasnet-small", data.input_shape, data.num_classes)
arch = space.sample(random.Random(7))
budget = ProxyBudget()
reads, trains = [], []
for r in range({rounds}):
    perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(r))
    t = time.perf_counter()
    for s in range(budget.steps):
        data.train_x[perm[s * budget.batch_size:(s + 1) * budget.batch_size]]
    reads.append((time.perf_counter() - t) / budget.steps)
    result = proxy_score(arch, data, None, budget, "ce", seed=r, threads=TRAIN_THREADS)
    trains.append(result.train_s / result.steps)
print(json.dumps({{"read_s": reads, "train_s": trains, "arch": arch.key}}))
"""
    return json.loads(_run(code, cache))


def peak_rss(data_spec: Path, teacher: Path, cache: Path) -> dict:
    """Peak resident memory (MiB) of a fresh process loading the set and running one KD proxy score."""
    code = f"""
import json, random, sys
sys.path.insert(0, {str(ROOT)!r})
from akd_mobile.data import DataOptions, load_dataset
from akd_mobile.distill import ProxyBudget, proxy_score
from akd_mobile.engines import TRAIN_THREADS
from akd_mobile.space import get_space
from akd_mobile.teachers import cached_logits, load_teacher
def mib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":")) / 1024
data = load_dataset({str(data_spec)!r}, options=DataOptions(input_size=32))
logits = cached_logits(load_teacher({str(teacher)!r}), data)
arch = get_space("mnasnet-small", data.input_shape, data.num_classes).sample(random.Random(7))
before = mib("VmHWM")
result = proxy_score(arch, data, logits, ProxyBudget(), "kd", seed=0, threads=TRAIN_THREADS)
print(json.dumps({{"images": len(data.train_y) + len(data.val_y) + len(data.test_y), "hwm_mib": mib("VmHWM"),
                  "before_score_mib": before, "accuracy": result.accuracy}}))
"""
    return json.loads(_run(code, cache))


def _run(code: str, cache: Path) -> str:
    env = {**os.environ, "AKD_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1]


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/akd-image-bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    photos = work / "photos"
    print(f"generating {args.small} JPEGs of 100-500 px in {photos}", flush=True)
    generate(photos, args.small, (100, 500), seed=0)
    rates: dict[str, list[float]] = {"32 px (mnasnet-small)": [], "224 px (mnasnet-imagenet)": []}
    for r in range(args.rounds):
        for (label, values), (size, space) in zip(rates.items(), ((32, "mnasnet-small"), (224, "mnasnet-imagenet"))):
            values.append(build_rate(photos, size, space, work / "cache-build"))
            print(f"round {r}: build at {label}: {values[-1]:.0f} images/s", flush=True)

    cache = work / "cache"
    speed = read_vs_train(photos, cache, args.rounds)
    ratios = [t / r for t, r in zip(speed["train_s"], speed["read_s"])]
    print(f"read {speed['read_s']} s/batch, train {speed['train_s']} s/step", flush=True)

    small_files = work / "small-files"
    print(f"generating {args.large} JPEGs of 48-96 px in {small_files}", flush=True)
    pairs = generate(small_files, args.large, (48, 96), seed=1)
    small_csv = write_csv(pairs[: args.small], small_files / f"first-{args.small}.csv")
    large_csv = write_csv(pairs, small_files / f"all-{args.large}.csv")
    teacher = work / "teacher.pt"
    if not teacher.exists():
        _run(f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from akd_mobile.data import DataOptions, load_dataset
from akd_mobile.teachers import save_teacher, train_teacher
data = load_dataset({str(small_csv)!r}, options=DataOptions(input_size=32))
model, result = train_teacher("resnet", data, 1)
save_teacher(model, result, data, {str(teacher)!r})
print(result.test_accuracy)
""", cache)
    for spec in (small_csv, large_csv):  # caches and teacher logits built before anything is measured
        peak_rss(spec, teacher, cache)
    memory: dict[int, list[dict]] = {args.small: [], args.large: []}
    for r in range(args.rounds):
        for spec in (small_csv, large_csv):
            row = peak_rss(spec, teacher, cache)
            memory[row["images"]].append(row)
            print(f"round {r}: {row}", flush=True)
    hwm = {n: [row["hwm_mib"] for row in rows] for n, rows in memory.items()}
    ratio = [big / small for small, big in zip(hwm[args.small], hwm[args.large])]

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lines = [
        f"Command: `.venv/bin/python benchmarks/bench_image_data.py --rounds {args.rounds}` on this host ({cpu}, "
        f"{os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}; medians with (min..max) over {args.rounds} rounds, "
        f"whole run {(time.perf_counter() - started) / 60:.0f} min.",
        "",
        "| measurement | figure |",
        "| --- | --- |",
        *[f"| cache build, {args.small:,} JPEGs of 100-500 px, at {label} | {spread(v)} images/s |" for label, v in rates.items()],
        f"| proxy batch read from the 32 px cache (125 random images, normalized) | {spread([s * 1e3 for s in speed['read_s']], '{:.1f}')} ms |",
        f"| proxy training step on it (student {speed['arch']}, two threads) | {spread([s * 1e3 for s in speed['train_s']], '{:.0f}')} ms |",
        f"| training over reading, per batch | {spread(ratios, '{:.0f}')}x |",
        f"| peak RSS, KD proxy score, {args.small:,}-image cache | {spread(hwm[args.small])} MiB |",
        f"| peak RSS, KD proxy score, {args.large:,}-image cache | {spread(hwm[args.large])} MiB |",
        f"| ratio of the two, round by round | {spread(ratio, '{:.3f}')} |",
    ]
    fill_block(DOC, "bench_image_data", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    random.seed(0)
    main()
