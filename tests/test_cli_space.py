"""The `space` commands and the CLI's error conventions, through click's runner."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli import cli

ARCH = "-".join(
    ["mb6_k3_se0_id_f100_l1", "mb6_k3_se25_id_f100_l2", "mb3_k5_se0_pool_f75_l3", "dw_k3_se0_id_f125_l4",
     "mb6_k5_se25_none_f100_l3", "conv_k3_se0_id_f100_l3", "mb6_k3_se0_id_f100_l1"]
)


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version_and_help_on_every_command():
    assert "akd-mobile, version" in run("--version").output
    for cmd in (cli, *cli.commands.values()):
        names = [] if cmd is cli else [cmd.name]
        assert run(*names, "--help").exit_code == 0
        for sub in getattr(cmd, "commands", {}).values():
            result = run(*names, sub.name, "--help")
            assert result.exit_code == 0 and "Usage" in result.output, (names, sub.name)


def test_sample_json_is_reproducible_and_decodable():
    first = json.loads(run("space", "sample", "--n", "3", "--seed", "4", "--json").output)
    again = json.loads(run("space", "sample", "--n", "3", "--seed", "4", "--json").output)
    assert first == again and len(first) == 3
    for row in first:
        assert run("space", "validate", row["arch"]).output.strip() == f"ok {row['key']}"
        assert row["params"] > 0 and row["macs"] > 0


def test_sample_text_lists_keys_and_costs():
    lines = run("space", "sample", "--n", "2", "--space", "mnasnet-imagenet").output.strip().splitlines()
    assert len(lines) == 2 and all("params" in line and "MMACs" in line for line in lines)


def test_describe_reports_totals_and_per_block_shapes():
    data = json.loads(run("space", "describe", ARCH, "--json").output)
    assert data["arch"] == ARCH and len(data["blocks"]) == 7
    assert data["blocks"][0]["in_shape"] == [8, 14, 14]
    assert data["blocks"][-1]["out_shape"] == [80, 4, 4]
    parts = data["stem"]["params"] + data["head"]["params"] + sum(b["params"] for b in data["blocks"])
    assert parts == data["params"]
    text = run("space", "describe", ARCH).output
    assert f"{data['params']:,} params" in text and "stem" in text and "head" in text


def test_describe_other_input_shape():
    data = json.loads(run("space", "describe", ARCH, "--input", "3x32x32", "--json").output)
    assert data["blocks"][0]["in_shape"] == [8, 16, 16] and data["input_shape"] == [3, 32, 32]


def test_size_json():
    data = json.loads(run("space", "size", "--json").output)
    assert data["size"] > 10**17 and data["decisions"] == 42


@pytest.mark.parametrize(
    "args, message",
    [
        (["space", "validate", ARCH.replace("k5", "k7", 1)], "block 3 token 2 'k7'"),
        (["space", "validate", "nonsense"], "needs 7 blocks"),
        (["space", "describe", ARCH, "--space", "resnet"], "unknown search space 'resnet'"),
        (["space", "describe", ARCH, "--input", "1x28"], "CxHxW"),
        (["space", "sample", "--n", "0"], "--n"),
        (["space", "sample", "--seed", "x"], "--seed"),
        (["space", "size", "--classes", "1"], "at least 2 classes"),
        (["nonsense"], "No such command"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output


def test_console_script_exits_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "space", "validate", "bad"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_readme_commands_are_what_ci_runs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ci = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (root / "README.md").read_text()
