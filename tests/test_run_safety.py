"""Runs a user can trust (issue 13), through the CLI where a user meets each case: inputs
checked before a run row exists, resume from another folder and after the teacher changed,
a device that goes away mid-search, leases, a failed run's reason, deleting runs, and the
progress line at 80 columns. Signals with real processes are in test_search_signals.py."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import time

import pytest
from click.testing import CliRunner

import akd_mobile.engines as engines_module
import akd_mobile.search as search_module
from akd_base.errors import DeviceUnavailable, ExportError
from akd_mobile.runs import CandidateOutcome, RunStore
from akd_mobile.space import get_space
from cli import cli
from latency_db import open_db
from search_support import ClosedFormEvaluator, engine_of, evaluate_one, in_process_engine
from teacher_support import linear_digits_teacher

SPACE = get_space("mnasnet-small")


class ScriptedEvaluator(ClosedFormEvaluator):
    """Answers from the arch's cost; `script[i]` (an exception) is raised at the i-th evaluation."""

    calls: list[str] = []
    script: dict[int, BaseException] = {}

    def outcome(self, arch):
        calls = type(self).calls
        error = type(self).script.pop(len(calls), None)
        if error is not None:
            raise error
        calls.append(arch.key)
        cost = SPACE.cost(arch)
        return CandidateOutcome("done", accuracy=0.5, latency_ms=cost.macs / 5e6, reward=0.5, params=cost.params)


@pytest.fixture
def scripted(monkeypatch):
    ScriptedEvaluator.calls = []
    ScriptedEvaluator.script = {}
    monkeypatch.setattr(engines_module, "open_engine", engine_of(ScriptedEvaluator))
    return ScriptedEvaluator


def _search(db, *args):
    return CliRunner().invoke(cli, ["search", "--db", str(db), "--budget", "4", "--batch", "2", "--target-ms", "1",
                                    "--data", "digits", *args])


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _last_line(result) -> str:
    """The line after a search's progress output."""
    return result.stderr.strip().splitlines()[-1]


def _runs(db):
    """The stored runs ([] when the search stopped before creating the database)."""
    if not db.exists():
        return []
    return json.loads(CliRunner().invoke(cli, ["runs", "list", "--db", str(db), "--json"]).stdout)


# ---------------------------------------------------------------- inputs checked before a run exists


def test_a_teacher_near_chance_is_refused_before_any_run_or_export(tmp_path, monkeypatch):
    monkeypatch.setenv("AKD_CACHE_DIR", str(tmp_path / "cache"))
    db = tmp_path / "db.sqlite"
    result = _search(db)  # the built-in teacher knows Fashion-MNIST, not digits
    assert result.exit_code == 2, result.output
    line = _one_line(result)
    assert "near chance" in line and "teacher default (trained on fashion-mnist) scores 0." in line
    assert "--reward ce" in line
    assert _runs(db) == []
    assert not (tmp_path / "cache" / "exports").exists()


@pytest.mark.parametrize("args, message", [
    (["--proxy-steps", "0"], "steps >= 1"),
    (["--proxy-batch-size", "0"], "batch size must be at least 1"),
    (["--proxy-lr", "-0.1"], "lr positive"),
    (["--device", "toaster"], "unknown device 'toaster'"),
])
def test_bad_proxy_and_device_settings_leave_no_run_behind(tmp_path, args, message):
    db = tmp_path / "db.sqlite"
    result = _search(db, "--reward", "ce", *args)
    assert result.exit_code == 2 and message in _one_line(result), result.output
    assert _runs(db) == []


def test_a_proxy_batch_larger_than_the_training_split_takes_the_whole_split():
    from akd_mobile.data import load_dataset
    from akd_mobile.distill import ProxyBudget, proxy_score

    data = load_dataset("digits", seed=0)
    arch = SPACE.sample(__import__("random").Random(0))
    result = proxy_score(arch, data, None, ProxyBudget(steps=2, batch_size=10_000, bn_images=100), mode="ce", threads=1)
    assert result.steps == 2 and result.train_images == 2 * len(data.train_y)


# ---------------------------------------------------------------- what a run remembers of its inputs


def test_resume_works_from_another_folder_and_stops_if_the_teacher_changed(tmp_path, monkeypatch, scripted):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    linear_digits_teacher(work / "teacher.pt2", seed=0)
    db = tmp_path / "db.sqlite"
    monkeypatch.chdir(work)
    scripted.script = {1: KeyboardInterrupt()}
    result = _search(db, "--teacher", "teacher.pt2")
    assert result.exit_code == 130 and "--resume 1" in _last_line(result), result.output
    run = RunStore(open_db(db)).get_run(1)
    assert run.config["teacher"] == str(work / "teacher.pt2") and len(run.inputs["teacher"]["hash"]) >= 16
    assert run.inputs["data"]["spec"] == "digits" and run.reason == "stopped by SIGINT (Ctrl-C)"

    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(cli, ["search", "--resume", "1", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "done"

    monkeypatch.chdir(work)
    scripted.script = {len(scripted.calls) + 1: KeyboardInterrupt()}
    assert _search(db, "--teacher", "teacher.pt2").exit_code == 130
    linear_digits_teacher(work / "teacher.pt2", seed=1)  # retrained in place: other weights
    result = CliRunner().invoke(cli, ["search", "--resume", "2", "--db", str(db)])
    assert result.exit_code == 2, result.output
    assert f"the teacher {work / 'teacher.pt2'} changed since run 2 started" in _one_line(result)
    assert RunStore(open_db(db)).get_run(2).status == "interrupted"  # untouched by the refused resume


# ---------------------------------------------------------------- a device or host that fails mid-search


@pytest.mark.parametrize("failure", [
    DeviceUnavailable("nothing listens at 127.0.0.1:5555 for loopback"),
    OSError(28, "No space left on device"),
])
def test_a_device_or_host_failure_stops_the_run_resumably_with_the_candidate_pending(tmp_path, scripted, failure):
    db = tmp_path / "db.sqlite"
    scripted.script = {2: failure}
    result = _search(db, "--reward", "ce")
    assert result.exit_code == 2, result.output
    line = _last_line(result)
    assert line.startswith("error: run 1 stopped: ") and f"--resume 1 --db {db}" in line
    store = RunStore(open_db(db))
    assert [r.status for r in store.candidates(1)] == ["done", "done", "pending", "pending"]
    assert store.get_run(1).status == "failed" and str(failure.args[-1]) in store.get_run(1).reason
    shown = CliRunner().invoke(cli, ["runs", "show", "1", "--db", str(db)])
    assert "stopped because: " in shown.stdout and str(failure.args[-1]) in shown.stdout

    result = CliRunner().invoke(cli, ["search", "--resume", "1", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert [r.status for r in store.candidates(1)] == ["done"] * 4 and len(scripted.calls) == 4
    assert store.get_run(1).reason is None


def test_the_evaluator_records_a_candidates_own_failure_and_raises_the_devices(monkeypatch):
    from akd_mobile.latency import LatencyService
    from devices.local import LocalDevice

    config = search_module.SearchConfig(reward="ce", target_ms=1.0, threads=1, warmup=0, runs=1, min_time_s=0.0)
    engine = in_process_engine(config, search_module.SearchInputs(None, SPACE, None, {}), None, LocalDevice())
    arch = SPACE.sample(__import__("random").Random(1))
    monkeypatch.setattr(LatencyService, "latency", _raise(ExportError("tflite conversion failed: op aten.foo")))
    outcome = evaluate_one(engine, arch)
    assert outcome.status == "failed" and "aten.foo" in outcome.error
    monkeypatch.setattr(LatencyService, "latency", _raise(DeviceUnavailable("phone unplugged")))
    with pytest.raises(DeviceUnavailable):
        evaluate_one(engine, arch)
    wrapped = ExportError("conversion failed")
    wrapped.__cause__ = OSError(28, "No space left on device")
    monkeypatch.setattr(LatencyService, "latency", _raise(wrapped))
    with pytest.raises(ExportError):
        evaluate_one(engine, arch)


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


# ---------------------------------------------------------------- ownership: one search per run


def test_resume_of_a_live_run_is_refused_and_a_dead_owner_shows_stale(tmp_path, scripted):
    db = tmp_path / "db.sqlite"
    scripted.script = {1: KeyboardInterrupt()}
    assert _search(db, "--reward", "ce").exit_code == 130
    holder = subprocess.Popen(["sleep", "60"])
    try:
        owner = f"{socket.gethostname()}:{holder.pid}"
        with open_db(db).transaction() as conn:  # another live search holds run 1
            conn.execute("UPDATE runs SET status = 'running', owner = ?, lease_until = ? WHERE id = 1",
                         (owner, time.time() + 30))
        assert _runs(db)[0]["status"] == "running"
        result = CliRunner().invoke(cli, ["search", "--resume", "1", "--db", str(db)])
        assert result.exit_code == 2 and f"run 1 is being run by {owner}" in _one_line(result)
        result = CliRunner().invoke(cli, ["runs", "delete", "1", "--db", str(db)])
        assert result.exit_code == 2 and "stop that search" in _one_line(result)
    finally:
        holder.kill()
        holder.wait()
    listing = CliRunner().invoke(cli, ["runs", "list", "--db", str(db)]).stdout
    assert _runs(db)[0]["status"] == "stale" and "stale: its search died" in listing
    with open_db(db).transaction() as conn:  # a lease from another host counts until it lapses
        conn.execute("UPDATE runs SET owner = 'farm-7:4242', lease_until = ? WHERE id = 1", (time.time() - 1,))
    assert _runs(db)[0]["status"] == "stale"
    result = CliRunner().invoke(cli, ["search", "--resume", "1", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    run = RunStore(open_db(db)).get_run(1)
    assert run.status == "done" and run.owner is None  # released at the end


def test_runs_delete_removes_a_run_its_candidates_and_finals(tmp_path, scripted):
    from akd_mobile.finals import FinalStore

    db = tmp_path / "db.sqlite"
    assert _search(db, "--reward", "ce").exit_code == 0
    assert _search(db, "--reward", "ce").exit_code == 0
    c = RunStore(open_db(db)).candidates(1)[0]
    FinalStore(open_db(db)).trained(1, c.arch, c.arch_key, "top", "ce", 1, c.accuracy, 0.9, 0.9, 1.0, "0" * 64, tmp_path)
    result = CliRunner().invoke(cli, ["runs", "delete", "1", "--db", str(db)])
    assert result.exit_code == 0 and "deleted run 1, its 4 candidates and 1 finals" in result.stdout
    assert open_db(db).read("SELECT COUNT(*) FROM finals")[0][0] == 0
    assert [r["run_id"] for r in _runs(db)] == [2]
    assert open_db(db).read("SELECT COUNT(*) FROM candidates WHERE run_id = 1")[0][0] == 0
    result = CliRunner().invoke(cli, ["runs", "delete", "1", "--db", str(db)])
    assert result.exit_code == 2 and "no search run 1" in _one_line(result)


# ---------------------------------------------------------------- what a user sees


def test_a_resume_holds_the_run_before_its_checks_and_a_lost_lease_stops_the_search(tmp_path, scripted, monkeypatch):
    import akd_mobile.runs as runs_module

    db = tmp_path / "db.sqlite"
    scripted.script = {1: KeyboardInterrupt()}
    assert _search(db, "--reward", "ce").exit_code == 130
    owners = []
    real_inputs = search_module.load_inputs
    monkeypatch.setattr(search_module, "load_inputs",
                        lambda config: owners.append(RunStore(open_db(db)).get_run(1).owner) or real_inputs(config))
    monkeypatch.setattr(runs_module, "RENEW_EVERY_S", 0.05)

    def hijack(self, arch, on_phase=lambda phase: None, standing=None):  # another search takes the run over meanwhile
        with open_db(db).transaction() as conn:
            conn.execute("UPDATE runs SET owner = 'farm-7:4242', lease_until = ? WHERE id = 1", (time.time() + 60,))
        time.sleep(0.5)
        return CandidateOutcome("done", accuracy=0.5, latency_ms=0.5, reward=0.5, params=1)

    monkeypatch.setattr(ScriptedEvaluator, "evaluate", hijack)
    result = CliRunner().invoke(cli, ["search", "--resume", "1", "--db", str(db)])
    assert owners == [runs_module.this_owner()]  # the lease was taken before the inputs were checked
    assert result.exit_code == 2 and "run 1 was taken over by farm-7:4242" in _last_line(result)
    run = RunStore(open_db(db)).get_run(1)
    assert run.owner == "farm-7:4242" and run.status == "running" and run.reason is None  # left to its new owner
    assert [r.status for r in RunStore(open_db(db)).candidates(1)][1] == "pending"


def test_runs_list_keeps_columns_apart_and_names_data_teacher_and_date(tmp_path, scripted):
    db = tmp_path / "db.sqlite"
    scripted.script = {0: KeyboardInterrupt()}
    assert _search(db, "--reward", "ce", "--strategy", "random").exit_code == 130
    lines = CliRunner().invoke(cli, ["runs", "list", "--db", str(db)]).stdout.splitlines()
    header, row = lines[0].split(), lines[1].split()
    assert header == ["run", "status", "started", "strategy", "data", "teacher", "device", "target", "done", "best"]
    assert row[1] == "interrupted" and row[4:6] == ["random", "ce"] and row[6] == "digits"
    assert time.strftime("%Y-%m-%d") == row[2]


def test_the_progress_line_fits_80_columns_and_names_the_phase():
    from rich.console import Console

    from akd_mobile.report import search_progress
    from akd_mobile.search import Progress

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    with search_progress(16, console=console) as update:
        update(Progress(run_id=123, step=3, done=9, budget=16, best=None, last=None, phase="measuring",
                        current="0123456789abcdef"))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # cursor and colour codes
    last = [line for line in text.replace("\r", "\n").splitlines() if "run 123" in line][-1]
    assert "run 123 9/16 measuring 01234567" in last
    assert "0:00:0" in last and "ETA" in last and "…" not in last and len(last.rstrip()) <= 80


def test_resume_command_names_the_database_unless_it_is_the_default(tmp_path):
    from latency_db.store import default_db_path

    assert search_module.resume_command(3, default_db_path()) == "akd-mobile search --resume 3"
    assert search_module.resume_command(3, tmp_path / "x.sqlite") == f"akd-mobile search --resume 3 --db {tmp_path / 'x.sqlite'}"


def test_cli_exit_codes_follow_the_signal(monkeypatch):
    from akd_base.errors import Interrupted

    def stop(*args, **kwargs):
        raise Interrupted("run 1 stopped by SIGTERM; continue with: akd-mobile search --resume 1", 15)

    monkeypatch.setattr(search_module, "run_search", stop)
    result = CliRunner().invoke(cli, ["search"])
    assert result.exit_code == 143 and _one_line(result).startswith("interrupted: run 1 stopped by SIGTERM")

