"""The `devices` commands and `bench --device` through the loopback daemon."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from akd_mobile.device_check import check_model
from devices_support import daemon, free_port, make_key, profile_toml


def run(*args: str):
    return CliRunner().invoke(cli.cli, list(args))


def one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert text in result.output


@pytest.fixture()
def profile(tmp_path: Path):
    key = make_key(tmp_path / "keys")
    with daemon(tmp_path / "root", key) as d:
        yield profile_toml(tmp_path / "loop.toml", d.port, key), d


def test_list_shows_every_profile_and_who_answers() -> None:
    result = run("devices", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {"local", "pixel", "emulator", "loopback"} <= set(rows)
    assert rows["local"]["answers"] is True
    assert rows["pixel"]["backend"] == "adb"
    assert all(r["answers"] or r["reason"] for r in rows.values())
    text = run("devices", "list")
    assert text.exit_code == 0 and "pixel" in text.output


def test_info_setup_check_and_bench_over_loopback(profile, tmp_path: Path) -> None:
    path, served = profile
    info = run("devices", "info", str(path), "--json")
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["model"] == "akd-loopback"
    setup = run("devices", "setup", str(path), "--json")
    assert setup.exit_code == 0, setup.output
    assert json.loads(setup.stdout)[0]["pushed"] is True
    check = run("devices", "check", str(path), "--json")
    assert check.exit_code == 0, check.output
    r = json.loads(check.stdout)
    assert r["latency"]["count"] == r["runs"] == 5
    assert "ok, tiny .tflite model" in run("devices", "check", str(path)).output

    db = tmp_path / "lat.sqlite"
    model = check_model("tflite")
    bench = run("bench", str(model), "--device", str(path), "--runs", "4", "--warmup", "1", "--db", str(db), "--json")
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.stdout)["count"] == 4
    text = run("bench", str(model), "--device", str(path), "--runs", "4", "--warmup", "1", "--db", str(db))
    assert text.exit_code == 0 and "median" in text.output

    from latency_db import open_db

    with open_db(db) as store:
        rows = store.query()
        assert len(rows) == 2
        assert json.loads(rows[0].thermal)["attempts"] == 1


def test_device_errors_are_one_line(tmp_path: Path) -> None:
    one_line_error(run("devices", "info", "no-such-phone"), "unknown device")
    one_line_error(run("devices", "setup", "local"), "no tools to set up")
    key = make_key(tmp_path)
    one_line_error(run("devices", "info", str(profile_toml(tmp_path / "p.toml", free_port(), key))), "nothing listens")
    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "adb"\naddress = "127.0.0.1:1"\nthreads = 0\n')
    one_line_error(run("devices", "info", str(bad)), "bad.toml: threads must be an integer >= 1, got 0")


@pytest.mark.parametrize("by", ["path", "name"])
def test_check_before_setup_suggests_the_setup_command_that_works(tmp_path: Path, monkeypatch, by: str) -> None:
    import shlex

    from devices import profiles

    monkeypatch.setattr(profiles, "PROFILE_DIR", tmp_path / "profiles")
    folder = tmp_path / ("profiles" if by == "name" else "my profiles")
    folder.mkdir()
    key = make_key(tmp_path / "keys")
    with daemon(tmp_path / "root", key) as d:
        path = profile_toml(folder / "phone.toml", d.port, key)
        arg = "phone" if by == "name" else str(path)
        one_line_error(run("devices", "check", arg), f"run `akd-mobile devices setup {shlex.quote(arg)}`")
        assert run("devices", "setup", arg).exit_code == 0
        assert run("devices", "check", arg).exit_code == 0


def test_keygen(tmp_path: Path) -> None:
    target = tmp_path / "akd" / "adbkey"
    result = run("devices", "keygen", "--path", str(target), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["public_key"] == f"{target}.pub"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    one_line_error(run("devices", "keygen", "--path", str(target)), "--force")
    assert run("devices", "keygen", "--path", str(target), "--force").exit_code == 0
