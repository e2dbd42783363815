"""A real search process stopped by SIGTERM, Ctrl-C or SIGKILL: it stops within seconds,
leaves no process behind (the export worker included) and a run that resumes with no
candidate lost or evaluated twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from akd_mobile.runs import RunStore
from cli import cli
from latency_db import open_db
from process_support import alive, children

BUDGET = 4


def _start(db: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "cli", "search", "--data", "digits", "--reward", "ce", "--budget", str(BUDGET),
            "--batch", "2", "--proxy-steps", "20", "--target-ms", "0.25", "--strategy", "evolution", "--db", str(db)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finished(db: Path) -> dict[int, float]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return dict(conn.execute("SELECT id, finished_at FROM candidates WHERE status != 'pending'").fetchall())
    except sqlite3.OperationalError:
        return {}


def _wait_for_worker(proc: subprocess.Popen, db: Path, candidates: int) -> tuple[list[int], dict[int, float]]:
    """Wait until `candidates` are finished and the export worker runs; return its pids and the finished rows."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.3)
        assert proc.poll() is None, f"the search ended early: {proc.stderr.read()}"
        done, workers = _finished(db), children(proc.pid)
        if len(done) >= candidates and workers:
            return workers, done
    raise AssertionError("the search never reached the state to stop it in")


def _resume_and_check(db: Path, done_before: dict[int, float]) -> None:
    result = CliRunner().invoke(cli, ["search", "--resume", "1", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "done"
    rows = RunStore(open_db(db)).candidates(1)
    assert [(r.step, r.slot) for r in rows] == [(s, 0) for s in range(1, BUDGET + 1)]  # evolution: steady state
    assert all(r.status != "pending" for r in rows)
    after = {r.id: r.finished_at for r in rows}
    assert all(after[i] == t for i, t in done_before.items()), "a finished candidate was evaluated again"


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_signal_stops_the_search_at_once_storing_a_resumable_run(tmp_path, signum, to_group):
    db = tmp_path / "akd.sqlite"
    proc = _start(db)
    try:
        workers, done_before = _wait_for_worker(proc, db, 1)
        sent = time.monotonic()
        (os.killpg if to_group else os.kill)(proc.pid, signum)  # Ctrl-C reaches the whole group
        _, stderr = proc.communicate(timeout=60)
        stopped_s = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum, stderr
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT (Ctrl-C)"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: run 1 stopped by {name}") and f"akd-mobile search --resume 1 --db {db}" in last
    assert stopped_s < 10, f"took {stopped_s:.1f} s to stop"
    time.sleep(0.5)
    assert not any(alive(w) for w in workers), "the export worker outlived the search"
    run = RunStore(open_db(db)).get_run(1)
    assert run.status == "interrupted" and run.reason == f"stopped by {name}" and run.owner is None
    _resume_and_check(db, {**done_before, **_finished(db)})


@pytest.mark.slow
def test_sigkill_takes_the_export_worker_with_it_and_the_run_resumes(tmp_path):
    db = tmp_path / "akd.sqlite"
    proc = _start(db)
    try:
        workers, _ = _wait_for_worker(proc, db, 2)
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone: nothing gets to clean up
        proc.wait()
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), "the export worker outlived its killed parent"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    done_before = _finished(db)
    assert len(done_before) >= 2
    listed = json.loads(CliRunner().invoke(cli, ["runs", "list", "--db", str(db), "--json"]).stdout)
    assert listed[0]["status"] == "stale"  # its owner is dead: resumable at once
    _resume_and_check(db, done_before)


def test_sighup_and_sigterm_raise_like_ctrl_c_only_inside_the_block():
    from akd_mobile.signals import SignalStop, signal_name, signals_as_interrupts

    for signum in (signal.SIGHUP, signal.SIGTERM):
        before = signal.getsignal(signum)
        with pytest.raises(SignalStop) as stopped, signals_as_interrupts():
            os.kill(os.getpid(), signum)
            time.sleep(1)  # the handler runs before this returns
        assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.signum == signum
        assert signal_name(stopped.value) == signal.Signals(signum).name
        assert signal.getsignal(signum) == before
