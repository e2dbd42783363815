"""The search loop end to end on digits with the local device, and bad options (signals and
kill -9: test_search_signals.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from akd_mobile.distill import ProxyBudget
from akd_mobile.runs import RunStore
from akd_mobile.search import SearchConfig, run_search
from cli import cli
from latency_db import open_db

TINY = dict(data="digits", budget=4, batch=2, proxy=ProxyBudget(steps=20), target_ms=0.25, runs=5, warmup=1)


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> str:
    """A ResNet teacher trained on digits (98% test accuracy in about 25 s)."""
    from akd_mobile.data import load_dataset
    from akd_mobile.teachers import save_teacher, train_teacher

    data = load_dataset("digits", seed=0)
    model, result = train_teacher("resnet", data, epochs=8, seed=0)
    assert result.test_accuracy > 0.9
    path = tmp_path_factory.mktemp("teacher") / "digits-resnet.pt"
    save_teacher(model, result, data, path)
    return str(path)


def _rows(db_path: Path, run_id: int):
    return RunStore(open_db(db_path)).candidates(run_id)


@pytest.mark.slow
def test_tiny_search_on_digits_with_the_local_device(tmp_path, digits_teacher):
    db = tmp_path / "akd.sqlite"
    summary = run_search(SearchConfig(**TINY, teacher=digits_teacher, strategy="rl", seed=1), db)
    assert summary.status == "done" and summary.evaluated + summary.failed == 4
    assert summary.evaluated >= 3, summary
    rows = _rows(db, summary.run_id)
    assert [(r.step, r.slot) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    done = [r for r in rows if r.status == "done"]
    for r in done:
        assert 0.0 <= r.accuracy <= 1.0 and 0 < r.latency_ms < 50 and r.reward > 0
        assert r.train_s > 0 and not r.latency_cached
    assert max(r.accuracy for r in done) > 0.3  # chance is 0.1
    # the latency of every candidate is now in the database: a second run measures nothing
    again = run_search(SearchConfig(**TINY, teacher=digits_teacher, strategy="rl", seed=1), db)
    assert all(r.latency_cached for r in _rows(db, again.run_id) if r.status == "done")
    assert again.time_split_s["export_s"] < 0.05 and again.time_split_s["measure_s"] == 0


@pytest.mark.slow
def test_tiny_search_through_the_loopback_phone(tmp_path, digits_teacher):
    from devices_support import set_up_phone

    with set_up_phone(tmp_path) as profile:
        db = tmp_path / "akd.sqlite"
        config = SearchConfig(**{**TINY, "budget": 2}, teacher=digits_teacher, device=str(profile))
        summary = run_search(config, db)
    assert summary.evaluated == 2, summary
    measured = open_db(db).read("SELECT d.backend, m.runs FROM measurements m JOIN devices d ON d.fingerprint = m.device_fingerprint")
    assert [tuple(r) for r in measured] == [("adb", 5), ("adb", 5)]
    assert not any((tmp_path / "device").rglob("*.tflite")), "the pushed model was not removed"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "toaster"], "unknown device 'toaster'"),
        (["--target-ms", "-3"], "--target-ms must be positive"),
        (["--strategy", "bayes"], "--strategy must be one of"),
        (["--reward", "mse"], "--reward must be one of"),
        (["--budget", "0"], "--budget must be at least 1"),
        (["--format", "onnx"], "--format must be one of"),
        (["--teacher", "/nonexistent/teacher.pt2", "--data", "digits"], "teacher"),
        (["--data", "/nonexistent/data"], "/nonexistent/data"),
        (["--resume", "99"], "no search run 99"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["search", "--db", str(tmp_path / "db.sqlite"), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
