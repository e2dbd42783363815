"""The loopback device's benchmark tool: LiteRT `benchmark_model`'s flags in, its summary lines out.

    akd-loopback-runner --graph=MODEL --num_threads=N --num_runs=R --warmup_runs=W --min_secs=S

It times `.tflite` and `.pte` files with this host's runtimes (the `local` backend's
`devices.local_runner.time_model`) and prints the lines LiteRT's `benchmark_model` prints
(`count=... avg=... median=...` in microseconds, `Inference timings in us: ...`), so the
parser that reads a phone's tool reads the loopback device too. The `adb` backend pushes it
to the loopback device as a launcher script (`write_launcher`) and runs it like a phone's tool.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

LAUNCHER_NAME = "akd-loopback-runner"


def summary_lines(init_ms: float, warmup_ms: list[float], samples_ms: list[float]) -> list[str]:
    """`benchmark_model`'s summary lines for the given timings (printed in microseconds)."""
    lines = [f"INFO: Initialized session in {init_ms:.3f}ms."]
    if warmup_ms:
        lines.append(f"INFO: {_stats_line(warmup_ms)}")
    lines.append(f"INFO: {_stats_line(samples_ms)}")
    first = (warmup_ms or samples_ms)[0]
    warm_avg = statistics.fmean(warmup_ms) if warmup_ms else 0.0
    lines.append(
        f"INFO: Inference timings in us: Init: {init_ms * 1e3:.0f}, First inference: {first * 1e3:.0f}, "
        f"Warmup (avg): {warm_avg * 1e3:.3f}, Inference (avg): {statistics.fmean(samples_ms) * 1e3:.3f}"
    )
    return lines


def _stats_line(samples_ms: list[float]) -> str:
    us = [s * 1e3 for s in samples_ms]
    ordered = sorted(us)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    # benchmark_model prints whole microseconds; three decimals keep sub-microsecond models readable.
    return (
        f"count={len(us)} first={us[0]:.3f} curr={us[-1]:.3f} min={ordered[0]:.3f} max={ordered[-1]:.3f} "
        f"avg={statistics.fmean(us):.3f} std={statistics.pstdev(us):.3f} p5={pct(0.05):.3f} "
        f"median={statistics.median(us):.3f} p95={pct(0.95):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; benchmark_model's flags (unknown ones are reported and ignored)."""
    from devices.local_runner import time_model

    parser = argparse.ArgumentParser(prog=LAUNCHER_NAME, description=__doc__.splitlines()[0])
    parser.add_argument("--graph", required=True, help="model file (.tflite or .pte)")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--num_runs", type=int, default=50)
    parser.add_argument("--warmup_runs", type=int, default=1)
    parser.add_argument("--min_secs", type=float, default=1.0)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"WARNING: Unconsumed cmdline flags: {' '.join(unknown)}", flush=True)
    graph = Path(args.graph)
    print(f"INFO: Graph: [{graph}]\nINFO: Num threads: [{args.num_threads}]\nINFO: Num runs: [{args.num_runs}]", flush=True)
    if args.num_runs < 1 or args.warmup_runs < 0 or args.num_threads < 1 or not 0 <= args.min_secs < float("inf"):
        print("ERROR: need --num_runs >= 1, --warmup_runs >= 0, --num_threads >= 1, --min_secs >= 0", flush=True)
        return 1
    if graph.suffix not in (".tflite", ".pte") or not graph.is_file():
        print(f"ERROR: Could not open '{graph}': not a .tflite or .pte file.", flush=True)
        return 1
    start = time.perf_counter()
    try:
        warm, timed = time_model(graph, args.num_threads, args.warmup_runs, args.num_runs, args.min_secs)
    except Exception as exc:  # the runtime's own message is what the user needs to see
        print(f"ERROR: {type(exc).__name__}: {' '.join(str(exc).split())}", flush=True)
        return 1
    init_ms = max(0.0, (time.perf_counter() - start) * 1e3 - sum(warm) - sum(timed))
    print("\n".join(summary_lines(init_ms, warm, timed)), flush=True)
    return 0


def write_launcher(folder: Path) -> Path:
    """Write the runner as an executable script (run by this host's Python) and return its path.

    It is what `devices setup loopback` pushes and checksums, like a phone's `benchmark_model`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LAUNCHER_NAME
    text = (
        f"#!{sys.executable}\n"
        '"""akd-mobile loopback benchmark runner: benchmark_model flags, benchmark_model summary lines."""\n'
        "import sys\n\nfrom devices.loopback_runner import main\n\nsys.exit(main())\n"
    )
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(main())
