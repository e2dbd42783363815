"""Overhead of one loopback measurement over `local`, and push throughput over loopback.

    .venv/bin/python benchmarks/bench_loopback.py [--repeats 5] [--push-mb 64]

The loopback daemon runs in its own process (`akd-mobile loopback serve`), as in CI. For each
model (the tiny check model, and a `mnasnet-small` student), one measurement on `local` and one
through the loopback device (push, run the runner, parse, remove) are timed with the same
threads, warm-up and runs; the overhead is their difference (median over the repeats). Push
throughput is timed with adb-shell (the `adb` backend's client) and, when installed, with Google's
adb. The figures replace the block between the markers in docs/devices.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from akd_base.measurement import MeasureSettings
from bench_support import fill_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "devices.md"
SETTINGS = MeasureSettings(threads=1, warmup=2, runs=20)


def _serve(tmp: Path, key: Path) -> tuple[subprocess.Popen[str], int]:
    exe = Path(sys.executable).with_name("akd-mobile")
    proc = subprocess.Popen(
        [str(exe), "loopback", "serve", "--port", "0", "--root", str(tmp / "root"), "--keys", f"{key}.pub"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.split("127.0.0.1:")[1].split()[0])


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _overhead(models: dict[str, Path], local, loop, repeats: int) -> list[dict[str, float | str]]:
    rows = []
    for label, model in models.items():
        loop.measure(model, SETTINGS)  # connection and tool check warmed up
        local_s, loop_s = [], []
        for _ in range(repeats):
            local_s.append(_timed(lambda: local.measure(model, SETTINGS)))
            loop_s.append(_timed(lambda: loop.measure(model, SETTINGS)))
        rows.append({
            "model": label,
            "size_kb": model.stat().st_size / 1024,
            "local_s": statistics.median(local_s),
            "loopback_s": statistics.median(loop_s),
            "overhead_s": statistics.median(b - a for a, b in zip(local_s, loop_s)),
        })
    return rows


def _push_rates(loop, port: int, key: Path, tmp: Path, size_mb: int, repeats: int) -> dict[str, float]:
    blob = tmp / "push.bin"
    blob.write_bytes(random.Random(0).randbytes(size_mb << 20))
    rates = {}
    times = [_timed(lambda: loop._push(blob, "/data/local/tmp/akd/push.bin")) for _ in range(repeats)]
    rates["adb-shell (the adb backend's client)"] = blob.stat().st_size / 1e6 / statistics.median(times)
    adb = shutil.which("adb")
    if adb:
        home = tmp / "home"
        (home / ".android").mkdir(parents=True, exist_ok=True)
        shutil.copy(key, home / ".android" / "adbkey")
        shutil.copy(f"{key}.pub", home / ".android" / "adbkey.pub")
        env = {**os.environ, "HOME": str(home), "ANDROID_USER_HOME": str(home / ".android"),
               "ANDROID_ADB_SERVER_PORT": "15199"}
        serial = f"127.0.0.1:{port}"
        run = lambda *a: subprocess.run([adb, *a], env=env, capture_output=True, text=True, timeout=120, check=True)  # noqa: E731
        try:
            run("connect", serial)
            run("-s", serial, "wait-for-device")
            times = [_timed(lambda: run("-s", serial, "push", str(blob), "/data/local/tmp/akd/push2.bin"))
                     for _ in range(repeats)]
            rates["Google adb 1.0.41 (`adb push`, process start included)"] = blob.stat().st_size / 1e6 / statistics.median(times)
        finally:
            subprocess.run([adb, "kill-server"], env=env, capture_output=True, timeout=30)
    return rates


def _write_doc(rows, rates, args) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs shared with other jobs (numbers are noisy), with",
        "",
        f"    .venv/bin/python benchmarks/bench_loopback.py --repeats {args.repeats} --push-mb {args.push_mb}",
        "",
        f"One measurement ({SETTINGS.threads} thread, {SETTINGS.warmup} warm-up, {SETTINGS.runs} runs), median of {args.repeats}; target: overhead <= 1 s.",
        "",
        "| model | size | local | loopback | overhead |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['model']} | {r['size_kb']:.0f} KiB | {r['local_s']:.3f} s | {r['loopback_s']:.3f} s | "
              f"{r['overhead_s']:.3f} s |" for r in rows]
    lines += ["", f"Push of {args.push_mb} MiB over loopback, median of {args.repeats}; target: >= 50 MB/s.", "",
              "| client | throughput |", "| --- | ---: |"]
    lines += [f"| {name} | {rate:.0f} MB/s |" for name, rate in rates.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--push-mb", type=int, default=64)
    args = parser.parse_args()

    from akd_mobile.export import export_model
    from akd_mobile.space import get_space
    from devices.adb import AdbDevice, AdbSettings
    from devices.adb_keys import generate_key
    from devices.local import LocalDevice
    from akd_mobile.device_check import check_model

    space = get_space("mnasnet-small")
    student = space.sample(random.Random(0))
    models = {"tiny linear (check model)": check_model("tflite"),
              f"mnasnet-small student {student.key}": export_model(student, "tflite").path}
    with tempfile.TemporaryDirectory(prefix="akd-bench-loopback-") as name:
        tmp = Path(name)
        key = generate_key(tmp / "adbkey")
        proc, port = _serve(tmp, key)
        try:
            settings = AdbSettings.from_dict({
                "address": f"127.0.0.1:{port}", "key": str(key), "cpu_mask": "none", "thermal_limit_c": 95.0,
                "tools": {"tflite": {"path": "builtin:loopback-runner", "kind": "benchmark_model"}},
            }, "bench")
            loop = AdbDevice("loopback", settings)
            loop.setup()
            rows = _overhead(models, LocalDevice(), loop, args.repeats)
            rates = _push_rates(loop, port, key, tmp, args.push_mb, args.repeats)
            loop.close()
        finally:
            proc.terminate()
            proc.wait(30)
    block = _write_doc(rows, rates, args)
    fill_block(DOC, "bench_loopback", block)
    print(block)


if __name__ == "__main__":
    main()
