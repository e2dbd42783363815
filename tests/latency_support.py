"""A known latency law over `mnasnet-small`, databases measured at it, and a fake latency
service that measures at it (the predictor's, the sweep's and the recheck's tests)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

from akd_base.errors import DeviceUnavailable, ExportError
from akd_base.measurement import DeviceInfo, LatencyResult, MeasureSettings
from akd_mobile.latency_features import arch_features
from akd_mobile.space import get_space
from latency_db import open_db
from latency_db.predictors import ModelKey
from latency_db.store import Artifact

SPACE = get_space("mnasnet-small")
HOST = DeviceInfo("local", "Xeon", "Xeon", "x86_64", 2, runtimes={"litert": "2.3.0", "executorch": "1.0"})
KEY = ModelKey(HOST.fingerprint, "tflite", 1, "litert 2.3.0")
# a known cost law: ms per unit of each feature, then a constant
LAW = np.array([2e-8, 5e-8, 1.5e-8, 1e-7, 5e-8, 4e-8, 0.0, 1e-3, 5e-3, 0.02])


def law_ms(arch) -> float:
    return float(arch_features(SPACE, arch) @ LAW[:-1] + LAW[-1])


def archs(n: int, seed: int = 0):
    rng = random.Random(seed)
    return [SPACE.sample(rng) for _ in range(n)]


def record(db, arch, ms: float, info: DeviceInfo = HOST, name: str = "local") -> None:
    """Store a measurement of `arch` at `ms` on `info`'s LiteRT runtime, with its artifact's arch JSON."""
    artifact = Artifact(f"{arch.key}{ms}".encode().hex()[:64].ljust(64, "0"), "tflite", 1000, arch.to_json(), "x")
    db.record(info, LatencyResult.from_samples([ms]), fmt="tflite", threads=1, warmup=0, runs=1,
              runtime_version=f"litert {info.runtimes['litert']}", arch_key=arch.key, artifact=artifact,
              device_name=name)


def law_database(path: Path, n: int, noise: float = 0.0, repeats: int = 0) -> Path:
    """A database of `n` students measured at the cost law (times a seeded log-normal noise),
    the first `repeats` of them twice."""
    rng = np.random.default_rng(0)
    students = archs(n)
    with open_db(path) as db:
        for arch in students + students[:repeats]:
            record(db, arch, law_ms(arch) * math.exp(rng.normal(0, noise)))
    return path


class FakeService:
    """The latency service's sweep and recheck surface over a real database: it measures at
    the law times `speed` (1.3: a device 30% slower than the law)."""

    def __init__(self, db, fail: set[str] = frozenset(), down_after: int | None = None, speed: float = 1.0) -> None:
        from akd_mobile.latency import LatencyOutcome, NewMeasurement

        self.db, self.info, self.runtime, self.key = db, HOST, "litert 2.3.0", KEY
        self.settings = MeasureSettings(threads=1)
        self.fail, self.down_after, self.speed, self.measured = fail, down_after, speed, []
        self._outcome, self._new = LatencyOutcome, NewMeasurement

    def lookup(self, arch):
        hit = self.db.lookup(arch.key, "tflite", HOST.fingerprint, 1, self.runtime)
        return None if hit is None else self._outcome(hit, True, 0, 0, None, arch.key, "tflite", HOST.fingerprint,
                                                      self.runtime)

    def latency(self, arch):
        return self.lookup(arch) or self.store(self.measure(arch))

    def measure(self, arch):
        if arch.key in self.fail:
            raise ExportError("op aten.foo does not convert")
        if self.down_after is not None and len(self.measured) >= self.down_after:
            raise DeviceUnavailable("phone unplugged")
        self.measured.append(arch.key)
        result = LatencyResult.from_samples([law_ms(arch) * self.speed])
        out = self._outcome(result, False, 0, 0, None, arch.key, "tflite", HOST.fingerprint, self.runtime)
        artifact = Artifact(f"{arch.key}{len(self.measured)}".encode().hex()[:64].ljust(64, "0"), "tflite", 1,
                            arch.to_json())
        return self._new(out, HOST, "local", artifact, self.settings, {})

    def store(self, new):
        o = new.outcome
        self.db.record(HOST, o.result, fmt="tflite", threads=1, warmup=0, runs=1, runtime_version=self.runtime,
                       arch_key=o.arch_key, artifact=new.artifact, device_name="local")
        return o
