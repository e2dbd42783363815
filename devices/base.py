"""The device protocol: what every backend (local, adb, loopback) answers."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from akd_base.measurement import DeviceInfo, LatencyResult


@runtime_checkable
class Device(Protocol):
    """A place where a model's latency is measured."""

    name: str

    def info(self) -> DeviceInfo:
        """Describe the device; its fingerprint keys the latency database."""
        ...

    def measure(self, artifact: Path, threads: int, warmup: int, runs: int, min_time_s: float = 0.0) -> LatencyResult:
        """Time at least `runs` inferences of `artifact` after `warmup` untimed ones, and go on
        until the timed ones have taken `min_time_s` in all (LiteRT `benchmark_model`'s
        `--num_runs` and `--min_secs`)."""
        ...
