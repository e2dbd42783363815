"""The `adb` backend: a phone or emulator over adb-shell (TCP `host:port` or USB serial).

One measurement: verify the benchmark tool's checksum on the device (tools are pushed once by
`akd-mobile devices setup NAME`), wait (bounded) until the thermal zones are under the
profile's limit, push the model to `/data/local/tmp/akd/` unless the same hash is there, run
the tool under `taskset` with explicit threads, runs and warm-up, parse its output, remove the
model. Every call has a timeout sized to its work; a dropped connection reconnects and the
measurement is retried a bounded number of times, then fails with a DeviceError (the caller
stores nothing). A profile:

```toml
backend = "adb"
address = "127.0.0.1:5555"        # TCP; or serial = "SERIAL" ("" = the only USB device)
key = ""                          # private key; default ~/.android/adbkey, else devices keygen's
threads = 1                       # how latencies are measured here (akd_base.measurement.MeasureSettings)
runs = 50
warmup = 10
min_time_s = 1.0                  # timed runs go on until they have taken this long in all
cpu_mask = "auto"                 # hex mask, "auto" (cores of the fastest cpufreq policy) or "none"
thermal_limit_c = 45.0            # wait while a thermal zone is hotter ...
thermal_wait_s = 120              # ... at most this long, then measure and record it
connect_timeout_s = 10
run_timeout_s = 120               # fixed part of a tool run's timeout ...
per_run_timeout_s = 5             # ... plus this per (warm-up + timed) run
push_rate_bytes_s = 2000000       # slowest push rate the push timeout allows for
retries = 2
remote_dir = "/data/local/tmp/akd"

[tools.tflite]                    # per model format: a tool built for the phone
path = "~/android/benchmark_model"
kind = "benchmark_model"          # flags and parser: benchmark_model or executor_runner
```
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from akd_base.errors import DeviceError, DeviceUnavailable, ParseError
from akd_base.formats import FORMATS, RUNTIME_OF_FORMAT
from akd_base.measurement import DeviceInfo, LatencyResult, Measured, MeasureSettings
from devices.parsers import (
    TOOL_PARSERS,
    CpuPolicy,
    parse_cpu_list,
    parse_cpufreq_policies,
    parse_getprop,
    parse_thermal_zones,
    parse_thermalservice,
    parse_tool_output,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

BUILTIN_RUNNER = "builtin:loopback-runner"
FORMAT_OF_SUFFIX = {f".{fmt}": fmt for fmt in FORMATS}
SHELL_TIMEOUT_S = 30.0
_RC_MARK = "__akd_rc="
_POLICIES = (
    "for p in /sys/devices/system/cpu/cpufreq/policy*; do "
    'echo "$p|$(cat $p/related_cpus)|$(cat $p/cpuinfo_max_freq)|$(cat $p/scaling_governor)"; '
    "done 2>/dev/null"
)
_THERMAL = 'for z in /sys/class/thermal/thermal_zone*; do echo "$(cat $z/type)|$(cat $z/temp)"; done 2>/dev/null'
_THREADS_FLAG = {"benchmark_model": "--num_threads", "executor_runner": "--cpu_threads"}


@dataclass(frozen=True)
class ToolSpec:
    """A benchmark tool for one model format.

    Attributes:
        path: the tool on this host (a binary built for the phone), or `builtin:loopback-runner`.
        kind: `benchmark_model` or `executor_runner`: which flags it takes and which parser reads it.
        threads_flag: the flag that sets its thread count ("" to pass none).
    """

    path: str
    kind: str
    threads_flag: str

    def local_path(self) -> Path:
        """The file to push: the user's tool, or the loopback runner's launcher script.

        Raises:
            DeviceError: the tool file does not exist.
        """
        if self.path == BUILTIN_RUNNER:
            from akd_base.files import default_cache_dir
            from devices.loopback_runner import write_launcher

            return write_launcher(default_cache_dir() / "loopback")
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise DeviceError(
                f"benchmark tool {path} does not exist: build {self.kind} for the phone's ABI and set its path in the profile"
            )
        return path


@dataclass(frozen=True)
class AdbSettings:
    """An `adb` profile's settings (see the module docstring for each one's meaning)."""

    address: str = ""
    serial: str | None = None
    key: str = ""
    cpu_mask: str = "auto"
    thermal_limit_c: float = 45.0
    thermal_wait_s: float = 120.0
    connect_timeout_s: float = 10.0
    run_timeout_s: float = 120.0
    per_run_timeout_s: float = 5.0
    push_rate_bytes_s: float = 2_000_000.0
    retries: int = 2
    remote_dir: str = "/data/local/tmp/akd"
    tools: dict[str, ToolSpec] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> AdbSettings:
        """Validate a profile's settings.

        Raises:
            DeviceError: unknown keys, wrong types, or neither/both of address and serial.
        """
        data = dict(data)
        tools = data.pop("tools", {})
        known = {f.name: f for f in fields(cls) if f.name != "tools"}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise DeviceError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        for name, value in data.items():
            expected = {"int": int, "float": (int, float), "str": str, "str | None": str}[known[name].type]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise DeviceError(f"{where}: {name} must be a {known[name].type.split(' ')[0]}, got {value!r}")
        settings = cls(**data, tools=_tool_specs(tools, where))
        if bool(settings.address) == (settings.serial is not None):
            raise DeviceError(f"{where}: set exactly one of address (TCP host:port) and serial (USB)")
        if settings.address:
            _split_address(settings.address, where)
        if settings.retries < 0:
            raise DeviceError(f"{where}: retries must be >= 0")
        if min(settings.connect_timeout_s, settings.run_timeout_s, settings.push_rate_bytes_s) <= 0:
            raise DeviceError(f"{where}: timeouts and push_rate_bytes_s must be positive")
        if not settings.remote_dir.startswith("/") or any(c in settings.remote_dir for c in " '\"$`\\"):
            raise DeviceError(f"{where}: remote_dir must be a plain absolute path")
        _cpu_mask_value(settings.cpu_mask, where)
        return settings


def _tool_specs(tools: Any, where: str) -> dict[str, ToolSpec]:
    if not isinstance(tools, dict):
        raise DeviceError(f"{where}: [tools] must be a table of formats (tflite, pte)")
    specs = {}
    for fmt, spec in tools.items():
        if fmt not in FORMATS or not isinstance(spec, dict):
            raise DeviceError(f"{where}: [tools.{fmt}]: formats are {', '.join(FORMATS)}, each a table")
        kind, path = spec.get("kind"), spec.get("path")
        if kind not in TOOL_PARSERS or not isinstance(path, str) or not path:
            raise DeviceError(f"{where}: [tools.{fmt}] needs path and kind = one of {', '.join(TOOL_PARSERS)}")
        extra = sorted(set(spec) - {"kind", "path", "threads_flag"})
        if extra:
            raise DeviceError(f"{where}: [tools.{fmt}]: unknown key(s) {', '.join(extra)}")
        specs[fmt] = ToolSpec(path, kind, str(spec.get("threads_flag", _THREADS_FLAG[kind])))
    return specs


def _split_address(address: str, where: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeviceError(f"{where}: address must be host:port, got {address!r}")
    return host, int(port)


def _cpu_mask_value(text: str, where: str) -> int | None:
    """The mask a fixed `cpu_mask` names; None for `auto` and `none`."""
    if text in ("auto", "none"):
        return None
    try:
        mask = int(text, 16)
    except ValueError:
        mask = 0
    if mask <= 0:
        raise DeviceError(f"{where}: cpu_mask must be a hex mask such as f0, auto, or none; got {text!r}")
    return mask


@dataclass(frozen=True)
class Conditions:
    """How one measurement ran, recorded with it.

    Attributes:
        thermal_c: the hottest thermal zone just before the run (None: none readable).
        thermal_waited_s: how long the thermal gate waited.
        thermal_over_limit: still above the limit when the wait ran out.
        cpu_mask: the taskset mask in hex ("" when not pinned).
        tool_sha256: checksum of the tool that ran.
        attempts: connection attempts the measurement took.
    """

    thermal_c: float | None
    thermal_waited_s: float
    thermal_over_limit: bool
    cpu_mask: str
    tool_sha256: str
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class AdbDevice:
    """A phone or emulator reached through adb-shell."""

    def __init__(self, name: str, settings: AdbSettings, where: str = "", profile_arg: str = "") -> None:
        self.name = name
        self.settings = settings
        self.where = where or f"device {name}"
        self.profile_arg = profile_arg or name  # what `devices setup` takes to find the profile
        self._adb: Any = None
        self._verified: dict[str, str] = {}
        self._policies: list[CpuPolicy] | None = None
        self._info: DeviceInfo | None = None

    @classmethod
    def from_profile(cls, profile: Any) -> AdbDevice:
        """Open the device an `adb` profile describes (see the module docstring)."""
        where = f"device profile {profile.path}"
        return cls(profile.name, AdbSettings.from_dict(profile.settings, where), where, profile.argument)

    # ------------------------------------------------------------ connection

    @property
    def target(self) -> str:
        """`host:port`, or `usb:SERIAL`."""
        return self.settings.address or f"usb:{self.settings.serial or 'any'}"

    def connect(self) -> None:
        """Open the connection and authenticate (no-op when open).

        Raises:
            DeviceError: no answer in time, the key refused, USB held by Google's adb server.
        """
        if self._adb is not None:
            return
        from devices.adb_keys import default_key_path, load_signer

        key = Path(self.settings.key).expanduser() if self.settings.key else default_key_path()
        signer = load_signer(key)
        timeout = self.settings.connect_timeout_s
        adb = self._transport()
        asked_to_accept: list[bool] = []
        try:
            adb.connect(
                rsa_keys=[signer],
                transport_timeout_s=timeout,
                auth_timeout_s=timeout,
                read_timeout_s=timeout,
                auth_callback=lambda _dev: asked_to_accept.append(True),
            )
        except Exception as exc:
            adb.close()
            raise self._connect_error(exc, key, bool(asked_to_accept)) from exc
        self._adb = adb
        self._verified.clear()
        log.info("connected to %s (%s)", self.name, self.target)

    def _transport(self) -> Any:
        from adb_shell.adb_device import AdbDevice as ShellDevice
        from adb_shell.transport.tcp_transport import TcpTransport

        if self.settings.address:
            host, port = _split_address(self.settings.address, self.where)

            class _Tcp(TcpTransport):
                """adb-shell's TCP transport, with a closed socket reported at once instead of
                read as empty data until the read timeout."""

                def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
                    data = super().bulk_read(numbytes, transport_timeout_s)
                    if not data:
                        raise ConnectionResetError(f"{host}:{port} closed the connection")
                    return data

            return ShellDevice(_Tcp(host, port), default_transport_timeout_s=self.settings.connect_timeout_s)
        try:
            from adb_shell.adb_device import AdbDeviceUsb
        except ImportError as exc:
            raise DeviceError("USB needs adb-shell's usb extra: pip install 'adb-shell[usb]'") from exc
        try:
            return AdbDeviceUsb(serial=self.settings.serial or None, default_transport_timeout_s=self.settings.connect_timeout_s)
        except Exception as exc:
            raise self._connect_error(exc, None, False) from exc

    def _connect_error(self, exc: BaseException, key: Path | None, asked_to_accept: bool) -> DeviceUnavailable:
        text = f"{type(exc).__name__}: {exc}"
        if "BUSY" in text.upper():
            return DeviceUnavailable(
                f"{self.name} ({self.target}) is held by Google's adb server; run `adb kill-server` and retry"
            )
        if "ACCESS" in text.upper() and not self.settings.address:
            return DeviceUnavailable(f"no permission to open USB device {self.target}: add a udev rule for it (plugdev group)")
        if "NotFound" in type(exc).__name__ or "not found" in text.lower():
            return DeviceUnavailable(f"no USB device {self.target}: plug the phone in and enable USB debugging")
        if asked_to_accept:
            return DeviceUnavailable(
                f"{self.name} ({self.target}) did not accept the ADB key {key}: on a phone, accept the "
                f"'Allow USB debugging' dialog; a loopback daemon must be started with --keys holding {key}.pub"
            )
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            return DeviceUnavailable(
                f"{self.target} closed the connection during the ADB handshake: is {self.name}'s address an ADB device?"
            )
        if isinstance(exc, ConnectionRefusedError):
            return DeviceUnavailable(f"nothing listens at {self.target} for {self.name}: start the emulator or daemon, or fix address")
        return DeviceUnavailable(
            f"{self.name} ({self.target}) did not answer within {self.settings.connect_timeout_s:g} s ({text}); "
            "check that it is on, reachable and in ADB mode"
        )

    def close(self) -> None:
        """Drop the connection (reopened by the next call)."""
        if self._adb is not None:
            try:
                self._adb.close()
            finally:
                self._adb = None

    def _retrying(self, what: str, action: Callable[[int], T]) -> T:
        """Run `action(attempt)` with a connection, reconnecting after transport failures."""
        from adb_shell import exceptions as adb_exc

        transient = (
            ConnectionError,
            TimeoutError,
            OSError,
            adb_exc.TcpTimeoutException,
            adb_exc.AdbTimeoutError,
            adb_exc.AdbConnectionError,
            adb_exc.InvalidResponseError,
            adb_exc.InvalidChecksumError,
            adb_exc.InvalidCommandError,
            adb_exc.UsbReadFailedError,
            adb_exc.UsbWriteFailedError,
        )
        attempts = self.settings.retries + 1
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                self.connect()
            except DeviceError as exc:
                if attempt == 1:  # never connected: the connection error says it all
                    raise
                last = exc  # reconnecting after a drop: the device may be coming back
                log.warning("reconnecting to %s, attempt %d of %d: %s", self.name, attempt, attempts, exc)
                time.sleep(min(2.0, 0.25 * attempt))
                continue
            try:
                return action(attempt)
            except transient as exc:
                last = exc
                log.warning("%s on %s, attempt %d of %d: %s", what, self.name, attempt, attempts, exc)
                self.close()
                if attempt < attempts:
                    time.sleep(min(2.0, 0.25 * attempt))
        raise DeviceUnavailable(
            f"{what} on {self.name} ({self.target}) failed after {attempts} attempt(s): {type(last).__name__}: {last}; "
            "check the cable or network and that the device stays awake; nothing was stored"
        )

    # ------------------------------------------------------------ primitives (connected)

    def _shell(self, command: str, timeout_s: float = SHELL_TIMEOUT_S) -> tuple[int, str]:
        """Run `command` in the device shell; return its exit status and merged output."""
        out = self._adb.shell(
            f"{command}; echo {_RC_MARK}$?",
            transport_timeout_s=timeout_s,
            read_timeout_s=timeout_s,
            timeout_s=timeout_s,
            decode=True,
        )
        body, sep, tail = out.rpartition(_RC_MARK)
        if not sep or not tail.strip().isdigit():
            raise ConnectionResetError(f"the device shell ended before `{command[:60]}` finished")
        return int(tail.strip()), body

    def _sha256(self, remote: str) -> str:
        rc, out = self._shell(f"sha256sum {shlex.quote(remote)} 2>/dev/null")
        return out.split()[0] if rc == 0 and out.split() else ""

    def _push(self, local: Path, remote: str, mode: int = 0o644) -> None:
        timeout = SHELL_TIMEOUT_S + local.stat().st_size / self.settings.push_rate_bytes_s
        self._adb.push(
            str(local), remote, st_mode=0o100000 | mode, transport_timeout_s=timeout, read_timeout_s=timeout
        )

    def _ensure_file(self, local: Path, remote: str, sha256: str, mode: int = 0o644) -> bool:
        """Push `local` to `remote` unless a file with the same hash is there; True if pushed.

        Raises:
            DeviceError: the pushed file's checksum differs (a failing device or full storage).
        """
        if self._sha256(remote) == sha256:
            return False
        self._shell(f"mkdir -p {shlex.quote(remote.rsplit('/', 1)[0])}")
        self._push(local, remote, mode)
        got = self._sha256(remote)
        if got != sha256:
            raise DeviceUnavailable(f"{remote} on {self.name} has checksum {got or 'none'} after the push, not {sha256}: check free space")
        return True

    # ------------------------------------------------------------ tools

    def _tool(self, fmt: str) -> ToolSpec:
        tool = self.settings.tools.get(fmt)
        if tool is None:
            raise DeviceError(f"{self.where} names no tool for .{fmt} models: add [tools.{fmt}] with path and kind")
        return tool

    def _tool_remote(self, local: Path) -> str:
        return f"{self.settings.remote_dir}/tools/{local.name}"

    def setup(self) -> list[dict[str, Any]]:
        """Push the profile's benchmark tools (once; skipped when the same checksum is there).

        Returns:
            One row per tool: format, kind, local and remote paths, sha256, pushed.

        Raises:
            DeviceError: no tools in the profile, a missing tool file, or a device failure.
        """
        from akd_base.files import file_sha256

        if not self.settings.tools:
            raise DeviceError(f"{self.where} names no benchmark tools: add a [tools.tflite] or [tools.pte] table")
        rows = []
        for fmt, tool in sorted(self.settings.tools.items()):
            local = tool.local_path()
            sha = file_sha256(local)
            remote = self._tool_remote(local)
            pushed = self._retrying(f"setting up {local.name}", lambda _a: self._ensure_file(local, remote, sha, 0o755))
            self._verified[remote] = sha
            rows.append({"format": fmt, "kind": tool.kind, "local": str(local), "remote": remote, "sha256": sha, "pushed": pushed})
        return rows

    def _verified_tool(self, tool: ToolSpec) -> tuple[str, str]:
        """The tool's remote path and checksum, checked on the device (once per connection)."""
        from akd_base.files import file_sha256

        local = tool.local_path()
        sha = file_sha256(local)
        remote = self._tool_remote(local)
        if self._verified.get(remote) != sha:
            if self._sha256(remote) != sha:
                raise DeviceUnavailable(f"{tool.kind} on {self.name} is missing or differs from {local}: run `akd-mobile devices setup {shlex.quote(self.profile_arg)}`")
            self._verified[remote] = sha
        return remote, sha

    # ------------------------------------------------------------ state

    def _cpu_policies(self) -> list[CpuPolicy]:
        if self._policies is None:
            _, out = self._shell(_POLICIES)
            self._policies = parse_cpufreq_policies(out)
        return self._policies

    def cpu_mask(self) -> int | None:
        """The taskset mask: the profile's, or with `auto` the cores of the fastest cpufreq policy
        (None, no pinning, when the device exposes no cpufreq policies or the profile says `none`)."""
        fixed = _cpu_mask_value(self.settings.cpu_mask, self.where)
        if fixed is not None or self.settings.cpu_mask == "none":
            return fixed
        policies = self._cpu_policies()
        if not policies:
            log.warning("%s exposes no cpufreq policies; running without taskset", self.name)
            return None
        return max(policies, key=lambda p: (p.max_freq_khz, len(p.cpus))).mask

    def thermal(self) -> dict[str, float]:
        """Temperature of every readable thermal zone, degrees C, else of the thermal service's
        sensors (`dumpsys thermalservice`); empty when neither is readable (connected)."""
        _, out = self._shell(_THERMAL)
        temps = parse_thermal_zones(out)
        if not temps:
            _, out = self._shell("dumpsys thermalservice 2>/dev/null")
            temps = parse_thermalservice(out)
        return temps

    def _thermal_gate(self) -> tuple[float | None, float, bool]:
        """Wait (bounded) until every zone is under the limit; (hottest C, waited s, still over)."""
        start = time.monotonic()
        while True:
            temps = self.thermal()
            hottest = max(temps.values()) if temps else None
            waited = time.monotonic() - start
            if hottest is None or hottest <= self.settings.thermal_limit_c:
                return hottest, waited, False
            if waited >= self.settings.thermal_wait_s:
                log.warning("%s still at %.1f C after %.0f s; measuring anyway", self.name, hottest, waited)
                return hottest, waited, True
            log.info("%s at %.1f C > %.1f C: cooling down", self.name, hottest, self.settings.thermal_limit_c)
            time.sleep(min(5.0, max(0.1, self.settings.thermal_wait_s - waited)))

    def info(self) -> DeviceInfo:
        """Model, SoC, ABI, build fingerprint, cores with max frequencies and governors, thermal state.

        The hardware identity is read once per device object; `extra["thermal_c"]` is a snapshot
        taken then. Runtimes: the `akd.runtime.*` properties a loopback device reports, else each
        tool's name and checksum (a phone's tool has no other version).

        Raises:
            DeviceError: the device cannot be reached.
        """
        if self._info is None:
            self._info = self._retrying("reading device info", self._read_info)
        return self._info

    def _read_info(self, _attempt: int) -> DeviceInfo:
        from akd_base.files import file_sha256

        _, props_text = self._shell("getprop")
        props = parse_getprop(props_text)
        policies = self._cpu_policies()
        _, possible = self._shell("cat /sys/devices/system/cpu/possible")
        try:
            cores = len(parse_cpu_list(possible)) or 1
        except ParseError:
            cores = max((c for p in policies for c in p.cpus), default=0) + 1
        freq = {c: p.max_freq_khz for p in policies for c in p.cpus}
        runtimes = {}
        for fmt, tool in self.settings.tools.items():
            name = RUNTIME_OF_FORMAT[fmt]
            reported = props.get(f"akd.runtime.{name}")
            if reported:
                runtimes[name] = reported
            else:
                try:
                    runtimes[name] = f"{tool.kind} sha256:{file_sha256(tool.local_path())[:12]}"
                except DeviceError as exc:
                    log.info("%s: %s", self.name, exc)
        return DeviceInfo(
            backend="adb",
            model=props.get("ro.product.model", "unknown"),
            soc=props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware", "unknown"),
            abi=props.get("ro.product.cpu.abi", "unknown"),
            cores=cores,
            max_freqs_khz=tuple(freq[c] for c in sorted(freq)) if len(freq) == cores else (),
            runtimes=runtimes,
            extra={
                "build_fingerprint": props.get("ro.build.fingerprint", ""),
                "manufacturer": props.get("ro.product.manufacturer", ""),
                "sdk": props.get("ro.build.version.sdk", ""),
                "target": self.target,
                "policies": [
                    {"name": p.name, "cpus": list(p.cpus), "max_freq_khz": p.max_freq_khz, "governor": p.governor}
                    for p in policies
                ],
                "thermal_c": self.thermal(),
            },
        )

    # ------------------------------------------------------------ measurement

    def measure(self, artifact: Path, settings: MeasureSettings) -> Measured:
        """Time at least `settings.runs` inferences of a `.tflite` or `.pte` file after the
        warm-up, and at least `settings.min_time_s` of timed runs, on the device; the
        conditions (thermal state, CPU mask, tool checksum, attempts) come with the result.

        `benchmark_model` takes `--min_secs`; `executor_runner` has no such flag, so when its
        runs took less than `min_time_s` it runs again with the count the first pass implies,
        and the second pass is the measurement.

        Raises:
            DeviceError: a bad file, a tool not set up, a device failure after the retries,
                or tool output with no timing (ParseError).
        """
        from akd_base.files import file_sha256
        from devices.local import check_artifact

        artifact = check_artifact(artifact)
        warmup, min_time_s = settings.warmup, settings.min_time_s
        fmt = FORMAT_OF_SUFFIX[artifact.suffix]
        tool = self._tool(fmt)
        sha = file_sha256(artifact)
        remote = f"{self.settings.remote_dir}/{sha[:16]}{artifact.suffix}"

        def run_tool(tool_remote: str, mask: int | None, timed: int) -> LatencyResult:
            argv = self._tool_argv(tool, tool_remote, remote, settings.threads, warmup, timed, min_time_s)
            if mask is not None:
                argv = ["taskset", f"{mask:x}", *argv]
            command = f"cd {shlex.quote(self.settings.remote_dir)} && {shlex.join(argv)} 2>&1"
            timeout = self.settings.run_timeout_s + self.settings.per_run_timeout_s * (warmup + timed) + min_time_s
            rc, out = self._shell(command, timeout)
            try:
                return parse_tool_output(tool.kind, out, skip_first=warmup if tool.kind == "executor_runner" else 0)
            except ParseError as exc:
                raise ParseError(f"{tool.kind} on {self.name} exited with status {rc}: {exc}") from None

        def attempt(number: int) -> Measured:
            tool_remote, tool_sha = self._verified_tool(tool)
            hottest, waited, over = self._thermal_gate()
            mask = self.cpu_mask()
            self._ensure_file(artifact, remote, sha)
            try:
                result = run_tool(tool_remote, mask, settings.runs)
                if tool.kind == "executor_runner" and result.count * result.mean_ms < min_time_s * 1e3:
                    result = run_tool(tool_remote, mask, math.ceil(min_time_s * 1e3 / result.mean_ms))
            finally:
                self._remove(remote)
            conditions = Conditions(hottest, round(waited, 3), over, f"{mask:x}" if mask else "", tool_sha, number)
            return Measured(result, conditions.to_dict())

        return self._retrying(f"measuring {artifact.name}", attempt)

    @staticmethod
    def _tool_argv(tool: ToolSpec, tool_remote: str, model: str, threads: int, warmup: int, runs: int,
                   min_time_s: float) -> list[str]:
        threads_arg = [f"{tool.threads_flag}={threads}"] if tool.threads_flag else []
        if tool.kind == "executor_runner":
            return [tool_remote, f"--model_path={model}", f"--num_executions={warmup + runs}", *threads_arg]
        return [tool_remote, f"--graph={model}", *threads_arg, f"--num_runs={runs}", f"--warmup_runs={warmup}",
                f"--min_secs={min_time_s:g}"]

    def _remove(self, remote: str) -> None:
        """Best-effort removal of a pushed model (a dropped connection leaves it for next time)."""
        try:
            self._shell(f"rm -f {shlex.quote(remote)}")
        except Exception as exc:  # the measurement's own error matters more than the cleanup's
            log.info("could not remove %s from %s: %s", remote, self.name, exc)

    def status(self) -> tuple[bool, str]:
        """Whether the device answers now (one quick connection, no retries), and why not."""
        try:
            self.connect()
            self._shell("true", self.settings.connect_timeout_s)
            return True, ""
        except DeviceError as exc:
            return False, str(exc)
        except Exception as exc:  # a transport failure: the device does not answer
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            self.close()
