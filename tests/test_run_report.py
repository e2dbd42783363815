"""The HTML report of runs (akd_mobile/run_report.py): its files and tables, several runs
on one page, the live report of a search, one-line errors, and the page as headless
Chromium renders it. Runs come from the search loop with a closed-form evaluator
(tests/report_support.py): no training."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from akd_base.errors import ReportError
from akd_mobile.run_report import FIGURES, LiveReport, load_runs, pareto_front, write_report
from akd_mobile.runs import RunStore
from akd_mobile.search import SearchConfig, run_search
from browser_support import check_page, find_browser
from cli import cli
from latency_db import open_db
from report_support import add_finals, fake_search

TARGET_MS = 0.2


def _config(reward: str = "kd", strategy: str = "random", budget: int = 12, seed: int = 0) -> SearchConfig:
    return SearchConfig(reward=reward, strategy=strategy, budget=budget, batch=4, target_ms=TARGET_MS, seed=seed)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """An AKD run with finals (two measured, one trained only), a CE run with one final, and
    a run with failed candidates (the RL controller's updates take seconds: one short run)."""
    db_path = tmp_path_factory.mktemp("runs") / "db.sqlite"
    with fake_search():
        run_search(_config("kd", "rl", budget=8), db_path)
        run_search(_config("ce", "random", budget=14), db_path)
    with fake_search(fail_every=5):
        run_search(_config("kd", "evolution", budget=12), db_path)
    db = open_db(db_path)
    finals = {1: add_finals(db, 1, count=2, unmeasured=1), 2: add_finals(db, 2, count=1, unmeasured=0)}
    return db_path, finals


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(1.0, 0.8), (2.0, 0.7), (2.0, 0.9), (0.5, 0.6), (3.0, 0.9), (1.0, 0.8)]
    assert pareto_front(points) == [3, 0, 2]
    assert pareto_front([]) == []


def test_report_of_three_runs(three_runs, tmp_path):
    db_path, finals = three_runs
    db = open_db(db_path, read_only=True)
    files = write_report(db, [1, 2, 3], tmp_path / "report")
    assert files.run_ids == [1, 2, 3] and not files.running
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        ["index.html"] + [f"{name}.{fmt}" for name in FIGURES for fmt in ("png", "svg")])
    from PIL import Image

    for name in FIGURES:
        with Image.open(files.figures[name]["png"]) as im:
            assert im.width > 1000 and im.height > 300
        assert "<svg" in files.figures[name]["svg"].read_text()[:2000]
    page = files.html.read_text()
    # self-contained: every src and href is a file beside the page or an anchor on it
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs and all(not re.match(r"[a-z]+:", ref) and "/" not in ref for ref in refs), refs
    assert 'http-equiv="refresh"' not in page  # nothing is running
    for label in ("run 1: kd · rl · seed 0", "run 2: ce · random · seed 0", "run 3: kd · evolution · seed 0"):
        assert label in page
    views = load_runs(db, [1, 2, 3])
    for view in views:  # each run's top 10 candidates with arch string and key, and no more
        top = page.split(f'id="run-{view.run.id}"')[1].split("<h3>Finals")[0]
        assert all(c.arch_key in top and c.arch in top for c in view.ranked()[:10])
        assert not any(c.arch_key in top for c in view.ranked()[10:])
    assert len(views[1].ranked()) > 10
    for key in finals[1] + finals[2]:
        assert key in page
    assert "trained (not exported and measured yet)" in page
    assert "failed candidate" in page and "the converter cannot handle this op" in page
    assert "akd-mobile finalize 1 --out DIR" in page


def test_one_run_and_its_live_report(tmp_path):
    """`LiveReport` as the search's progress callback: a page at the first report, one after
    each finished candidate, reloading itself while the run is running and not after."""
    db_path = tmp_path / "db.sqlite"
    seen = []

    class Watched(LiveReport):
        def write(self):
            super().write()
            page = (self.out / "index.html").read_text()
            seen.append(('http-equiv="refresh"' in page, "still searching" in page,
                         sum(c.status == "done" for c in RunStore(open_db(db_path)).candidates(1))))

    live = Watched(tmp_path / "live", db_path, min_interval_s=0.0)
    with fake_search():
        run_search(_config(budget=4), db_path, on_progress=live)
    assert [n for _, _, n in seen] == [0, 1, 2, 3, 4]  # at the first phase, then after each candidate
    assert all(refresh and note for refresh, note, _ in seen)
    live.close()
    assert seen[-1] == (False, False, 4)  # the run is done: the page stops reloading


def test_live_report_writes_at_most_once_per_interval(tmp_path, monkeypatch):
    from akd_mobile import run_report

    now = [0.0]
    monkeypatch.setattr(run_report.time, "monotonic", lambda: now[0])
    writes = []
    monkeypatch.setattr(LiveReport, "write", lambda self: (writes.append(now[0]), setattr(self, "_last", now[0]),
                                                          setattr(self, "_due", False)))
    live = LiveReport(tmp_path / "r", tmp_path / "db.sqlite", min_interval_s=5.0)

    class P:
        run_id, last = 1, None

    done = type("Done", (), {"run_id": 1, "last": object()})
    for t, progress in ((0, P), (1, done), (2, P), (6, P), (7, done), (8, done), (13, P)):
        now[0] = t
        live(progress)
    live.close()
    assert writes == [0, 6, 13, 13]  # first; the candidate of t=1 at t=6; those of 7 and 8 at 13; the end


def test_search_report_option_and_report_command(tmp_path):
    db_path, out = tmp_path / "db.sqlite", tmp_path / "watch"
    runner = CliRunner()
    with fake_search():
        result = runner.invoke(cli, ["search", "--strategy", "random", "--budget", "5", "--batch", "2",
                                     "--target-ms", "0.2", "--db",
                                     str(db_path), "--report", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {(out / 'index.html').resolve()}" in result.output
    page = (out / "index.html").read_text()
    assert "run 1: kd · random · seed 0" in page and 'http-equiv="refresh"' not in page
    result = runner.invoke(cli, ["report", "1", "--out", str(tmp_path / "again"), "--db", str(db_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["run_ids"] == [1] and data["url"].startswith("file://") and set(data["figures"]) == set(FIGURES)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_requests_are_one_line_errors(three_runs, tmp_path):
    db_path, _ = three_runs
    runner = CliRunner()

    def report(*args):
        return runner.invoke(cli, ["report", *args, "--db", str(db_path)])

    assert "give one or more RUN_IDs" in _one_line_error(report("--out", str(tmp_path / "r")))
    assert re.search(r"no search run 9 in .*db\.sqlite; `akd-mobile runs list --db ",
                     _one_line_error(report("9", "--out", str(tmp_path / "r"))))
    assert "no search runs 7, 9 in" in _one_line_error(report("1", "7", "9", "--out", str(tmp_path / "r")))
    (tmp_path / "file").write_text("x")
    assert "--out" in _one_line_error(report("1", "--out", str(tmp_path / "file")))
    assert not (tmp_path / "r").exists()  # nothing written for a bad request
    with fake_search():
        result = runner.invoke(cli, ["search", "--db", str(tmp_path / "db.sqlite"), "--report",
                                     str(tmp_path / "file")])
    assert "--report" in _one_line_error(result)
    with pytest.raises(ReportError, match="give one or more"):
        write_report(open_db(db_path), [], tmp_path / "r")


def test_a_run_with_no_finished_candidate_is_shown_with_its_reason(tmp_path):
    """... by `search --report` as the search stops, and by `report` afterwards."""
    db_path, runner = tmp_path / "db.sqlite", CliRunner()
    with fake_search(fail_every=1):
        result = runner.invoke(cli, ["search", "--strategy", "random", "--budget", "8", "--target-ms", "0.2",
                                     "--db", str(db_path), "--report", str(tmp_path / "live"), "--json"])
    assert "run 1 stopped: 5 candidates in a row failed" in _one_line_error(result)
    result = runner.invoke(cli, ["report", "1", "--out", str(tmp_path / "r"), "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    for folder in ("live", "r"):
        page = (tmp_path / folder / "index.html").read_text()
        assert "has no finished candidate yet (it is failed: 5 candidates in a row failed" in page
        assert "akd-mobile search --resume 1" in page and 'http-equiv="refresh"' not in page


@pytest.mark.skipif(find_browser() is None, reason="no Chromium on PATH: setup.sh installs Debian's chromium")
def test_the_page_renders_in_a_browser(three_runs, tmp_path):
    """Headless Chromium loads the page from disk: every figure loads, nothing is logged as an
    error, and the screenshot shows the figures in colour."""
    from PIL import Image, ImageStat

    db_path, _ = three_runs
    files = write_report(open_db(db_path, read_only=True), [1, 2, 3], tmp_path / "report")
    seen = check_page(files.html, tmp_path / "page.png", width_px=1280)
    assert seen.errors == []
    assert seen.title == "akd-mobile report: runs 1, 2, 3"
    assert [i["src"].split("?")[0] for i in seen.images] == [f"{name}.svg" for name in FIGURES]
    assert all(i["complete"] and i["naturalWidth"] > 0 and i["width"] > 600 for i in seen.images), seen.images
    with Image.open(seen.screenshot) as shot:
        shot = shot.convert("RGB")
        assert shot.width == 1280 and shot.height == seen.height_px > 3000
        assert ImageStat.Stat(shot.convert("L")).stddev[0] > 20  # not a blank page
        for image in seen.images:  # each figure on screen: drawn, with the runs' colours in it
            box = [round(image[k]) for k in ("x", "y")]
            crop = shot.crop((box[0], box[1], box[0] + round(image["width"]), box[1] + round(image["height"])))
            colours = crop.getcolors(1 << 20)
            saturated = sum(n for n, (r, g, b) in colours if max(r, g, b) - min(r, g, b) > 80)
            assert len(colours) > 50 and saturated > 500, image["src"]


@pytest.mark.skipif(find_browser() is None, reason="no Chromium on PATH: setup.sh installs Debian's chromium")
def test_the_browser_check_sees_a_broken_page(tmp_path):
    """The check itself: a missing figure and a script error are caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><head><title>t</title></head><body><img src="gone.svg">'
                    "<script>console.error('drawn wrong'); undefinedFunction();</script></body></html>")
    seen = check_page(page, tmp_path / "broken.png")
    assert not seen.images[0]["complete"] or seen.images[0]["naturalWidth"] == 0
    assert any("ERR_FILE_NOT_FOUND" in e and "gone.svg" in e for e in seen.errors), seen.errors
    assert any("drawn wrong" in e for e in seen.errors) and any("undefinedFunction" in e for e in seen.errors)
