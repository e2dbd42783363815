"""The device protocol: what every backend (local, adb, loopback) answers."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from akd_base.measurement import DeviceInfo, Measured, MeasureSettings


@runtime_checkable
class Device(Protocol):
    """A place where a model's latency is measured."""

    name: str

    def info(self) -> DeviceInfo:
        """Describe the device; its fingerprint keys the latency database."""
        ...

    def measure(self, artifact: Path, settings: MeasureSettings) -> Measured:
        """Time at least `settings.runs` inferences of `artifact` after `settings.warmup`
        untimed ones, going on until the timed ones have taken `settings.min_time_s` in all
        (LiteRT `benchmark_model`'s `--num_runs` and `--min_secs`), with `settings.threads`;
        the result comes with the conditions it ran under."""
        ...
