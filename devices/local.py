"""The `local` backend: this host's CPU, with the runtimes a phone runs.

`.tflite` files run in the ai-edge-litert interpreter and `.pte` files in the ExecuTorch
runtime, both through XNNPACK. Each measurement is a child process
(`python -m devices.local_runner`) killed after `timeout_s`, so a model that crashes or
hangs its runtime costs one DeviceError, and no state carries over to the next model.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

from akd_base.errors import DeviceError
from akd_base.measurement import DeviceInfo, LatencyResult, Measured, MeasureSettings

log = logging.getLogger(__name__)

SUFFIXES = (".tflite", ".pte")
# Flatbuffer file identifiers (bytes 4..8): TFLite's, and the start of ExecuTorch's (ET12, ...).
_IDENTIFIERS = {".tflite": (b"TFL3", "LiteRT"), ".pte": (b"ET", "ExecuTorch")}
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DISTRIBUTIONS = {"litert": "ai-edge-litert", "executorch": "executorch"}


class LocalDevice:
    """This host, measured through child processes.

    Args:
        name: profile name.
        timeout_s: seconds one child process may take before it is killed.
        processes: child processes one measurement's timed runs are split over (each does
            the warm-up, then its share of the runs); the samples are pooled. One process
            runs a model a few percent faster or slower than the next, whatever the number
            of runs, so pooling processes narrows the spread of repeated medians
            (docs/latency.md).
    """

    def __init__(self, name: str = "local", timeout_s: float = 300.0, processes: int = 1) -> None:
        if not timeout_s > 0:
            raise DeviceError(f"device {name}: timeout_s must be positive, got {timeout_s}")
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise DeviceError(f"device {name}: processes must be an integer >= 1, got {processes!r}")
        self.name = name
        self.timeout_s = float(timeout_s)
        self.processes = processes

    @classmethod
    def from_profile(cls, profile: Any) -> LocalDevice:
        """Open the device a `local` profile describes (settings: `timeout_s`, `processes`)."""
        settings = dict(profile.settings)
        timeout_s = settings.pop("timeout_s", 300.0)
        processes = settings.pop("processes", 1)
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise DeviceError(f"device profile {profile.path}: processes must be an integer >= 1")
        if settings:
            raise DeviceError(f"device profile {profile.path}: unknown setting(s) {', '.join(sorted(settings))}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            raise DeviceError(f"device profile {profile.path}: timeout_s must be a number")
        return cls(profile.name, timeout_s, processes)

    def info(self) -> DeviceInfo:
        """CPU model, core count, maximum frequencies (where readable) and runtime versions."""
        return self._info

    @cached_property
    def _info(self) -> DeviceInfo:
        cpu = _cpu_model()
        return DeviceInfo(
            backend="local",
            model=cpu,
            soc=cpu,
            abi=platform.machine(),
            cores=os.cpu_count() or 1,
            max_freqs_khz=_max_freqs_khz(),
            runtimes={name: _version(dist) for name, dist in RUNTIME_DISTRIBUTIONS.items()},
            extra={"os": platform.platform(), "python": platform.python_version()},
        )

    def measure(self, artifact: Path, settings: MeasureSettings) -> Measured:
        """Time at least `settings.runs` inferences of a `.tflite` or `.pte` file, and at
        least `settings.min_time_s` of timed runs, split over `processes` child processes that
        each run the warm-up first; the samples are pooled. No conditions are reported.

        Raises:
            DeviceError: a missing, empty or unsupported file, a runtime that rejects the
                model, crashes, or runs past `timeout_s`.
        """
        artifact = check_artifact(artifact)
        shares = _shares(settings.runs, self.processes)
        samples: list[float] = []
        for share in shares:
            samples += self._run_child(artifact, settings.threads, settings.warmup, share,
                                       settings.min_time_s / len(shares))
        return Measured(LatencyResult.from_samples(samples))

    def _run_child(self, artifact: Path, threads: int, warmup: int, runs: int, min_time_s: float) -> list[float]:
        """The per-run latencies (ms) one child process measures."""
        with tempfile.TemporaryDirectory(prefix="akd-measure-") as tmp:
            out = Path(tmp) / "result.json"
            # -P and an explicit PYTHONPATH: this `devices` package, never one in the caller's cwd.
            cmd = [sys.executable, "-P", "-m", "devices.local_runner", str(artifact), str(threads), str(warmup),
                   str(runs), repr(float(min_time_s)), str(out)]
            path = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                      timeout=self.timeout_s, env={**os.environ, "PYTHONPATH": path})
            except subprocess.TimeoutExpired:
                raise DeviceError(
                    f"measuring {artifact.name} on {self.name} took over {self.timeout_s:g} s and was "
                    "stopped; use fewer runs, a shorter min_time_s, or raise timeout_s in the device profile"
                ) from None
            result = _read_result(out)
        if "error" in result:
            raise DeviceError(f"{self.name} cannot run {artifact.name}: {result['error']}")
        if proc.returncode != 0 or "samples_ms" not in result:
            log.debug("runner stderr:\n%s", proc.stderr)
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            last = f"; its last words: {lines[-1][:200]}" if lines else ""
            raise DeviceError(
                f"the runtime crashed measuring {artifact.name} ({_exit_reason(proc.returncode)}){last}"
            )
        return result["samples_ms"]


def _shares(runs: int, processes: int) -> list[int]:
    """`runs` split as evenly as possible over at most `processes` processes, none empty."""
    used = min(runs, processes)
    return [runs // used + (i < runs % used) for i in range(used)]


def check_artifact(artifact: Path) -> Path:
    """`artifact` as a Path if it is a `.tflite` or `.pte` file with its format's identifier,
    else DeviceError."""
    artifact = Path(artifact)
    if artifact.suffix not in SUFFIXES:
        raise DeviceError(f"{artifact} is not a model file: expected a .tflite or .pte file")
    if not artifact.is_file():
        raise DeviceError(f"model file {artifact} does not exist")
    if artifact.stat().st_size == 0:
        raise DeviceError(f"model file {artifact} is empty; export it again")
    with open(artifact, "rb") as fh:
        head = fh.read(8)
    expected, runtime = _IDENTIFIERS[artifact.suffix]
    if not head[4:8].startswith(expected):
        raise DeviceError(f"model file {artifact} is not a {runtime} model (corrupt or truncated); export it again")
    return artifact


def _read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _max_freqs_khz() -> tuple[int, ...]:
    freqs = []
    for cpu in range(os.cpu_count() or 0):
        try:
            freqs.append(int(Path(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq").read_text()))
        except (OSError, ValueError):
            return ()
    return tuple(freqs)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"
