"""The converters' and runtimes' log chatter stays off the terminal unless --verbose."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from akd_mobile.space import get_space

REPO = Path(__file__).resolve().parent.parent
SMALL = get_space("mnasnet-small").sample(random.Random(3))

# Writes as a C++ library and as Python code do, inside quiet_converters; then a result.
CHATTER = """
import logging, os, sys
from akd_mobile.export import quiet_converters
if sys.argv[1:] == ["verbose"]:
    logging.getLogger("akd_mobile").setLevel(logging.DEBUG)
with quiet_converters():
    os.write(1, b"c++ stdout\\n")
    os.write(2, b"c++ stderr\\n")
    print("python stdout")
    print("python stderr", file=sys.stderr)
    logging.getLogger("some.converter").warning("python log")
print("result")
"""


def _run(*argv: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "AKD_CACHE_DIR": str(cache)} if cache is not None else None
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
                          check=False)


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-c", "from cli import main; main()", *args, cache=cache)


def test_quiet_converters_hides_fd_and_python_output_unless_verbose():
    quiet = _run(sys.executable, "-c", CHATTER)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "result\n", "")
    verbose = _run(sys.executable, "-c", CHATTER, "verbose")
    assert verbose.returncode == 0 and verbose.stdout == "result\n", verbose.stderr
    for line in ("c++ stdout", "c++ stderr", "python stdout", "python stderr", "python log"):
        assert line in verbose.stderr


def test_devices_check_prints_its_result_only(tmp_path):
    r = _cli("devices", "check", "local", cache=tmp_path / "cache")  # a fresh cache: exports the check model
    assert r.returncode == 0 and r.stdout.startswith("local: ok, tiny .tflite model median "), r.stderr
    assert r.stderr == "" and r.stdout.count("\n") == 1


@pytest.mark.slow
def test_export_and_bench_print_their_result_only_unless_verbose(tmp_path):
    out = tmp_path / "m.tflite"
    export = _cli("export", SMALL.canonical, "--format", "tflite", "--out", str(out), cache=tmp_path / "a")
    assert export.returncode == 0 and export.stdout.startswith(str(out)), export.stderr
    assert export.stderr == "" and export.stdout.count("\n") == 1
    bench = _cli("bench", SMALL.canonical, "--format", "pte", "--runs", "3", "--warmup", "0", "--min-time", "0",
                 "--db", str(tmp_path / "l.sqlite"), "--verbose", cache=tmp_path / "b")
    assert bench.returncode == 0 and bench.stdout.startswith(f"{SMALL.key}  pte  local"), bench.stderr
    assert bench.stdout.count("\n") == 1
    assert "INFO akd_mobile.export: exported" in bench.stderr and len(bench.stderr.splitlines()) > 2
