"""Proxy fidelity studies: sampling over cost bins, the plan of trainings, bad options, and
a tiny study on digits killed with SIGKILL and resumed with nothing trained twice."""

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

import cli
from akd_base.errors import StudyError
from akd_mobile.space import get_space
from akd_mobile.study import StudyConfig, plan_jobs, select_students, study_config
from teacher_support import linear_digits_teacher

SPACE = get_space("mnasnet-small")
VENV_CLI = Path(sys.executable).with_name("akd-mobile")


def test_students_are_distinct_balanced_over_bins_and_interleaved():
    students = select_students(SPACE, 10, 4, seed=0)
    assert len({s.arch for s in students}) == 10
    assert [s.cost_bin for s in students] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    by_bin = {b: [s.macs for s in students if s.cost_bin == b] for b in range(4)}
    assert all(max(by_bin[b]) <= min(by_bin[b + 1]) for b in range(3))  # bins are cost quantiles
    assert [s.arch for s in select_students(SPACE, 10, 4, seed=0)] == [s.arch for s in students]
    assert [s.arch for s in select_students(SPACE, 10, 4, seed=1)] != [s.arch for s in students]


def test_the_plan_trains_every_combination_once_student_by_student():
    config = StudyConfig(teachers=("a", "b"), students=6, bins=2, budgets=(40, 80), seeds=2, epochs=3,
                         convergence_students=1, variants=("alpha=0.5",))
    jobs = plan_jobs(config, ["ha", "hb"])
    assert len(jobs) == len(set(jobs))
    per_student = 2 * 2 * 2 + 2 + 3  # proxies (budgets x seeds x modes), the variant's seeds, full kd/ce/kd-b
    assert len(jobs) == 6 * per_student + 2 + 1  # ceiling: ceil(6 / 3) students; convergence: 1
    assert [j.student for j in jobs] == sorted(j.student for j in jobs)
    first = [j for j in jobs if j.student == 0]
    assert all(j.kind == "proxy" for j in first[:10]) and all(j.kind == "full" for j in first[10:])
    assert {(j.teacher, j.seed, j.budget) for j in first if j.kind == "full" and j.mode == "kd"} == {
        ("ha", 0, 3), ("hb", 0, 3), ("ha", 1, 3), ("ha", 0, 6)}
    assert all(j.teacher == "" for j in jobs if j.mode == "ce")
    assert {j.budget for j in jobs if j.setting == "alpha=0.5"} == {80}


@pytest.mark.parametrize("fields, message", [
    (dict(students=1), "at least 2 per cost bin"),
    (dict(budgets="80,40"), "strictly increasing"),
    (dict(budgets="40,forty"), "step counts"),
    (dict(seeds=0), "--seeds"),
    (dict(variants=("momentum=0.5",)), "NAME=VALUE"),
    (dict(variants=("alpha=2",)), "alpha"),
    (dict(proxy_lr=-1.0), "lr"),
])
def test_bad_options_are_study_errors(fields, message):
    values = dict(teachers=("default",), budgets="40,80") | fields
    with pytest.raises(StudyError, match=message):
        study_config(**values)


@pytest.mark.parametrize("args, message", [
    (["--students", "1"], "--students must be at least 2 per cost bin"),
    (["--budgets", "80,40"], "--budgets must be strictly increasing"),
    (["--teacher", "no-such-teacher.pt2"], "no such file"),
    (["--teacher", "default", "--teacher", "default"], "teachers are repeated"),
    (["--teacher", "default"], "teacher default (trained on fashion-mnist) scores"),
    (["--space", "mnasnet-imagenet"], "does not fit space"),
])
def test_the_cli_refuses_bad_options_in_one_line_with_exit_2_and_stores_nothing(tmp_path, args, message):
    db = tmp_path / "db.sqlite"
    result = CliRunner().invoke(cli.cli, ["proxy", "study", "--data", "digits", "--db", str(db), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    if db.exists():
        assert sqlite3.connect(db).execute("SELECT count(*) FROM studies").fetchone()[0] == 0


def test_show_of_an_unknown_study_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli.cli, ["proxy", "show", "7", "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code == 2 and result.output.startswith("error: no proxy study 7")


# ---------------------------------------------------------------- a tiny study on digits


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, student, kind, mode, teacher, budget, seed, finished_at "
                            "FROM study_trainings ORDER BY id").fetchall()


def _stored_so_far(db: Path) -> int:
    """How many trainings a running study has stored: 0 while its process still creates the
    database and its tables (or holds it locked for that)."""
    try:
        return len(_rows(db)) if db.exists() else 0
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_a_study_killed_with_sigkill_resumes_with_nothing_trained_twice(tmp_path):
    for seed in (0, 1):
        linear_digits_teacher(tmp_path / f"t{seed}.pt", seed)
    db = tmp_path / "study.sqlite"
    args = [str(VENV_CLI), "proxy", "study", "--data", "digits", "--teacher", str(tmp_path / "t0.pt"),
            "--teacher", str(tmp_path / "t1.pt"), "--students", "4", "--bins", "2", "--budgets", "4,8",
            "--seeds", "2", "--epochs", "1", "--convergence-students", "1", "--proxy-batch-size", "32",
            "--batch-size", "64", "--threads", "1", "--db", str(db), "--json"]
    env = {**os.environ, "AKD_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if _stored_so_far(db) >= 12:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.stderr.read().decode()
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = _rows(db)
    assert 12 <= len(before) < 4 * 11 + 2 + 1

    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    after = _rows(db)
    assert after[: len(before)] == before  # nothing retrained or rewritten
    assert len(after) == 4 * (2 * 2 * 2 + 3) + 2 + 1  # the whole plan, each training once
    assert len({r[1:7] for r in after}) == len(after)
    report = json.loads(second.stdout)
    assert report["study"]["complete_students"] == 4
    assert {p["predictor"] for p in report["predictors"]} >= {"MACs", "KD proxy 8", "CE proxy 4 x2 seeds", "full CE"}
    assert "teachers" in report["teacher_dependence"] and report["convergence"]

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)  # a third run trains nothing
    assert again.returncode == 0 and _rows(db) == after
    csv_file = tmp_path / "rows.csv"
    exported = subprocess.run([str(VENV_CLI), "proxy", "export", str(report["study"]["id"]), "--csv", str(csv_file),
                               "--db", str(db)], env=env, capture_output=True, text=True)
    assert exported.returncode == 0 and len(csv_file.read_text().splitlines()) == len(after) + 1
