"""The published proxy fidelity study (issue 12): Fashion-MNIST, mnasnet-small, 24 students
in 4 cost bins, two teachers of two families, proxy budgets 40/80/160/320 with 2 seeds in KD
and CE mode, full training of 3 epochs.

Resumable: the rows live in `benchmarks/results/proxy-fidelity.sqlite`, so rerunning the same
command continues where a kill stopped it. After every training it rewrites the CSV of raw
rows (`docs/proxy-fidelity.csv`) and the report block of `docs/proxy-fidelity.md`, so a
partial study can be committed at any time.

    .venv/bin/python benchmarks/bench_proxy_fidelity.py            # run / continue, keep docs current
    .venv/bin/python benchmarks/bench_proxy_fidelity.py --report   # only rewrite the docs
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from akd_mobile.fidelity import analyze, format_report  # noqa: E402
from akd_mobile.study import StudyStore, run_study, study_config, write_csv  # noqa: E402
from latency_db import open_db  # noqa: E402
from bench_support import fill_block  # noqa: E402

DB = ROOT / "benchmarks" / "results" / "proxy-fidelity.sqlite"
CSV = ROOT / "docs" / "proxy-fidelity.csv"
DOC = ROOT / "docs" / "proxy-fidelity.md"
TEACHERS = (str(ROOT / "benchmarks" / "teachers" / "resnet-wide-fashion-mnist.pt"),
            str(ROOT / "benchmarks" / "teachers" / "vgg-fashion-mnist.pt"))
# Pinned, so a later change of the search's defaults does not start a new study.
OPTIONS = dict(data="fashion-mnist", space="mnasnet-small", students=24, bins=4, budgets="40,80,160,320", seeds=2,
               epochs=3, convergence_students=4, variants=("temperature=4", "alpha=0.5", "lr=0.1"),
               proxy_lr=0.2, proxy_temperature=1.0, proxy_alpha=0.9, proxy_batch_size=125, seed=0, augment="none")
COMMAND = "`.venv/bin/python benchmarks/bench_proxy_fidelity.py`"


def write_docs(store: StudyStore, study_id: int) -> None:
    """The CSV of raw rows and the report block of the doc, from what the study holds now."""
    write_csv(store, study_id, CSV)
    report = format_report(analyze(store.get(study_id), store.trainings(study_id)))
    block = (f"Command: {COMMAND} (`akd-mobile proxy show {study_id} --db {DB.relative_to(ROOT)}` "
             f"prints the same). Raw rows: `docs/{CSV.name}`.\n\n```\n{report}\n```")
    fill_block(DOC, "study", block)
    with sqlite3.connect(DB) as conn:  # the committed file then holds every row
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="only rewrite the CSV and the doc")
    parser.add_argument("--torch-device", default="cpu")
    args = parser.parse_args()
    config = study_config(teachers=TEACHERS, torch_device=args.torch_device, **OPTIONS)
    db = open_db(DB)
    store = StudyStore(db)
    if args.report:
        ids = store.ids()
        if not ids:
            raise SystemExit(f"no study in {DB} yet")
        write_docs(store, ids[-1])
        return

    def progress(p) -> None:
        if p.job is not None:
            print(f"{p.done}/{p.total} student {p.job.student} {p.job.kind} {p.job.mode} {p.job.setting or 'base'} "
                  f"{p.job.budget} seed {p.job.seed}: {p.accuracy:.4f} in {p.seconds:.1f} s", flush=True)
            write_docs(store, p.study_id)

    study_id = run_study(config, db, progress)
    write_docs(store, study_id)


if __name__ == "__main__":
    main()
