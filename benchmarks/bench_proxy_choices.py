"""How the KD proxy's settings move its score, and how much the score moves by seed alone.

Scores three `mnasnet-small` students (the median-MACs sample near 50k, 100k and 200k
parameters, picked as bench_distill.py picks its typical student) under each proxy
setting with two seeds each: default teacher, Fashion-MNIST, each score on the search's
torch threads (`akd_mobile.engines.TRAIN_THREADS`), one after the other. Reports per setting the mean validation accuracy and the seed
spread (the mean over students of |seed 0 - seed 1|). Writes a table into docs/distill.md.

    .venv/bin/python benchmarks/bench_proxy_choices.py
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from akd_mobile.data import load_dataset
from akd_mobile.distill import ProxyBudget, proxy_score
from akd_mobile.engines import TRAIN_THREADS
from akd_mobile.space import get_space
from akd_mobile.teachers import cached_logits, load_teacher
from bench_distill import typical_student
from bench_support import fill_block

DOC = Path(__file__).resolve().parents[1] / "docs" / "distill.md"
STUDENT_PARAMS = (50_000, 100_000, 200_000)
SEEDS = (0, 1)
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("kd", "lr 0.2, T=1, alpha=0.9 (default)", {}),
    ("kd", "lr 0.05 (the first default)", {"lr": 0.05}),
    ("kd", "lr 0.1", {"lr": 0.1}),
    ("kd", "lr 0.4", {"lr": 0.4}),
    ("kd", "T=2", {"temperature": 2.0}),
    ("kd", "T=4", {"temperature": 4.0}),
    ("kd", "alpha=0.5", {"alpha": 0.5}),
    ("kd", "no batch norm recalibration", {"bn_images": 0}),
    ("ce", "labels only (lr 0.2)", {}),
]


def main() -> None:
    data = load_dataset("fashion-mnist", seed=0)
    logits = cached_logits(load_teacher("default"), data)
    space = get_space("mnasnet-small", data.input_shape, data.num_classes)
    students = [typical_student(space, params) for params in STUDENT_PARAMS]
    results = []
    for mode, _, change in SETTINGS:
        budget = dataclasses.replace(ProxyBudget(), **change)
        for arch in students:
            for seed in SEEDS:
                results.append(proxy_score(arch, data, logits, budget, mode=mode, seed=seed,
                                           threads=TRAIN_THREADS).accuracy)
    accuracies = iter(results)
    rows = []
    for mode, label, _ in SETTINGS:
        per_student = [[next(accuracies) for _ in SEEDS] for _ in STUDENT_PARAMS]
        means = [statistics.fmean(a) for a in per_student]
        spread = statistics.fmean(abs(a[0] - a[1]) for a in per_student)
        rows.append(f"| {mode} | {label} | {statistics.fmean(means):.3f} | {spread:.3f} | "
                    + " / ".join(f"{m:.3f}" for m in means) + " |")
        print(rows[-1], flush=True)
    default = ProxyBudget()
    table = "\n".join([
        "Command: `.venv/bin/python benchmarks/bench_proxy_choices.py`: three students (median-MACs "
        "samples near 50k, 100k and 200k parameters), seeds 0 and 1, 2,500 validation images, the "
        f"default budget ({default.steps} steps of {default.batch_size}) with one setting changed per row, "
        f"{TRAIN_THREADS} torch threads per score.",
        "",
        "| mode | proxy setting | mean accuracy | seed spread (mean abs. difference) | per student (50k / 100k / 200k) |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ])
    fill_block(DOC, "bench_proxy_choices", table)


if __name__ == "__main__":
    main()
