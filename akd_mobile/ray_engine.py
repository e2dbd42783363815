"""The Ray execution engine (`search --ray auto|ADDRESS`): candidates evaluated across a Ray
cluster's CPUs and GPUs and a farm of phones, while the driver alone runs the controller
and writes SQLite.

- A proxy training is a task that asks for `TRAIN_THREADS` CPUs (and one GPU on `cuda`)
  and trains on as many torch threads; the data set and the teacher's logits are put in
  the object store once.
- An export is a one-CPU task; the file travels to the phone through the object store.
- Each phone is an actor placed by the custom resource `phone:SERIAL` that the node it is
  plugged into declares (`ray start --resources '{"phone:SERIAL": 1}'`), so one phone
  measures one model at a time. A profile's `phones` names several phones of one model;
  they must share a fingerprint, so their measurements pool in the latency database.
- The `local` device (this host's CPU) is no phone: its measurement is a task on the
  driver's node that asks for all of that node's CPUs, so that no training runs beside it.
- Candidates are pipelined: up to `max_in_flight` evaluations at once, each advanced by its
  plan (`akd_mobile.evaluation`) as its work finishes (`ray.wait`). A candidate measured
  before its training is exported, measured and trained at once; if its export fails, its
  training is cancelled.

Faults: Ray retries a task whose worker or node died (an export and a training are
idempotent: the export cache and the seeded training give the same answer again) and
restarts a phone actor that died, retrying its measurement. An error of our code is the
candidate's (`failed`), or stops the run, exactly as in-process. What Ray gives up on (an
actor dead past its restarts, a lost node) stops the run resumably (`HostError`); the
driver's `--resume` then evaluates only the candidates still pending.

`ray` is imported by this module only, and this module only when a search asks for Ray.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from akd_base.errors import ClusterError, DeviceError, HostError
from akd_base.measurement import DeviceInfo, Measured, MeasureSettings
from akd_mobile.engines import TRAIN_THREADS, Execution, OnPhase
from akd_mobile.evaluation import CandidateEvaluation, Measure, MeasureAndTrain, MeasureDone, Plan, Train, Work
from akd_mobile.latency_policy import Standing
from akd_mobile.runs import CandidateOutcome
from akd_mobile.space import ArchSpec
from latency_db.store import Artifact

if TYPE_CHECKING:
    from akd_mobile.latency import LatencyService
    from akd_mobile.search import SearchConfig, SearchInputs
    from devices.profiles import Profile

log = logging.getLogger(__name__)

# Candidates in flight per training slot (CPUs / TRAIN_THREADS, or GPUs) by default: enough
# that exports, phones and trainings all stay busy while candidates wait on each other
# (docs/ray.md, the simulated cluster); each holds at most one exported model in the
# object store.
IN_FLIGHT_PER_SLOT = 4
CONNECT_TIMEOUT_S = 5.0  # how long an address may take to accept a connection
PHONE_RESTARTS = 3  # a phone actor that dies is restarted (and its measurement retried) this often
# A phone actor: restarted (its measurement retried) when it dies, and measuring the models
# whose exports are ready first, not in the order they were sent (an actor otherwise waits for
# the export of the first sent however long it takes, its phone idle).
PHONE_ACTOR_OPTIONS = dict(max_restarts=PHONE_RESTARTS, max_task_retries=PHONE_RESTARTS,
                           allow_out_of_order_execution=True)
PHONE_INFO_TIMEOUT_S = 120.0  # how long the phones may take to describe themselves at the start
# Ray errors that mean the cluster lost work (a node, an actor past its restarts, an object):
# the run stops resumably rather than failing the candidate.
_LOST = (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError, ray.exceptions.WorkerCrashedError,
         ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError, ray.exceptions.OutOfMemoryError)


@dataclass(frozen=True)
class Shipped:
    """An exported model on its way to a phone: its bytes, its database row and where and in
    how long it was made."""

    name: str
    blob: bytes
    artifact: Artifact
    path: str
    export_s: float


@dataclass(frozen=True)
class PhoneMeasurement:
    """What a phone returns: the measurement, its seconds, and the shipped model less its bytes."""

    measured: Measured
    measure_s: float
    artifact: Artifact
    path: str
    export_s: float


@dataclass
class _Running:
    """A candidate's work in flight: its references (each a `measure` or a `train` part), the
    answers of those done, and the phone measuring it."""

    work: Work
    parts: dict[Any, str]
    phone: int | None
    answers: dict[str, Any] = dataclasses.field(default_factory=dict)

    def answer(self) -> Any:
        """What the plan is sent once every part is done."""
        if isinstance(self.work, MeasureAndTrain):
            return self.answers["measure"], self.answers["train"]
        return self.answers["measure" if isinstance(self.work, Measure) else "train"]


@ray.remote(num_cpus=1)
def _export(arch: ArchSpec, fmt: str) -> Shipped:
    from akd_mobile.export import export_model

    exported = export_model(arch, fmt)
    artifact = Artifact(exported.sha256, fmt, exported.size_bytes, arch.to_json(), exported.converter_version)
    return Shipped(exported.path.name, exported.path.read_bytes(), artifact, str(exported.path), exported.seconds)


@ray.remote
def _train(arch: ArchSpec, data: Any, logits: Any, proxy: Any, mode: str, seed: int, torch_device: str,
           threads: int) -> Any:
    from akd_mobile.distill import proxy_score

    return proxy_score(arch, data, logits, proxy, mode=mode, seed=seed, device=torch_device, threads=threads)


def _measure_shipped(device: Any, settings: MeasureSettings, shipped: Shipped) -> PhoneMeasurement:
    """Write the shipped model to a scratch folder, measure it on `device`, remove it."""
    with tempfile.TemporaryDirectory(prefix="akd-ray-") as folder:
        path = Path(folder) / shipped.name
        path.write_bytes(shipped.blob)
        start = time.perf_counter()
        measured = device.measure(path, settings)
        return PhoneMeasurement(measured, time.perf_counter() - start, shipped.artifact, shipped.path,
                                shipped.export_s)


@ray.remote(num_cpus=0)
class Phone:
    """One phone: measures one model at a time."""

    def __init__(self, profile: Profile, settings: MeasureSettings) -> None:
        from devices.profiles import open_device

        self.device = open_device(profile)
        self.settings = settings

    def info(self) -> DeviceInfo:
        return self.device.info()

    def measure(self, shipped: Shipped) -> PhoneMeasurement:
        return _measure_shipped(self.device, self.settings, shipped)


@ray.remote
def _measure_on_host(profile: Profile, settings: MeasureSettings, shipped: Shipped) -> PhoneMeasurement:
    from devices.profiles import open_device

    return _measure_shipped(open_device(profile), settings, shipped)


@ray.remote
def _host_info(profile: Profile) -> DeviceInfo:
    from devices.profiles import open_device

    return open_device(profile).info()


class _Described:
    """The search's device as the driver sees it: described by the phones (the driver
    measures nothing itself)."""

    def __init__(self, name: str, info: DeviceInfo) -> None:
        self.name = name
        self._info = info

    def info(self) -> DeviceInfo:
        return self._info

    def measure(self, artifact: Path, settings: MeasureSettings) -> Measured:
        raise DeviceError("on Ray the driver measures nothing itself; its phones do")


class RayEngine:
    """Evaluates candidates on a Ray cluster, many at once (see the module docstring)."""

    def __init__(self, evaluation: CandidateEvaluation, execution: Execution, measurers: list[Callable[[Any], Any]],
                 owns_ray: bool) -> None:
        self.evaluation = evaluation
        self.execution = execution
        self.measurers = measurers
        self.owns_ray = owns_ray
        inputs = evaluation.inputs
        self.data_ref = ray.put(inputs.data)
        self.logits_ref = ray.put(inputs.teacher_logits)
        gpu = execution.torch_device.startswith("cuda")
        self.train = _train.options(num_cpus=TRAIN_THREADS, num_gpus=1 if gpu else 0, max_retries=3)
        slots = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 0) // (1 if gpu else TRAIN_THREADS))
        self.max_in_flight = execution.max_in_flight or IN_FLIGHT_PER_SLOT * max(1, slots)
        self._in_flight: list[Any] = []
        self._load = [0] * len(measurers)

    @classmethod
    def open(cls, config: SearchConfig, profile: Profile, db: Any, execution: Execution,
             load_inputs: Callable[[SearchConfig], SearchInputs]) -> RayEngine:
        """Connect to (or start) Ray, place the phones and check that they answer and agree,
        then load the inputs into the object store.

        Raises:
            ClusterError: nothing answers at the address, or no node has a phone's resource.
            DeviceError: a phone does not answer, or the phones differ in fingerprint.
        """
        from akd_mobile.latency import LatencyService
        from devices.profiles import phone_profiles

        phones = phone_profiles(profile)
        owns = _connect(execution.ray or "auto", [r for r in phones if r is not None])
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            if execution.torch_device == "auto":
                execution = dataclasses.replace(execution, torch_device="cuda" if gpus else "cpu")
            if execution.torch_device.startswith("cuda") and not gpus:
                raise ClusterError(f"--torch-device {execution.torch_device} asked for, but no node of the Ray "
                                   "cluster has a GPU; use --torch-device cpu")
            measurers, infos = _place(phones, config.measure)
            fingerprints = {info.fingerprint for info in infos.values()}
            if len(fingerprints) > 1:
                raise DeviceError(f"the phones of {profile.name} are not one platform (fingerprints "
                                  + ", ".join(f"{r}: {i.fingerprint}" for r, i in infos.items())
                                  + "); give each model of phone a profile of its own")
            service = LatencyService(_Described(profile.name, next(iter(infos.values()))), db, config.measure)
            return cls(CandidateEvaluation.open(config, service, load_inputs), execution, measurers, owns)
        except BaseException:
            if owns:
                ray.shutdown()
            raise

    def evaluate(self, candidates: Iterator[tuple[int, ArchSpec]], standing: Callable[[], Standing],
                 on_phase: OnPhase) -> Iterator[tuple[int, CandidateOutcome]]:
        feed: Iterator[tuple[int, ArchSpec]] | None = candidates  # None once it has given all
        plans: dict[int, Plan] = {}
        running: dict[int, _Running] = {}  # candidate -> its work in flight
        owner: dict[Any, int] = {}  # reference in flight -> its candidate
        finished: collections.deque[tuple[int, CandidateOutcome]] = collections.deque()

        def advance(cid: int, move: Callable[[Plan], Work]) -> None:
            try:
                work = move(plans[cid])
            except StopIteration as stop:
                del plans[cid]
                finished.append((cid, stop.value))
                return
            running[cid] = self._submit(work, cid, on_phase)
            owner.update((ref, cid) for ref in running[cid].parts)

        while feed is not None or owner or finished:
            while feed is not None and len(plans) < self.max_in_flight:
                taken = next(feed, None)
                if taken is None:
                    feed = None
                    break
                cid, arch = taken
                plans[cid] = self.evaluation.plan(arch, standing)
                advance(cid, next)
            while finished:
                yield finished.popleft()
            if not owner:
                continue
            self._in_flight = list(owner)
            [ref], _ = ray.wait(self._in_flight, num_returns=1)
            cid = owner.pop(ref)
            run = running[cid]
            part = self._settled(run, ref)
            try:
                run.answers[part] = self._received(part, ray.get(ref), run.work.arch)
            except Exception as exc:  # noqa: BLE001 - the plan decides: the candidate failed, or the run stops
                for other in [r for r in run.parts if r in owner]:  # its other half is not needed now
                    del owner[other]
                    self._settled(run, other)
                    ray.cancel(other, force=False)
                del running[cid]
                advance(cid, lambda plan, error=_unwrapped(exc): plan.throw(error))
                continue
            if len(run.answers) == len(run.parts):
                del running[cid]
                advance(cid, lambda plan, answer=run.answer(): plan.send(answer))
        self._in_flight = []

    def _submit(self, work: Work, cid: int, on_phase: OnPhase) -> _Running:
        """Start `work`: a training, a measurement (an export, then the least busy phone), or both at once."""
        parts: dict[Any, str] = {}
        phone = None
        if isinstance(work, (Measure, MeasureAndTrain)):
            on_phase(cid, "exporting")
            phone = min(range(len(self.measurers)), key=self._load.__getitem__)
            self._load[phone] += 1
            parts[self.measurers[phone](self._export(work.arch))] = "measure"
        if isinstance(work, (Train, MeasureAndTrain)):
            on_phase(cid, "training")
            parts[self._train(work.arch)] = "train"
        return _Running(work, parts, phone)

    def _settled(self, run: _Running, ref: Any) -> str:
        """The part `ref` is of `run`; a measurement's phone has one less to do."""
        part = run.parts[ref]
        if part == "measure" and run.phone is not None:
            self._load[run.phone] -= 1
        return part

    def _train(self, arch: ArchSpec) -> Any:
        """A training task for `arch`: its reference."""
        cfg = self.evaluation.config
        return self.train.remote(arch, self.data_ref, self.logits_ref, cfg.proxy, cfg.reward, cfg.seed,
                                 self.execution.torch_device, TRAIN_THREADS)

    def _export(self, arch: ArchSpec) -> Any:
        """An export task for `arch`: the reference of its `Shipped` model."""
        return _export.remote(arch, self.evaluation.config.fmt)

    def _received(self, part: str, value: Any, arch: ArchSpec) -> Any:
        """A part's answer for the plan: a training's score, or a measurement stored at once
        (kept even if the candidate's training then fails)."""
        if part == "train":
            return value
        assert isinstance(value, PhoneMeasurement)
        service: LatencyService = self.evaluation.service
        new = service.new_measurement(value.measured, Path(value.path), value.artifact, arch.key, value.export_s,
                                      value.measure_s)
        return MeasureDone(service.store(new), value.export_s, value.measure_s)

    def close(self) -> None:
        """Cancel the work still in flight; shut Ray down if this engine started it."""
        for ref in self._in_flight:
            try:
                ray.cancel(ref, force=False)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log.debug("cancel %s: %s", ref, exc)
        self._in_flight = []
        if self.owns_ray:
            ray.shutdown()


def _connect(address: str, phone_resources: list[str]) -> bool:
    """Join the Ray cluster at `address` (`auto`: the one `ray start` began on this machine,
    else a new local one that holds the phones), unless this process is in one already.
    Returns whether this call started or joined Ray (and so shuts it down at the end).

    Raises:
        ClusterError: nothing answers at `address`, or no node has a phone's resource.
    """
    if ray.is_initialized():
        _check_phones(phone_resources, "the Ray cluster this process is in")
        return False
    options = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
    with signals_for_ray_init():
        if address == "auto":
            try:
                ray.init(address="auto", **options)
            except ConnectionError:
                # workers at the driver's priority (Ray's default, nice 15, lets any other load
                # on the host starve the search's trainings)
                ray.init(resources={r: 1 for r in phone_resources}, _system_config={"worker_niceness": 0}, **options)
                return True
        else:
            _check_answers(address)
            try:
                ray.init(address=address, **options)
            except ConnectionError as exc:
                hint = "" if os.environ.get("RAY_AUTH_MODE") == "token" else (
                    "; if it uses token authentication (`ray start --head` turns it on since Ray 2.59), set "
                    "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
                raise ClusterError(f"the Ray cluster at {address} did not take this driver: "
                                   f"{' '.join(str(exc).split())}{hint}") from None
    try:
        _check_phones(phone_resources, f"the Ray cluster at {address}")
    except BaseException:
        ray.shutdown()
        raise
    return True


def _check_answers(address: str) -> None:
    """Raise ClusterError unless something accepts a connection at `address` (`host:port`) within
    CONNECT_TIMEOUT_S (`ray.init` itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray takes auto or a Ray head's host:port, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                           f"`ray start --head`, or give the head's address") from None


def _check_phones(phone_resources: list[str], where: str) -> None:
    have = ray.cluster_resources()
    for resource in phone_resources:
        if have.get(resource, 0) < 1:
            raise ClusterError(f"no node of {where} has {resource}: on the node the phone is plugged into, run "
                               f"ray start --address HEAD --resources '{{\"{resource}\": 1}}'")


def _place(phones: dict[str | None, Profile], settings: MeasureSettings
           ) -> tuple[list[Callable[[Any], Any]], dict[str, DeviceInfo]]:
    """A measuring function per device of the profile (a phone actor's, or the host task's)
    and each device's description.

    Raises:
        DeviceError: a device does not answer.
    """
    measurers: list[Callable[[Any], Any]] = []
    info_refs: dict[str, Any] = {}
    for resource, profile in phones.items():
        if resource is None:  # this host's CPU, on the driver's node, with no training beside it
            here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
            cpus = _node_cpus(ray.get_runtime_context().get_node_id())
            measure = _measure_on_host.options(num_cpus=cpus, scheduling_strategy=here, max_retries=3)
            measurers.append(lambda shipped, m=measure, p=profile: m.remote(p, settings, shipped))
            info_refs["local"] = _host_info.options(num_cpus=0, scheduling_strategy=here).remote(profile)
            continue
        actor = Phone.options(resources={resource: 1}, **PHONE_ACTOR_OPTIONS).remote(profile, settings)
        measurers.append(actor.measure.remote)
        info_refs[resource] = actor.info.remote()
    infos = {}
    for name, ref in info_refs.items():
        try:
            infos[name] = ray.get(ref, timeout=PHONE_INFO_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise DeviceError(f"{name} did not describe itself within {PHONE_INFO_TIMEOUT_S:g} s") from None
        except Exception as exc:  # noqa: BLE001 - the device's own error, unwrapped
            raise _unwrapped(exc) from None
    return measurers, infos


def _node_cpus(node_id: str) -> float:
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return float(node.get("Resources", {}).get("CPU", 1))
    return 1.0


def _unwrapped(exc: BaseException) -> BaseException:
    """Our own error out of a Ray task as raised there; what Ray lost as a HostError."""
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    if isinstance(exc, _LOST):
        return HostError(f"the Ray cluster lost the work: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    return exc


@contextlib.contextmanager
def signals_for_ray_init() -> Iterator[None]:
    """Around `ray.init`: keep this process's SIGTERM handler (Ray installs its own), and let
    the Ray processes it starts take SIGINT. A shell starts a background job (`cmd &` in a
    script, as under `nohup`) with SIGINT ignored, and a process keeps an ignored signal
    across exec: Ray's workers would then ignore the SIGINT by which `ray.cancel` stops a
    running task, and a cancelled training would run on to its end."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    saved_term = signal.getsignal(signal.SIGTERM)
    ignored_int = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored_int:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved_term)
        if ignored_int:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
