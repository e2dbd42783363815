"""Benchmark tool output and device state parsers, on recorded output and its variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from akd_base.errors import ParseError
from devices.parsers import (
    parse_benchmark_model,
    parse_cpu_list,
    parse_cpufreq_policies,
    parse_executor_runner,
    parse_getprop,
    parse_thermal_zones,
    parse_thermalservice,
    parse_tool_output,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def _logcat(text: str, tag: str) -> str:
    """The same lines as Android's logcat `threadtime` format prints them."""
    return "\n".join(
        f"11-25 10:00:{i % 60:02d}.123  1234  1234 I {tag:<8}: {line.removeprefix('INFO: ')}"
        for i, line in enumerate(text.splitlines())
    )


def test_litert_fixture_reads_the_timed_run() -> None:
    r = parse_benchmark_model(_fixture("benchmark_model_litert.txt"))
    assert r.count == 50
    assert r.mean_ms == pytest.approx(1240.27)
    assert r.median_ms == pytest.approx(1239.807)
    assert r.std_ms == pytest.approx(2.565)
    assert r.min_ms == pytest.approx(1238.588)
    assert r.max_ms == pytest.approx(1252.566)
    assert r.samples_ms == ()
    assert r.p90_ms is None


@pytest.mark.parametrize(
    "transform",
    [
        lambda t: t,
        lambda t: t.replace("INFO: ", ""),
        lambda t: _logcat(t, "tflite"),
        lambda t: t.replace("\n", "\r\n"),
        lambda t: "I/tflite  ( 1234): " + t.replace("\n", "\nI/tflite  ( 1234): "),
    ],
    ids=["info-prefix", "bare", "logcat-threadtime", "crlf", "logcat-brief"],
)
def test_litert_prefix_variants_parse_the_same(transform) -> None:
    base = parse_benchmark_model(_fixture("benchmark_model_litert.txt"))
    assert parse_benchmark_model(transform(_fixture("benchmark_model_litert.txt"))) == base


def test_litert_exponent_numbers_and_real_count() -> None:
    text = "INFO: count=137 first=1.2e+04 curr=1.1e4 min=9.5e+03 max=1.3E+04 avg=1.05e+04 std=3.2e2 p5=9.6e3 median=1.04e+04 p95=1.2e4\n"
    r = parse_benchmark_model(text)
    assert r.count == 137
    assert r.mean_ms == pytest.approx(10.5)
    assert r.median_ms == pytest.approx(10.4)
    assert r.std_ms == pytest.approx(0.32)
    assert r.min_ms == pytest.approx(9.5)
    assert r.max_ms == pytest.approx(13.0)


def test_tflite_26_without_median_uses_the_last_run_and_its_count() -> None:
    r = parse_benchmark_model(_fixture("benchmark_model_tflite26.txt"))
    assert r.count == 63  # the real count, not Num runs: [50]
    assert r.mean_ms == pytest.approx(15.9024)
    assert r.median_ms == r.mean_ms  # the tool printed no median
    assert r.std_ms == pytest.approx(0.263)
    assert r.min_ms == pytest.approx(15.601)


def test_old_average_line() -> None:
    r = parse_benchmark_model(_fixture("benchmark_model_old_average.txt"))
    assert r.count == 50
    assert r.mean_ms == pytest.approx(119.4185)
    assert r.median_ms == r.min_ms == r.max_ms == r.mean_ms
    assert r.std_ms == 0.0


def test_inference_avg_line_alone() -> None:
    r = parse_benchmark_model("INFO: Inference timings in us: Init: 5579, First inference: 13, Warmup (avg): 12, Inference (avg): 2.5e+03\n")
    assert r.mean_ms == pytest.approx(2.5)
    assert r.count == 1


@pytest.mark.parametrize(
    "text, quoted",
    [
        ("ERROR: Could not open '/data/local/tmp/akd/m.tflite'.\nAborted (core dumped)\n", "Could not open"),
        (_fixture("benchmark_model_litert.txt").split("INFO: Running benchmark for at least 50")[0], "count=1 curr=1357602"),
        ("INFO: Loaded model m.tflite\nINFO: count=abc\n", "count=abc"),
    ],
    ids=["tool-error", "crashed-before-timed-run", "garbage-count"],
)
def test_litert_without_timing_quotes_the_last_lines(text: str, quoted: str) -> None:
    with pytest.raises(ParseError, match="no timing in benchmark_model output") as exc:
        parse_benchmark_model(text)
    assert quoted in str(exc.value)


def test_empty_output_says_the_tool_printed_nothing() -> None:
    with pytest.raises(ParseError, match="printed nothing"):
        parse_benchmark_model("\n\n")


def test_executor_runner_fixture() -> None:
    r = parse_executor_runner(_fixture("executor_runner.txt"))
    assert r.count == 1
    assert r.samples_ms == (pytest.approx(241.944288),)
    assert r.median_ms == pytest.approx(241.944288)


def _runner_output(samples: list[float], logcat: bool = False) -> str:
    n = len(samples)
    lines = ["I 00:00:05.833558 executorch:executor_runner.cpp:564] Model loaded in 12.5 ms."]
    lines += [f"I 00:00:06.0{i:05d} executorch:executor_runner.cpp:705] Iteration {i + 1} of {n}: {s} ms" for i, s in enumerate(samples)]
    lines.append(f"I 00:00:07.000000 executorch:executor_runner.cpp:714] Model executed successfully {n} time(s) in {sum(samples)} ms.")
    text = "\n".join(lines)
    if logcat:
        text = "\n".join(
            f"11-25 10:00:00.123  4321  4321 I ExecuTorch: [{ln.split('executorch:')[1]}" for ln in lines
        )
    return text


@pytest.mark.parametrize("logcat", [False, True], ids=["stdout", "logcat"])
def test_executor_runner_iterations_are_samples_and_warmup_is_dropped(logcat: bool) -> None:
    samples = [30.0, 10.0, 11.0, 12.5, 1.0e1]
    r = parse_executor_runner(_runner_output(samples, logcat), skip_first=1)
    assert r.samples_ms == (10.0, 11.0, 12.5, 10.0)
    assert r.count == 4
    assert r.median_ms == pytest.approx(10.5)
    assert r.p90_ms is not None


def test_executor_runner_without_iteration_lines_uses_the_total() -> None:
    r = parse_executor_runner("I 00:00:07 executorch:executor_runner.cpp:714] Model executed successfully 4 time(s) in 40.0 ms.\n")
    assert r.count == 4
    assert r.mean_ms == pytest.approx(10.0)
    assert r.samples_ms == ()


def test_executor_runner_all_warmup_is_an_error() -> None:
    with pytest.raises(ParseError, match="all of them warm-up"):
        parse_executor_runner(_runner_output([5.0, 6.0]), skip_first=2)


def test_executor_runner_failure_quotes_the_tool() -> None:
    text = "I 00:00:00.1 executorch:executor_runner.cpp:100] Loading model\nE 00:00:00.2 executorch:executor_runner.cpp:120] Program::load failed: 0x23\n"
    with pytest.raises(ParseError, match="Program::load failed"):
        parse_executor_runner(text)


def test_parse_tool_output_dispatches_and_rejects_unknown_tools() -> None:
    assert parse_tool_output("benchmark_model", _fixture("benchmark_model_litert.txt")).count == 50
    assert parse_tool_output("executor_runner", _fixture("executor_runner.txt")).count == 1
    with pytest.raises(ParseError, match="unknown benchmark tool kind"):
        parse_tool_output("perfetto", "")


def test_getprop_listing() -> None:
    text = "[ro.product.model]: [Pixel 8]\n[ro.soc.model]: [Tensor G3]\n[ro.empty]: []\nnot a prop line\n"
    assert parse_getprop(text) == {"ro.product.model": "Pixel 8", "ro.soc.model": "Tensor G3", "ro.empty": ""}


def test_cpu_lists() -> None:
    assert parse_cpu_list("0-3,6 7\n") == (0, 1, 2, 3, 6, 7)
    assert parse_cpu_list("4 5 6") == (4, 5, 6)
    with pytest.raises(ParseError):
        parse_cpu_list("0-x")


def test_cpufreq_policies_skip_unreadable_ones() -> None:
    text = (
        "/sys/devices/system/cpu/cpufreq/policy0|0 1 2 3|1803000|schedutil\n"
        "/sys/devices/system/cpu/cpufreq/policy4|4 5 6|2850000|schedutil\n"
        "/sys/devices/system/cpu/cpufreq/policy7|7|3050000|performance\n"
        "/sys/devices/system/cpu/cpufreq/policy9||\n"
    )
    policies = parse_cpufreq_policies(text)
    assert [p.name for p in policies] == ["policy0", "policy4", "policy7"]
    assert policies[1].mask == 0b1110000
    assert policies[2].governor == "performance"


def test_thermal_zones_in_milli_and_whole_degrees() -> None:
    text = "cpu-big|45500\ncpu-big|47000\nbattery|31\nabsent|-274000\nbroken|\nskin|N/A\n"
    assert parse_thermal_zones(text) == {"cpu-big": 47.0, "battery": 31.0}


def test_thermalservice_dump() -> None:
    text = (
        "IsStatusOverride: false\nThermalEventListeners:\n\tcallbacks: 1\n"
        "Cached temperatures:\n"
        "\tTemperature{mValue=38.5, mType=2, mName=battery, mStatus=0}\n"
        "Current temperatures from HAL:\n"
        "\tTemperature{mValue=41.2, mType=0, mName=cpu-big, mStatus=0}\n"
        "\tTemperature{mValue=37.0, mType=2, mName=battery, mStatus=0}\n"
        "\tTemperature{mValue=3.1e1, mType=3, mName=skin, mStatus=0}\n"
    )
    assert parse_thermalservice(text) == {"battery": 38.5, "cpu-big": 41.2, "skin": 31.0}
    assert parse_thermalservice("Can't find service: thermalservice") == {}
