"""Pure parsers: text a device or its benchmark tools print -> typed results.

Benchmark tools:
- LiteRT / TensorFlow Lite `benchmark_model`: the `count=... avg=... std=...` statistics line of the
  timed run (times in microseconds), in every format its builds have printed: with or without an
  `INFO: ` prefix or an Android logcat prefix, numbers in exponent form, the real `count=` (which
  differs from `--num_runs` under `--min_secs`/`--max_secs`), TensorFlow Lite 2.4-2.6 lines without
  `median=`, and old builds whose only summary is `Average inference timings in us: ...`.
- ExecuTorch `executor_runner`: one `Iteration i of n: X ms` line per run (ExecuTorch 1.3 and later)
  become the samples; older builds print only `Model executed successfully N time(s) in X ms.`

Device state: `getprop` listings, cpufreq policies and thermal zones, as printed by the shell
commands of the `adb` backend.

Everything here is a pure function of its text argument, tested on recorded tool output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from akd_base.errors import ParseError
from akd_base.measurement import LatencyResult

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FIELD = re.compile(rf"\b([a-z_0-9]+)=({_NUMBER})")
_COUNT_LINE = re.compile(rf"\bcount=({_NUMBER})\b")
_INFERENCE_AVG = re.compile(rf"Inference timings in us:.*?Inference \(avg\):\s*({_NUMBER})")
_OLD_AVERAGE = re.compile(
    rf"Average inference timings in us:.*?(?:Inference|no stats):\s*({_NUMBER})", re.IGNORECASE
)
_NUM_RUNS = re.compile(r"Num runs:\s*\[(\d+)\]")
_ITERATION = re.compile(rf"Iteration\s+(\d+)\s+of\s+(\d+):\s*({_NUMBER})\s*ms")
_EXECUTED = re.compile(rf"Model executed successfully\s+(\d+)\s+time\(s\)\s+in\s+({_NUMBER})\s*ms")
_TAIL_LINES = 6

TOOL_PARSERS = ("benchmark_model", "executor_runner")


def parse_benchmark_model(text: str) -> LatencyResult:
    """Parse LiteRT / TensorFlow Lite `benchmark_model` output.

    The statistics come from the last `count=` line that carries `avg=` (the timed run; the warm-up
    line before it has no `avg=`). Its times are microseconds. Builds that print no `median=` (TF Lite
    2.6 and older) give the mean as `median_ms`, since the tool reports nothing closer. Output with only
    the old `Average inference timings in us: ... Inference: X` line gives the mean for every statistic,
    `std_ms` 0, and the run count from `Num runs: [N]` (1 when the tool did not print it).

    Args:
        text: everything the tool printed (stdout and stderr, or a logcat dump).

    Returns:
        The latency of the timed runs, with no per-run samples (the tool prints none).

    Raises:
        ParseError: the output holds no timing; the message quotes its last lines.
    """
    stats = None
    for line in text.splitlines():
        if _COUNT_LINE.search(line):
            fields = {k: float(v) for k, v in _FIELD.findall(line[line.index("count=") :])}
            if "avg" in fields:
                stats = fields
    if stats is not None:
        mean_ms = stats["avg"] / 1000.0
        median_ms = stats["median"] / 1000.0 if "median" in stats else mean_ms
        return LatencyResult(
            count=int(stats["count"]),
            median_ms=median_ms,
            mean_ms=mean_ms,
            std_ms=stats.get("std", 0.0) / 1000.0,
            min_ms=stats.get("min", stats["avg"]) / 1000.0,
            max_ms=stats.get("max", stats["avg"]) / 1000.0,
        )
    average = _last_match(_INFERENCE_AVG, text) or _last_match(_OLD_AVERAGE, text)
    if average is not None:
        mean_ms = float(average.group(1)) / 1000.0
        runs = _last_match(_NUM_RUNS, text)
        return LatencyResult(
            count=int(runs.group(1)) if runs else 1,
            median_ms=mean_ms,
            mean_ms=mean_ms,
            std_ms=0.0,
            min_ms=mean_ms,
            max_ms=mean_ms,
        )
    raise ParseError(_no_timing("benchmark_model", text))


def parse_executor_runner(text: str, skip_first: int = 0) -> LatencyResult:
    """Parse ExecuTorch `executor_runner` output (stdout, or logcat with the `ExecuTorch` tag).

    Each `Iteration i of n: X ms` line is one sample. Builds without those lines give the mean of
    `Model executed successfully N time(s) in X ms.` (X is the total over the N runs).

    Args:
        text: everything the tool printed.
        skip_first: number of leading iterations to drop as warm-up (the tool has no warm-up flag,
            so the caller runs warm-up plus timed iterations and drops the first ones).

    Returns:
        The latency of the timed iterations, with their samples when the tool printed them.

    Raises:
        ParseError: the output holds no timing, or no iteration is left after `skip_first`.
    """
    samples = [float(m.group(3)) for m in _ITERATION.finditer(text)]
    if samples:
        timed = samples[skip_first:]
        if not timed:
            raise ParseError(
                f"executor_runner printed {len(samples)} iteration(s), all of them warm-up "
                f"({skip_first} skipped): raise the number of runs"
            )
        return LatencyResult.from_samples(timed)
    executed = _last_match(_EXECUTED, text)
    if executed is not None:
        runs = int(executed.group(1))
        if runs > 0:
            mean_ms = float(executed.group(2)) / runs
            return LatencyResult(
                count=runs, median_ms=mean_ms, mean_ms=mean_ms, std_ms=0.0, min_ms=mean_ms, max_ms=mean_ms
            )
    raise ParseError(_no_timing("executor_runner", text))


def parse_tool_output(tool: str, text: str, skip_first: int = 0) -> LatencyResult:
    """Parse the output of `tool` (one of `TOOL_PARSERS`).

    Args:
        tool: `benchmark_model` or `executor_runner`.
        text: the tool's output.
        skip_first: warm-up iterations to drop (executor_runner only).

    Raises:
        ParseError: unknown tool, or no timing in the output.
    """
    if tool == "benchmark_model":
        return parse_benchmark_model(text)
    if tool == "executor_runner":
        return parse_executor_runner(text, skip_first)
    raise ParseError(f"unknown benchmark tool kind {tool!r}: use one of {', '.join(TOOL_PARSERS)}")


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    match = None
    for match in pattern.finditer(text):
        pass
    return match


def _no_timing(tool: str, text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return f"{tool} printed nothing: check that the tool runs on the device"
    tail = " | ".join(lines[-_TAIL_LINES:])
    return f"no timing in {tool} output; its last lines: {tail}"


# ---------------------------------------------------------------- device state

_GETPROP_LINE = re.compile(r"^\[([^\]]+)\]:\s*\[(.*)\]\s*$")


@dataclass(frozen=True)
class CpuPolicy:
    """One cpufreq policy: a cluster of cores that share a clock.

    Attributes:
        name: policy folder name (`policy4`).
        cpus: the cores in the cluster.
        max_freq_khz: the cluster's maximum frequency.
        governor: the scaling governor (`schedutil`, ...), empty when unreadable.
    """

    name: str
    cpus: tuple[int, ...]
    max_freq_khz: int
    governor: str

    @property
    def mask(self) -> int:
        """CPU affinity mask of the cluster's cores (for `taskset`)."""
        return sum(1 << c for c in self.cpus)


def parse_getprop(text: str) -> dict[str, str]:
    """Parse the `[key]: [value]` listing printed by Android's `getprop`."""
    props = {}
    for line in text.splitlines():
        m = _GETPROP_LINE.match(line.strip())
        if m:
            props[m.group(1)] = m.group(2)
    return props


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse a kernel CPU list (`0-3,6 7` or `0 1 2`) into sorted core numbers.

    Raises:
        ParseError: a token that is neither a number nor a range.
    """
    cpus: set[int] = set()
    for token in re.split(r"[,\s]+", text.strip()):
        if not token:
            continue
        lo, sep, hi = token.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ParseError(f"bad CPU list {text.strip()!r}")
        cpus.update(range(int(lo), int(hi if sep else lo) + 1))
    return tuple(sorted(cpus))


def parse_cpufreq_policies(text: str) -> list[CpuPolicy]:
    """Parse `NAME|RELATED_CPUS|MAX_FREQ_KHZ|GOVERNOR` lines (one per cpufreq policy).

    Lines with an unreadable CPU list or frequency are skipped (a policy the shell could not read).
    """
    policies = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[2].strip().isdigit():
            continue
        try:
            cpus = parse_cpu_list(parts[1])
        except ParseError:
            continue
        if cpus:
            name = parts[0].strip().rsplit("/", 1)[-1]
            policies.append(CpuPolicy(name, cpus, int(parts[2]), parts[3].strip()))
    return policies


def parse_thermal_zones(text: str) -> dict[str, float]:
    """Parse `TYPE|TEMP` lines (one per thermal zone) into degrees Celsius.

    Kernels report millidegrees (`41000`) or, on some devices, degrees (`41`); values above 1000
    are taken as millidegrees. Unreadable and negative temperatures (absent sensors) are skipped.
    When two zones share a type, the hotter one is kept.
    """
    temps: dict[str, float] = {}
    for line in text.splitlines():
        name, sep, raw = line.strip().rpartition("|")
        try:
            value = float(raw)
        except ValueError:
            continue
        if not sep or not name or value < 0:
            continue
        celsius = value / 1000.0 if abs(value) >= 1000 else value
        temps[name] = max(celsius, temps.get(name, celsius))
    return temps


_HAL_TEMPERATURE = re.compile(rf"Temperature\{{mValue=({_NUMBER}), mType=-?\d+, mName=([^,}}]+)")


def parse_thermalservice(text: str) -> dict[str, float]:
    """Parse `dumpsys thermalservice` (Android 10+): sensor name -> degrees Celsius.

    Reads the `Temperature{mValue=..., mType=..., mName=..., mStatus=...}` entries; when a sensor
    appears in several sections (cached and current), the hotter value is kept.
    """
    temps: dict[str, float] = {}
    for m in _HAL_TEMPERATURE.finditer(text):
        name, value = m.group(2).strip(), float(m.group(1))
        temps[name] = max(value, temps.get(name, value))
    return temps
