"""Finalize: a run's best candidates and the user's own architectures fully trained, exported
and measured; resumable after a kill; the manifest; bad inputs as one-line errors."""

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

import akd_mobile.engines as engines_module
import akd_mobile.search as search_module
from akd_mobile.finals import FinalStore
from akd_mobile.runs import CandidateOutcome, RunStore
from akd_mobile.search import SearchConfig, run_search
from akd_mobile.space import get_space
from cli import cli
from latency_db import open_db
from search_support import ClosedFormEvaluator, engine_of

SPACE = get_space("mnasnet-small")
# the cheapest students of the space train an epoch of digits in a second or two
CHEAP = "dw_k3_se0_none_f75_l1-dw_k3_se0_none_f75_l1-dw_k3_se0_none_f75_l2-dw_k3_se0_none_f75_l3-dw_k3_se0_none_f75_l2-dw_k3_se0_none_f75_l2-dw_k3_se0_none_f75_l1"


class CheapFirst(ClosedFormEvaluator):
    """Scores by cost: the cheapest student wins."""

    def outcome(self, arch):
        cost = self.space.cost(arch)
        return CandidateOutcome("done", accuracy=0.5, latency_ms=cost.macs / 5e7, reward=1e6 / cost.macs,
                                params=cost.params, macs=cost.macs)


def _ce_run(db: Path, monkeypatch, budget: int = 4) -> int:
    """A finished CE search on digits with closed-form scores."""
    with monkeypatch.context() as m:
        m.setattr(engines_module, "open_engine", engine_of(CheapFirst))
        summary = run_search(SearchConfig(data="digits", reward="ce", budget=budget, batch=2, target_ms=1.0, seed=2), db)
    return summary.run_id


def _finalize(db: Path, out: Path, *args: str):
    return CliRunner().invoke(cli, ["finalize", "1", "--db", str(db), "--out", str(out), *args])


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--top", "0"], "nothing to finalize"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--arch", "mb9_k3"], "mb9"),
    (["--torch-device", "tpu"], "tpu"),
    (["--mode", "kd"], "teacher default (trained on fashion-mnist) scores"),  # a ce run's finals from its teacher
    (["--mode", "kd", "--teacher", "/nonexistent/t.pt2"], "/nonexistent/t.pt2"),
])
def test_bad_options_are_one_line_errors(tmp_path, monkeypatch, args, message):
    db = tmp_path / "db.sqlite"
    _ce_run(db, monkeypatch)
    result = _finalize(db, tmp_path / "finals", *args)
    assert result.exit_code == 2 and message in _one_line(result), result.output
    assert FinalStore(open_db(db)).finals(1) == []


def test_unknown_run_empty_run_and_foreign_output_folder(tmp_path, monkeypatch):
    db = tmp_path / "db.sqlite"
    result = _finalize(db, tmp_path / "finals")
    assert result.exit_code == 2 and "no search run 1" in _one_line(result)

    _ce_run(db, monkeypatch)
    with open_db(db).transaction() as conn:  # a run stopped before any candidate finished
        conn.execute("UPDATE candidates SET status = 'failed', error = 'ExportError: x'")
    result = _finalize(db, tmp_path / "finals")
    assert result.exit_code == 2 and "run 1 has no finished candidate" in _one_line(result)

    (tmp_path / "file").write_text("")
    result = _finalize(db, tmp_path / "file", "--arch", CHEAP)
    assert result.exit_code == 2 and "is a file" in _one_line(result)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "manifest.json").write_text(json.dumps({"run_id": 7}))
    result = _finalize(db, tmp_path / "taken", "--arch", CHEAP)
    assert result.exit_code == 2 and "holds finals of run 7" in _one_line(result)


def test_the_top_candidates_come_under_the_target_first_then_by_reward(tmp_path, monkeypatch):
    from akd_mobile.finals import FinalizeConfig, pick_finals

    db = tmp_path / "db.sqlite"
    _ce_run(db, monkeypatch, budget=6)
    store = RunStore(open_db(db))
    run, rows = store.get_run(1), store.candidates(1)
    with open_db(db).transaction() as conn:  # the best reward is over the target
        conn.execute("UPDATE candidates SET latency_ms = 9.0, reward = 99 WHERE id = ?", (rows[0].id,))
    rows = store.candidates(1)
    picks = pick_finals(run, rows, SPACE, FinalizeConfig(out=tmp_path, top=3, archs=(CHEAP,)))
    under = sorted((r for r in rows if r.latency_ms <= 1.0), key=lambda r: -r.reward)
    assert [p.arch.key for p in picks[:3]] == [r.arch_key for r in under[:3]]
    assert picks[-1].source == "user" and picks[-1].arch.canonical == CHEAP and picks[-1].proxy_accuracy is None


def _trained(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT id, arch_key, created_at, weights_sha256 FROM finals ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_finalize_trains_exports_measures_and_resumes_after_a_kill(tmp_path, monkeypatch):
    db, out = tmp_path / "db.sqlite", tmp_path / "finals"
    _ce_run(db, monkeypatch)
    args = [sys.executable, "-m", "cli", "finalize", "1", "--db", str(db), "--out", str(out), "--top", "1",
            "--arch", CHEAP, "--epochs", "1", "--threads", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _trained(db) and time.monotonic() < deadline:
            assert proc.poll() is None, "finalize ended before it could be killed"
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = _trained(db)
    assert len(first) >= 1

    result = CliRunner().invoke(cli, ["finalize", "1", "--db", str(db), "--out", str(out), "--top", "1",
                                      "--arch", CHEAP, "--epochs", "1", "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    finals = json.loads(result.stdout)
    assert [f["source"] for f in finals] == ["top", "user"] and all(f["status"] == "done" for f in finals)
    assert _trained(db)[0] == first[0], "the final trained before the kill was trained again"
    stored = {f.arch_key: f for f in FinalStore(open_db(db)).finals(1)}
    for f in finals:  # one epoch of digits is a dozen steps: the accuracy itself says little here
        assert 0.0 <= f["test_accuracy"] <= 1.0 and f["epochs"] == 1 and f["mode"] == "ce"
        assert stored[f["arch_key"]].test_accuracy == f["test_accuracy"]
        for fmt in ("tflite", "pte"):
            r = f["result"][fmt]
            assert (out / r["file"]).stat().st_size == r["size_bytes"] > 0
            assert r["max_abs_diff"] < 1e-3 and r["median_ms"] > 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "akd-mobile-finals" and manifest["run_id"] == 1
    assert manifest["device"]["fingerprint"] and manifest["data"]["spec"] == "digits"
    assert manifest["versions"]["torch"].startswith("2.") and manifest["teacher"] is None  # a ce run
    assert [m["key"] for m in manifest["finals"]] == [f["arch_key"] for f in finals]
    from akd_base.files import file_sha256

    assert all(file_sha256(out / m["weights"]) == m["weights_sha256"] for m in manifest["finals"])

    shown = CliRunner().invoke(cli, ["runs", "show", "1", "--db", str(db)]).stdout
    assert "finals (fully trained):" in shown and finals[1]["arch_key"] in shown

    # into another folder: the weights are copied, not trained again; the manifest lists this call's finals
    other = tmp_path / "other"
    result = CliRunner().invoke(cli, ["finalize", "1", "--db", str(db), "--out", str(other), "--top", "1",
                                      "--epochs", "1", "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert _trained(db)[0] == first[0]
    again = json.loads((other / "manifest.json").read_text())["finals"]
    assert [m["key"] for m in again] == [finals[0]["arch_key"]]
    assert file_sha256(other / again[0]["weights"]) == again[0]["weights_sha256"] == manifest["finals"][0]["weights_sha256"]
    assert all((other / r["file"]).is_file() for r in again[0]["formats"].values())

    # another training length is another final: its own files, the first one's left as they were
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = CliRunner().invoke(cli, ["finalize", "1", "--db", str(db), "--out", str(out), "--top", "1",
                                      "--epochs", "2", "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    (two,) = json.loads(result.stdout)
    assert two["epochs"] == 2 and (out / f"{two['arch_key']}-ce-e2.pt").is_file()
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in before.items() if name != "manifest.json")
    assert len(FinalStore(open_db(db)).finals(1)) == 3
