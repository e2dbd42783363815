"""Scale by simulation: the Ray engine's scheduler on a cluster of many logical nodes on this
machine (`ray.cluster_utils.Cluster`), with a stand-in for the work whose training, export and
measurement times are drawn from what this project measured.

    .venv/bin/python benchmarks/bench_ray_scale.py [--cpus 64] [--phones 1,2,4,8] [--budget 768] [--batch 256]
        [--strategy rl|evolution] [--time-scale 0.1]

The search itself is real: the controller (RL a batch at a time, or evolution in steady
state), the driver's plans and SQLite writes (`akd_mobile.search`,
`akd_mobile.ray_engine.RayEngine.evaluate`). Only the work is a stand-in:
a training task (2 CPUs, as `TRAIN_THREADS`) sleeps a draw around 17.3 s, an export task
(1 CPU) one around 28.6 s, and a phone actor (one per `phone:sim-N` resource, on nodes of
their own) one around 4.1 s: the means of docs/search.md (KD training and measurement per
candidate of the default search's cold run) and docs/latency.md (a cold mnasnet-small .tflite
export), each lognormal with a coefficient of variation of 0.25 (assumed: those pages hold
means), all times multiplied by `--time-scale`. Each architecture's draws are fixed by its
key, so every phone count sees the same work.

Scheduler efficiency = CPU-seconds of useful work (2 x training + export) / (worker CPUs x
wall time of the search). Its ceiling is what the slower side allows: the CPU work spread over
the CPUs against the phone work spread over the phones. Driver CPU = the driver process's CPU
time (all its threads) per candidate. Ray's workers are started before the clock (a warm
cluster). The
figures replace the block of the strategy and time scale between the markers in docs/ray.md.
Host CPUs busy = the share of this machine's real CPU time not idle during the search
(`/proc/stat`): near 100%, the simulation measures the host, not the scheduler.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_support import fill_block  # noqa: E402

DOC = ROOT / "docs" / "ray.md"
MEANS_S = {"train": 17.3, "export": 28.6, "measure": 4.1}
CV = 0.25
NODE_CPUS = 8


def draw_s(key: str, what: str, scale: float) -> float:
    """A lognormal draw for architecture `key`'s `what`, fixed by the key."""
    u = int(hashlib.sha256(f"{key}:{what}".encode()).hexdigest()[:12], 16) / 16**12
    sigma = math.sqrt(math.log(1 + CV**2))
    z = math.sqrt(2) * _erfinv(2 * min(max(u, 1e-9), 1 - 1e-9) - 1)
    return scale * MEANS_S[what] * math.exp(sigma * z - sigma**2 / 2)


def _erfinv(y: float) -> float:
    """Inverse error function (Newton steps from Winitzki's approximation)."""
    a = 0.147
    ln = math.log(1 - y * y)
    x = math.copysign(math.sqrt(math.sqrt((2 / (math.pi * a) + ln / 2) ** 2 - ln / a) - (2 / (math.pi * a) + ln / 2)), y)
    for _ in range(3):
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


@dataclass(frozen=True)
class SimScore:
    """What the proxy training stand-in returns (the fields a plan reads)."""

    accuracy: float
    train_s: float
    eval_s: float = 0.0


@ray.remote(num_cpus=2)
def sim_train(key: str, scale: float) -> SimScore:
    seconds = draw_s(key, "train", scale)
    time.sleep(seconds)
    return SimScore(0.5 + int(key[:4], 16) / 16**4 * 0.4, seconds)


@ray.remote(num_cpus=1)
def sim_export(key: str, arch_json: str, scale: float) -> tuple:
    seconds = draw_s(key, "export", scale)
    time.sleep(seconds)
    return key, arch_json, seconds


@ray.remote(num_cpus=0)
class SimPhone:
    """A phone that takes a drawn time per model."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def measure(self, shipped: tuple):
        from akd_base.measurement import LatencyResult, Measured
        from akd_mobile.ray_engine import PhoneMeasurement
        from latency_db.store import Artifact

        key, arch_json, export_s = shipped
        seconds = draw_s(key, "measure", self.scale)
        time.sleep(seconds)
        ms = 0.1 + int(key[4:8], 16) / 16**4 * 0.3
        artifact = Artifact(hashlib.sha256(key.encode()).hexdigest(), "tflite", 500_000, arch_json, "sim")
        return PhoneMeasurement(Measured(LatencyResult.from_samples([ms])), seconds, artifact, f"/sim/{key}.tflite",
                                export_s)


class SimDevice:
    """The search's device as the driver sees it: a phone model that measures nothing itself."""

    name = "sim-phone"

    def info(self):
        from akd_base.measurement import DeviceInfo

        return DeviceInfo("adb", "SimPhone", "sim", "arm64-v8a", 8, runtimes={"litert": "2.3.0"})

    def measure(self, artifact, settings):
        raise RuntimeError("measured by the phone actors")


def host_cpu_times() -> tuple[int, int]:
    """This host's busy and total CPU ticks since boot, all cores (Linux `/proc/stat`)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def run_once(phones: int, args: argparse.Namespace, work: Path) -> dict:
    """One search on a fresh simulated cluster with `phones` phones; its efficiency."""
    from ray.cluster_utils import Cluster

    import akd_mobile.engines as engines_module
    import akd_mobile.search as search_module
    from akd_mobile.engines import Execution
    from akd_mobile.evaluation import CandidateEvaluation
    from akd_mobile.latency import LatencyService
    from akd_mobile.ray_engine import PHONE_ACTOR_OPTIONS, RayEngine
    from akd_mobile.runs import RunStore
    from akd_mobile.search import SearchConfig, SearchInputs, run_search
    from akd_mobile.space import get_space
    from latency_db import open_db

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(args.cpus // NODE_CPUS):
        cluster.add_node(num_cpus=NODE_CPUS)
    for i in range(phones):
        cluster.add_node(num_cpus=0, resources={f"phone:sim-{i}": 1})
    ray.init(address=cluster.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        ray.get([sim_export.remote(f"{i:012x}", "{}", 0.0) for i in range(args.cpus)])  # start the workers
        actors = [SimPhone.options(resources={f"phone:sim-{i}": 1}, **PHONE_ACTOR_OPTIONS).remote(args.time_scale)
                  for i in range(phones)]
        space = get_space("mnasnet-small")
        inputs = SearchInputs(None, space, None, {"data": {"spec": "sim", "fingerprint": "0" * 16}})

        class SimEngine(RayEngine):
            def _train(self, arch):
                return sim_train.remote(arch.key, args.time_scale)

            def _export(self, arch):
                return sim_export.remote(arch.key, arch.to_json(), args.time_scale)

        def open_sim(config, db, execution, load_inputs):
            service = LatencyService(SimDevice(), db, config.measure)
            return SimEngine(CandidateEvaluation(config, inputs, service), execution,
                             [a.measure.remote for a in actors], owns_ray=False)

        db = work / f"sim-{phones}.sqlite"
        config = SearchConfig(budget=args.budget, batch=args.batch, reward="ce", seed=0, strategy=args.strategy)
        with mock.patch.object(engines_module, "open_engine", open_sim), \
                mock.patch.object(search_module, "load_inputs", lambda config: inputs):
            start, cpu, host = time.perf_counter(), time.process_time(), host_cpu_times()
            summary = run_search(config, db, execution=Execution(ray="auto", max_in_flight=args.max_in_flight))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            host_busy, host_all = (after - before for after, before in zip(host_cpu_times(), host))
        rows = RunStore(open_db(db)).candidates(summary.run_id)
        useful = sum(2 * r.train_s + r.export_s for r in rows if r.status == "done")
        phone_s = sum(r.measure_s for r in rows if r.status == "done")
        cpu_bound_s, phone_bound_s = useful / args.cpus, phone_s / phones
        return {"phones": phones, "candidates": len(rows), "wall_s": wall, "efficiency": useful / (args.cpus * wall),
                "ceiling": cpu_bound_s / max(cpu_bound_s, phone_bound_s), "phone_busy": phone_s / (phones * wall),
                "driver_ms": 1000 * cpu / len(rows), "host_busy": host_busy / host_all}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=64, help=f"worker CPUs, in nodes of {NODE_CPUS}")
    parser.add_argument("--phones", default="1,2,4,8")
    parser.add_argument("--budget", type=int, default=768)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--strategy", default="rl", choices=["rl", "evolution"])
    parser.add_argument("--max-in-flight", type=int, default=None)
    parser.add_argument("--time-scale", type=float, default=0.1)
    args = parser.parse_args(argv)
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="akd-ray-scale-") as tmp:
        for phones in [int(p) for p in args.phones.split(",")]:
            row = run_once(phones, args, Path(tmp))
            print(row, flush=True)
            rows.append(row)
    command = (f".venv/bin/python benchmarks/bench_ray_scale.py --cpus {args.cpus} --phones {args.phones} "
               f"--budget {args.budget} --batch {args.batch} --strategy {args.strategy} --time-scale {args.time_scale:g}"
               + (f" --max-in-flight {args.max_in_flight}" if args.max_in_flight else ""))
    lines = [
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {os.cpu_count()} real "
        f"CPUs under {args.cpus // NODE_CPUS} logical nodes of {NODE_CPUS} worker CPUs. Load average "
        f"{load_before:.2f} before and {os.getloadavg()[0]:.2f} after.",
        "",
        "| phones | phones per 16 CPUs | candidates | wall s | scheduler efficiency | its ceiling | phones busy | "
        "driver CPU ms per candidate | host CPUs busy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['phones']} | {16 * r['phones'] / args.cpus:.2f} | {r['candidates']} | {r['wall_s']:.1f} | "
              f"{r['efficiency']:.1%} | {r['ceiling']:.1%} | {r['phone_busy']:.1%} | {r['driver_ms']:.0f} | {r['host_busy']:.0%} |" for r in rows]
    fill_block(DOC, f"bench_ray_scale:{args.strategy}:scale-{args.time_scale:g}", "\n".join(lines))


if __name__ == "__main__":
    main()
