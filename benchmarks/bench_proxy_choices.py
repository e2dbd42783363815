"""How the KD proxy's settings (T, alpha, steps, batch norm recalibration) move the validation accuracy of the typical
`mnasnet-small` student (the one bench_distill.py picks) under a few proxy settings, one
seed, default teacher, Fashion-MNIST, one torch thread. Writes a table into docs/distill.md.

    .venv/bin/python benchmarks/bench_proxy_choices.py
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from akd_mobile.data import load_dataset
from akd_mobile.distill import ProxyBudget, proxy_score
from akd_mobile.space import get_space
from akd_mobile.teachers import cached_logits, load_teacher
from bench_distill import typical_student

DOC = Path(__file__).resolve().parents[1] / "docs" / "distill.md"
START, END = "<!-- bench_proxy_choices:start -->", "<!-- bench_proxy_choices:end -->"
SETTINGS = [
    ("kd", "80 steps, T=1, alpha=0.9 (default)", {}),
    ("kd", "80 steps, T=1, alpha=0.5", {"alpha": 0.5}),
    ("kd", "80 steps, T=2, alpha=0.9", {"temperature": 2.0}),
    ("kd", "80 steps, T=4, alpha=0.9", {"temperature": 4.0}),
    ("ce", "80 steps, labels only", {}),
    ("kd", "48 steps, default", {"steps": 48}),
    ("kd", "48 steps, no batch norm recalibration", {"steps": 48, "bn_images": 0}),
]


def main() -> None:
    data = load_dataset("fashion-mnist", seed=0)
    logits = cached_logits(load_teacher("default"), data)
    arch = typical_student(get_space("mnasnet-small", data.input_shape, data.num_classes))
    rows = []
    for mode, label, change in SETTINGS:
        budget = dataclasses.replace(ProxyBudget(), **change)
        r = proxy_score(arch, data, logits, budget, mode=mode, seed=0, threads=1)
        rows.append(f"| {mode} | {label} | {r.accuracy:.4f} | {r.train_s + r.eval_s:.1f} |")
        print(rows[-1])
    table = "\n".join([
        START,
        "Command: `.venv/bin/python benchmarks/bench_proxy_choices.py` (student "
        f"`{arch.key}`, seed 0, 2,500 validation images, one seed).",
        "",
        "| mode | proxy setting | validation accuracy | seconds |",
        "| --- | --- | --- | --- |",
        *rows,
        END,
    ])
    text = DOC.read_text()
    DOC.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: table, text, flags=re.S))


if __name__ == "__main__":
    main()
