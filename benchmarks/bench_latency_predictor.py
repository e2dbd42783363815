"""How well the latency predictor does on students it never saw, beside the device's noise floor.

    .venv/bin/python benchmarks/bench_latency_predictor.py [--n 300] [--repeat 40] [--times 1] [--format tflite]
        [--held-out 150] [--sizes 10,30,100,300] [--db benchmarks/results/latency-sweep-FORMAT.sqlite] [--skip-sweep]

1. `akd-mobile latency sweep --n N --repeat R --times K` on the local profile (resumable: run the same
   command again after an interruption; what the database holds costs nothing; a missing
   database is first rebuilt from the CSV of step 3, so a sweep goes on across machines of the
   same device fingerprint);
2. `akd-mobile latency eval` on what the database holds (held out by architecture, seeded);
3. `akd-mobile latency export --csv --without-samples` of the measurements beside the doc (the
   statistics without the thousands of per-run latencies a 3 s minimum time gives each), so
   the evaluation can be rerun elsewhere (`latency import`, then `latency eval`).

The figures replace the block of this format between the markers in docs/latency-predictor.md.
Measure on a quiet host: a second process on the cores moves latencies by more than 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_support import fill_block  # noqa: E402

DOC = ROOT / "docs" / "latency-predictor.md"


def _akd(*args: str) -> str:
    exe = Path(sys.executable).with_name("akd-mobile")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"akd-mobile {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--times", type=int, default=1, help="measurements per student, one pass of the sweep apart")
    parser.add_argument("--format", dest="fmt", choices=("tflite", "pte"), default="tflite")
    parser.add_argument("--held-out", type=int, default=None, help="default: 150 when there are 250 or more, else half")
    parser.add_argument("--sizes", default="10,30,100,300")
    parser.add_argument("--db", type=Path, default=None, help="default: benchmarks/results/latency-sweep-FORMAT.sqlite")
    parser.add_argument("--skip-sweep", action="store_true", help="evaluate what the database holds")
    args = parser.parse_args(argv)
    args.db = args.db or ROOT / "benchmarks" / "results" / f"latency-sweep-{args.fmt}.sqlite"  # one format per file
    csv = ROOT / "docs" / f"latency-sweep-{args.fmt}.csv"
    if not args.db.exists() and csv.exists():
        print(_akd("latency", "import", str(csv), "--db", str(args.db)).strip())
    load_before = os.getloadavg()
    start = time.time()
    if not args.skip_sweep:
        sweep = subprocess.run([str(Path(sys.executable).with_name("akd-mobile")), "latency", "sweep", "--n",
                                str(args.n), "--repeat", str(args.repeat), "--times", str(args.times),
                                "--format", args.fmt, "--db", str(args.db)])
        if sweep.returncode != 0:
            raise SystemExit(f"the sweep stopped (exit {sweep.returncode}, its message above); after an "
                             "interruption the same command resumes it")
    sweep_s = time.time() - start
    load_after = os.getloadavg()
    common = ["--device", "local", "--format", args.fmt, "--db", str(args.db)]
    stats = json.loads(_akd("latency", "stats", "--db", str(args.db), "--json"))
    archs = stats["archs"]
    held_out = args.held_out or (150 if archs >= 250 else archs // 2)
    evaluation = json.loads(_akd("latency", "eval", *common, "--sizes", args.sizes, "--held-out", str(held_out),
                                 "--json"))
    _akd("latency", "export", "--csv", str(csv), "--without-samples", "--db", str(args.db))
    command = (f".venv/bin/python benchmarks/bench_latency_predictor.py --n {args.n} --repeat {args.repeat} "
               + (f"--times {args.times} " if args.times > 1 else "") + f"--format {args.fmt} --sizes {args.sizes}"
               + (f" --held-out {args.held_out}" if args.held_out else "") + (" --skip-sweep" if args.skip_sweep else ""))
    sweep = (f"No sweep in this run: the measurements already held, of `{csv.relative_to(ROOT)}`." if args.skip_sweep
             else f"Load average {load_before[0]:.2f} before and {load_after[0]:.2f} after the sweep "
                  f"({sweep_s / 60:.0f} min). Measurements: `{csv.relative_to(ROOT)}`.")
    fill_block(DOC, f"bench_latency_predictor:{args.fmt}", _block(evaluation, command, sweep))


def _block(e: dict, command: str, sweep: str) -> str:
    key = e["key"]
    lines = [
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {key['runtime_version']}, "
        f"{key['threads']} thread(s), device {key['device_fingerprint']}. {sweep}",
        "",
        f"{e['archs']} measured students, {e['held_out']} held out (seed {e['seed']}), each judged against the median "
        f"of its measurements ({e['held_out_measurements']} in all); each row a model fitted on the first n of the "
        "rest, one measurement each.",
        "",
        "| training students | within +-10% | 95% lower bound | RMSPE | Kendall tau | model's own band | channel tile "
        "| within +-10% of one of its own measurements |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in e["results"]:
        a = r["agreement"]
        lines.append(f"| {r['train_archs']} | {a['within']}/{a['trials']} = {a['share']:.1%} | {a['lower']:.1%} | "
                     f"{r['rmspe']:.1%} | {r['kendall_tau']:.3f} | +-{r['band']:.1%} | {r['tile']} | "
                     f"{r['near_a_measurement']}/{a['trials']} |")
    spread, of = e["held_out_spread"]
    noise = e["noise"]
    lines += ["", "Held-out students measured more than once: " + (
        "none." if not of else f"{of}, of which {spread} spread by more than 10% (slowest over fastest) themselves.")]
    lines += ["", "Noise floor (every repeated measurement against the first of its student): " + (
        "no student was measured twice." if noise is None else
        f"{noise['within']}/{noise['trials']} = {noise['share']:.1%} within +-10% "
        f"(95% lower bound {noise['lower']:.1%}).")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
