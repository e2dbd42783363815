"""Repeatability and overhead of `bench` on the local device, and export times.

    .venv/bin/python benchmarks/bench_latency.py [--repeats 5] [--runs 50] [--min-times 0,3,20] [--drift-s 120]

1. Repeatability: `akd-mobile bench MODEL --min-time T --json` on the same model, `--repeats`
   times back to back, for a mnasnet-small and a mnasnet-imagenet candidate in each format
   and each T of `--min-times`; the coefficient of variation of the medians (target <= 3%).
2. Harness overhead: our measurement (`LocalDevice.measure`, per-run timing in child
   processes) against the runtime's own loop (the interpreter's `invoke()`, or ExecuTorch's
   `execute()`, timed back to back, total / count), both spread over the profile's
   `processes` fresh processes, in `--repeats` rounds with the order alternating;
   overhead = median over the rounds of ours / theirs - 1 (target < 5% on a >= 5 ms
   model). Our median and our mean are both compared with their mean.
3. The host's own drift: the runtime's back-to-back speed over `--drift-s` seconds, cut into
   windows of 1.25 to 20 s; the CV of the window medians for each length.
4. Export time of one mnasnet-small and one mnasnet-imagenet candidate to each format:
   cold (empty cache) and cached, each an `akd-mobile export` process; wall time of the
   command and the conversion time it reports.

The figures replace the block between the markers in docs/latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_support import fill_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "latency.md"
EXE = str(Path(sys.executable).with_name("akd-mobile"))
WARMUP = 10


def _cli(*args: str, env: dict[str, str]) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([EXE, *args, "--json"], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout), wall


def repeatability(models: dict[tuple[str, str], Path], repeats: int, runs: int, min_times: list[float],
                  env: dict[str, str]) -> list[dict]:
    """`bench --min-time T` `repeats` times back to back per model, format and T, on the local
    profile (its `processes`)."""
    rows = []
    for (space, fmt), path in models.items():
        for min_time in min_times:
            medians, minima, walls, counts = [], [], [], []
            for _ in range(repeats):
                d, wall = _cli("bench", str(path), "--runs", str(runs), "--warmup", str(WARMUP),
                               "--min-time", f"{min_time:g}", env=env)
                medians.append(d["median_ms"])
                minima.append(d["min_ms"])
                walls.append(wall)
                counts.append(d["count"])
            rows.append({"space": space, "format": fmt, "min_time_s": min_time, "medians_ms": medians,
                         "cv_pct": _cv(medians), "min_cv_pct": _cv(minima), "runs": statistics.median(counts),
                         "bench_wall_s": statistics.median(walls)})
    return rows


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _cv(values: list[float]) -> float:
    return 100 * statistics.pstdev(values) / statistics.fmean(values)


def _runtime_loop(path: Path, runs: int, via: str) -> float:
    """Mean ms per inference of the runtime's own call, timed back to back (1 thread).

    `.pte` files load `via` the extension module our runner uses (`extension`) or the
    public `executorch.runtime` API, whose import also imports the compiler (`runtime`).
    """
    if path.suffix == ".tflite":
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
        (inp,) = interp.get_input_details()
        interp.set_tensor(inp["index"], np.random.default_rng(0).standard_normal(inp["shape"]).astype(np.float32))
        call = interp.invoke
    elif via == "extension":
        import torch
        from executorch.extension.pybindings import _C

        _C._unsafe_reset_threadpool(1)
        program = _C._load_program(str(path), program_verification=_C.Verification.InternalConsistency)
        method = program.load_method("forward")
        x = [torch.randn(tuple(method.method_meta().input_tensor_meta(0).sizes()))]
        call = lambda: method(x)  # noqa: E731
    else:
        import torch
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        _unsafe_reset_threadpool(1)
        method = Runtime.get().load_program(path).load_method("forward")
        x = [torch.randn(tuple(method.metadata.input_tensor_meta(0).sizes()))]
        call = lambda: method.execute(x)  # noqa: E731
    for _ in range(WARMUP):
        call()
    start = time.perf_counter()
    for _ in range(runs):
        call()
    return (time.perf_counter() - start) * 1000 / runs


def _runtime_loop_in_child(path: Path, runs: int, via: str = "extension") -> float:
    """`_runtime_loop` in a fresh process (this script with `--runtime-loop`), as our runner runs."""
    proc = subprocess.run([sys.executable, __file__, "--runtime-loop", str(path), "--via", via, "--runs", str(runs)],
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.split()[-1])


def overhead(models: dict[str, Path], repeats: int, runs: int, processes: int) -> list[dict]:
    """Our measurement against the runtime's own loop, both spread over `processes` fresh
    processes per round (a process's own speed varies by a few percent), `repeats` rounds,
    the order of the two alternating from round to round."""
    from akd_base.measurement import MeasureSettings
    from devices.local import LocalDevice

    device = LocalDevice(processes=processes)
    per_process = runs // processes
    rows = []
    for fmt, path in models.items():
        pairs = []
        for round_ in range(repeats):
            got: dict[str, Any] = {}
            # which goes first alternates: the host's speed drifts (see host_drift)
            for who in ("ours", "theirs") if round_ % 2 == 0 else ("theirs", "ours"):
                if who == "ours":
                    got[who] = device.measure(path, MeasureSettings(threads=1, warmup=WARMUP, runs=per_process * processes)).result
                else:
                    got[who] = statistics.fmean(_runtime_loop_in_child(path, per_process) for _ in range(processes))
            r, loop = got["ours"], got["theirs"]
            public = statistics.fmean(_runtime_loop_in_child(path, per_process, "runtime") for _ in range(processes))
            pairs.append((r.median_ms, r.mean_ms, loop, public))
        rows.append({"format": fmt, "ours_median_ms": statistics.median(p[0] for p in pairs),
                     "ours_mean_ms": statistics.median(p[1] for p in pairs),
                     "loop_mean_ms": statistics.median(p[2] for p in pairs),
                     "overhead_median_pct": 100 * (statistics.median(p[0] / p[2] for p in pairs) - 1),
                     "overhead_mean_pct": 100 * (statistics.median(p[1] / p[2] for p in pairs) - 1),
                     "public_loop_mean_ms": statistics.median(p[3] for p in pairs)})
    return rows


def host_drift(path: Path, seconds: float, windows_s: tuple[float, ...] = (1.25, 2.5, 5.0, 10.0, 20.0)) -> dict:
    """The host's own drift: one interpreter timing single invokes of a `.tflite` model back
    to back for `seconds`; for each window length, the medians of consecutive windows and
    their CV (how well a measurement spanning that long can repeat on this host now)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    interp.set_tensor(inp["index"], np.random.default_rng(0).standard_normal(inp["shape"]).astype(np.float32))
    for _ in range(WARMUP):
        interp.invoke()
    trace: list[tuple[float, float]] = []
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        interp.invoke()
        trace.append((now - start, (time.perf_counter() - now) * 1000))
    by_window = {}
    for window in windows_s:
        groups: dict[int, list[float]] = {}
        for t, ms in trace:
            if t < seconds // window * window:  # whole windows only
                groups.setdefault(int(t // window), []).append(ms)
        if len(groups) >= 3:
            medians = [statistics.median(v) for _, v in sorted(groups.items())]
            by_window[window] = {"medians_ms": medians, "cv_pct": _cv(medians)}
    return {"seconds": seconds, "windows": by_window}


def export_times(archs: dict[str, str], env: dict[str, str]) -> list[dict]:
    rows = []
    for space, arch in archs.items():
        for fmt in ("tflite", "pte"):
            for state in ("cold", "cached"):
                with tempfile.TemporaryDirectory() as out:
                    d, wall = _cli("export", arch, "--space", space, "--format", fmt, "--out",
                                   str(Path(out) / f"m.{fmt}"), env=env)
                assert d["cached"] == (state == "cached")
                rows.append({"space": space, "format": fmt, "state": state, "wall_s": wall,
                             "export_s": d["seconds"], "size_bytes": d["size_bytes"],
                             "max_abs_diff": d["max_abs_diff"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--min-times", default="0,3,20", help="comma-separated bench --min-time values (s)")
    parser.add_argument("--drift-s", type=float, default=120.0, help="seconds of the host drift check")
    parser.add_argument("--runtime-loop", type=Path, help="internal: print the runtime loop's mean ms of this model")
    parser.add_argument("--via", choices=("extension", "runtime"), default="extension", help="internal: see _runtime_loop")
    args = parser.parse_args()
    min_times = [float(t) for t in args.min_times.split(",")]
    if args.drift_s < 60:
        parser.error("--drift-s must be at least 60 (three 20-second windows)")
    if args.runtime_loop:
        print(_runtime_loop(args.runtime_loop, args.runs, args.via))
        return

    from akd_mobile.export import export_model
    from akd_mobile.space import get_space
    from devices.profiles import load_profile

    processes = load_profile("local").settings.get("processes", 1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="akd-bench-") as tmp:
        env = {**os.environ, "AKD_CACHE_DIR": f"{tmp}/cache", "AKD_DB": f"{tmp}/latency.sqlite"}
        os.environ.update(AKD_CACHE_DIR=env["AKD_CACHE_DIR"])
        big = get_space("mnasnet-imagenet").sample(random.Random(0))
        small = get_space("mnasnet-small").sample(random.Random(0))
        models = {fmt: export_model(big, fmt).path for fmt in ("tflite", "pte")}
        small_models = {fmt: export_model(small, fmt).path for fmt in ("tflite", "pte")}
        both = {**{("mnasnet-small", f): p for f, p in small_models.items()},
                **{("mnasnet-imagenet", f): p for f, p in models.items()}}
        rep = repeatability(both, args.repeats, args.runs, min_times, env)
        drift = host_drift(models["tflite"], args.drift_s)
        over = overhead(models, args.repeats, args.runs, processes)
        env["AKD_CACHE_DIR"] = f"{tmp}/cache-exports"
        exp = export_times({"mnasnet-small": small.canonical, "mnasnet-imagenet": big.canonical}, env)
    load_after = os.getloadavg()

    cmd = (f".venv/bin/python benchmarks/bench_latency.py --repeats {args.repeats} --runs {args.runs} "
           f"--min-times {args.min_times} --drift-s {args.drift_s:g}")
    lines = [
        f"Produced by `{cmd}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"Load average {load_before[0]:.2f} before and {load_after[0]:.2f} after (the benchmark itself keeps one "
        "core busy).",
        "",
        f"Models: the `random.Random(0)` samples of mnasnet-small (`{small.key}`, the default search's space) "
        f"and of mnasnet-imagenet (`{big.key}`), 1 thread, {WARMUP} warm-up and at least {args.runs} timed runs, "
        f"on the local profile ({processes} processes per measurement).",
        "",
        f"**The host's own drift** - single `invoke()`s of the mnasnet-imagenet `.tflite` model back to back in "
        f"one process for {drift['seconds']:g} s, cut into consecutive windows: the CV of the window medians is how "
        "well a measurement that spans a window can repeat on this host, whatever the harness. The 5-second "
        f"medians were {', '.join(f'{m:.1f}' for m in drift['windows'][5.0]['medians_ms'])} ms.",
        "",
        "| window (s) | windows | CV of their medians |",
        "| --- | --- | --- |",
        *(f"| {w:g} | {len(d['medians_ms'])} | {d['cv_pct']:.1f}% |" for w, d in drift["windows"].items()),
        "",
        f"**Repeatability** - `akd-mobile bench MODEL --runs {args.runs} --min-time T` {args.repeats} times back "
        "to back (target CV <= 3%):",
        "",
        "| space | format | T (s) | timed runs | medians (ms) | CV of the medians | CV of the minima | wall time of one `bench` |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {r['space']} | {r['format']} | {r['min_time_s']:g} | {r['runs']:.0f} | "
          f"{', '.join(f'{m:.3f}' if m < 10 else f'{m:.2f}' for m in r['medians_ms'])} | {r['cv_pct']:.1f}% | "
          f"{r['min_cv_pct']:.1f}% | {r['bench_wall_s']:.1f} s |" for r in rep),
        "",
        "**Harness overhead** - `LocalDevice.measure` (child processes, per-run timer) against the runtime's "
        "own call timed back to back (total / count), each spread over the local profile's processes, "
        f"fresh ones each round, {args.repeats} rounds; overhead is the median of the paired ratios "
        "(target < 5%):",
        "",
        "| format | ours: median (ms) | ours: mean (ms) | back-to-back mean (ms) | overhead (median) | overhead (mean) "
        "| back-to-back mean after importing `executorch.runtime` (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {r['format']} | {r['ours_median_ms']:.3f} | {r['ours_mean_ms']:.3f} | {r['loop_mean_ms']:.3f} | "
          f"{r['overhead_median_pct']:+.1f}% | {r['overhead_mean_pct']:+.1f}% | "
          + (f"{r['public_loop_mean_ms']:.3f} |" if r["format"] == "pte" else "- |") for r in over),
        "",
        "**Export time** - one `akd-mobile export` process each; *wall* includes starting Python and importing "
        "the converter, *export* is the conversion plus the check against PyTorch (or the cache lookup):",
        "",
        "| space | format | cache | wall (s) | export (s) | size (bytes) | max abs diff |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {r['space']} | {r['format']} | {r['state']} | {r['wall_s']:.1f} | {r['export_s']:.3f} | "
          f"{r['size_bytes']:,} | {r['max_abs_diff']:.1e} |" for r in exp),
    ]
    block = "\n".join(lines)
    fill_block(DOC, "bench_latency", block)
    print(block)


if __name__ == "__main__":
    main()
