"""How fast a search stops on Ctrl-C (SIGINT to its process group, as a terminal sends it)
and on SIGTERM (to the process, as `timeout` and job schedulers send it), and whether any
process outlives it (issue 13).

Each trial starts a small CE search on digits (no teacher), waits until its first candidate
is stored and its export worker is running, waits a further random 0 to 5 s (so the signal
lands in any phase: export, measurement, training), sends the signal, and times the exit.
Signals alternate trial by trial, so both see the same host drift.

    .venv/bin/python benchmarks/bench_stop.py --trials 5
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from process_support import alive, children  # noqa: E402


def trial(signum: int, to_group: bool, folder: Path, rng: random.Random) -> tuple[float, int, bool]:
    """(seconds from signal to exit, exit status, whether a child outlived it)."""
    db = folder / "db.sqlite"
    env = {**os.environ, "AKD_CACHE_DIR": str(folder / "cache")}  # cold: every candidate exports
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "search", "--data", "digits", "--reward", "ce", "--budget", "8", "--batch", "4",
         "--target-ms", "0.25", "--db", str(db)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while True:
            time.sleep(0.2)
            if proc.poll() is not None:
                raise SystemExit("the search ended before the signal")
            workers = children(proc.pid)
            if workers and db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as conn:
                        if conn.execute("SELECT COUNT(*) FROM candidates WHERE status != 'pending'").fetchone()[0]:
                            break
                except sqlite3.OperationalError:
                    pass
        time.sleep(rng.uniform(0, 5))
        workers = children(proc.pid)
        sent = time.monotonic()
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        proc.wait(timeout=120)
        seconds = time.monotonic() - sent
        time.sleep(0.5)
        return seconds, proc.returncode, any(alive(w) for w in workers)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5, help="trials per signal")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kinds = [("Ctrl-C (SIGINT to the group)", signal.SIGINT, True), ("SIGTERM (to the process)", signal.SIGTERM, False)]
    results: dict[str, list[tuple[float, int, bool]]] = {k[0]: [] for k in kinds}
    for _ in range(args.trials):
        for name, signum, to_group in kinds:
            with tempfile.TemporaryDirectory() as tmp:
                results[name].append(trial(signum, to_group, Path(tmp), rng))
                print(name, results[name][-1], flush=True)
    print("\n| signal | trials | median s | min s | max s | exit status | processes left |\n| --- | --- | --- | --- | --- | --- | --- |")
    for name, signum, _ in kinds:
        rows = results[name]
        secs = [r[0] for r in rows]
        codes = sorted({r[1] for r in rows})
        print(f"| {name} | {len(rows)} | {statistics.median(secs):.2f} | {min(secs):.2f} | {max(secs):.2f} | "
              f"{', '.join(map(str, codes))} | {sum(r[2] for r in rows)} |")


if __name__ == "__main__":
    main()
