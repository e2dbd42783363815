"""The report of search runs to look at: one HTML page with figures and tables.

`write_report` reads runs from the latency database's SQLite file and writes `index.html`
into a folder, with each figure beside it as PNG and SVG (drawn with matplotlib's Agg and
SVG renderers, text as paths): the page references nothing outside its folder, so it opens
from disk with no network. The figures:

- accuracy against measured latency for every evaluated candidate (proxy accuracy), the
  latency target as a line, each run's Pareto front, and the run's finals with their full
  training's test accuracy at their measured latency;
- reward per candidate in the order evaluated, the mean of each controller step and the
  best so far: is the controller learning?
- where the time went: proxy training, export, measurement, controller (and the finals'
  full training).

Tables list each run's settings and status (with why it stopped), its top candidates and
its finals with architecture strings and keys. Several runs overlay on the same axes, one
colour per run, labelled by reward (kd/ce), strategy and seed: an AKD run beside its CE
(NAS) and random baselines. A run with no finished candidate is shown with its status and
reason. `LiveReport` rewrites the page as a search goes; while a run is `running` the page
reloads itself every `REFRESH_S` seconds.
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from akd_base.errors import ReportError
from akd_base.formats import FORMATS
from akd_base.files import atomic_write
from latency_db.store import db_flag

if TYPE_CHECKING:
    from latency_db.store import LatencyDB

log = logging.getLogger(__name__)

HTML_NAME = "index.html"
FIGURES = {  # file stem: title on the page
    "accuracy_latency": "Accuracy against measured latency",
    "reward": "Reward per candidate: is the controller learning?",
    "time": "Where the time went",
}
FIGURE_FORMATS = ("png", "svg")
LIVE_INTERVAL_S = 5.0  # `search --report` rewrites the page at most this often
REFRESH_S = 10
TOP = 10
# matplotlib's tab10, one colour per run in the order given
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
TIME_PARTS = (  # (summary key, legend, colour)
    ("train_s", "proxy training", "#4c72b0"),
    ("export_s", "export (waited for)", "#dd8452"),
    ("measure_s", "latency measurement", "#55a868"),
    ("controller_s", "controller", "#8172b3"),
    ("finals_s", "finals (full training)", "#937860"),
)


@dataclass(frozen=True)
class RunView:
    """One run as the report shows it.

    Attributes:
        run: the stored run (`runs.RunRow`).
        candidates: its candidates in the order proposed (`runs.CandidateRow`).
        finals: its finals (`finals.FinalRow`).
        summary: `search.summarize`'s result (best, best under the target, time split).
        colour: the run's colour in every figure.
        commands: what to run next (label, command line).
    """

    run: Any
    candidates: list[Any]
    finals: list[Any]
    summary: Any
    colour: str
    commands: list[tuple[str, str]]

    @property
    def config(self) -> dict[str, Any]:
        return self.run.config

    @property
    def label(self) -> str:
        """`run 3: kd · rl · seed 0`: what tells runs apart in a comparison."""
        cfg = self.config
        reward, strategy, seed = (cfg.get(k, "?") for k in ("reward", "strategy", "seed"))
        return f"run {self.run.id}: {reward} · {strategy} · seed {seed}"

    @property
    def target_ms(self) -> float | None:
        return self.config.get("target_ms")

    @property
    def evaluated(self) -> list[Any]:
        """Finished candidates, each architecture once (a reused repeat left out)."""
        return [c for c in self.candidates if c.status == "done" and not c.reused]

    def ranked(self) -> list[Any]:
        """Evaluated candidates as finalize picks them: under the target first, then by reward."""
        from akd_mobile.runs import best_first

        return best_first(self.evaluated, self.target_ms)

    def front_keys(self) -> set[str]:
        rows = self.evaluated
        return {rows[i].arch_key for i in pareto_front([(c.latency_ms, c.accuracy) for c in rows])}

    def final_point(self, final: Any) -> tuple[float | None, float | None, bool]:
        """A final's (latency ms, test accuracy, measured): its own latency in the run's format
        (else the other), else its architecture's latency from the search (`measured` False)."""
        latency_ms, _ = final_latency(final, self.config.get("fmt", "tflite"))
        if latency_ms is not None:
            return latency_ms, final.test_accuracy, True
        same = next((c for c in self.evaluated if c.arch_key == final.arch_key), None)
        return (same.latency_ms if same else None), final.test_accuracy, False


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote."""

    html: Path
    figures: dict[str, dict[str, Path]]
    run_ids: list[int]
    running: bool

    def to_dict(self) -> dict[str, Any]:
        return {"html": str(self.html), "url": self.html.resolve().as_uri(), "run_ids": self.run_ids,
                "running": self.running,
                "figures": {name: {fmt: str(p) for fmt, p in files.items()} for name, files in self.figures.items()}}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points that no other point beats (as fast or faster
    and at least as accurate, better in one), fastest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def final_latency(final: Any, fmt: str) -> tuple[float | None, str | None]:
    """A final's measured median latency and its format: `fmt`'s when measured, else another's."""
    for f in dict.fromkeys((fmt, *FORMATS)):
        ms = (final.result.get(f) or {}).get("median_ms")
        if ms is not None:
            return float(ms), f
    return None, None


def load_runs(db: LatencyDB, run_ids: Sequence[int]) -> list[RunView]:
    """The runs `run_ids` (each once, in the order given) with their candidates and finals.

    Raises:
        ReportError: no run ids, or ids the database does not hold (all named at once).
    """
    from akd_mobile.finals import FinalStore
    from akd_mobile.runs import RunStore
    from akd_mobile.search import summarize

    if not run_ids:
        raise ReportError("give one or more RUN_IDs to report on; `akd-mobile runs list` shows the runs")
    ids = list(dict.fromkeys(run_ids))
    store, finals = RunStore(db), FinalStore(db)
    known = {r.id for r in store.list_runs()}
    missing = [str(i) for i in ids if i not in known]
    if missing:
        which = "run " + missing[0] if len(missing) == 1 else "runs " + ", ".join(missing)
        raise ReportError(f"no search {which} in {db.path}; `akd-mobile runs list{db_flag(db.path)}` shows the runs")
    views = []
    for n, run_id in enumerate(ids):
        run, candidates = store.get_run(run_id), store.candidates(run_id)
        views.append(RunView(run, candidates, finals.finals(run_id), summarize(store, run_id),
                             PALETTE[n % len(PALETTE)], _next_commands(run, candidates, db.path)))
    return views


def _next_commands(run: Any, candidates: list[Any], db_path: Path) -> list[tuple[str, str]]:
    db = db_flag(db_path)
    status = run.shown_status
    out = [("details", f"akd-mobile runs show {run.id}{db}")]
    if status in ("interrupted", "failed", "stale"):
        out.append(("continue it", f"akd-mobile search --resume {run.id}{db}"))
    if status == "done" and any(c.status == "done" for c in candidates):
        out.append(("finalize", f"akd-mobile finalize {run.id} --out DIR{db}"))
    return out


# ---------------------------------------------------------------- writing


def prepare_folder(out: Path, option: str = "--out") -> Path:
    """Create the report folder (ReportError for a file in its place or a folder that cannot be made)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{option} {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {option} {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ReportError(f"cannot write to {option} {out}: choose another folder")
    return out


def write_report(db: LatencyDB, run_ids: Sequence[int], out: Path, top: int = TOP) -> ReportFiles:
    """Write the report of `run_ids` into folder `out`: `index.html` and each figure as PNG and
    SVG. Every file is written whole (a temporary file renamed), so a browser that reloads the
    page mid-write sees the old version or the new.

    Raises:
        ReportError: no run ids, unknown ones, or an output folder that cannot be written.
    """
    views = load_runs(db, run_ids)
    out = prepare_folder(out)
    figures = draw_figures(views, out)
    running = any(v.run.shown_status == "running" for v in views)
    stamp = str(int(time.time() * 1000))
    page = render_html(views, {name: files["svg"].name + f"?v={stamp}" for name, files in figures.items()},
                       top=top, refresh_s=REFRESH_S if running else None)
    path = out / HTML_NAME
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return ReportFiles(path, figures, [v.run.id for v in views], running)


# ---------------------------------------------------------------- figures


def draw_figures(views: list[RunView], out: Path) -> dict[str, dict[str, Path]]:
    """Draw the three figures into `out` as `<name>.png` and `<name>.svg`."""
    import matplotlib
    from matplotlib.figure import Figure

    drawers = {"accuracy_latency": _accuracy_latency, "reward": _reward, "time": _time}
    rc = {"svg.fonttype": "path", "svg.hashsalt": "akd-mobile", "font.size": 10, "axes.titlesize": 11,
          "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 9, "legend.frameon": False}
    files: dict[str, dict[str, Path]] = {}
    with matplotlib.rc_context(rc):
        for name in FIGURES:
            fig = Figure(figsize=(9, 5.4) if name != "time" else (9, 1.9 + 0.5 * len(views)), layout="constrained")
            drawers[name](fig, views)
            files[name] = {}
            for fmt in FIGURE_FORMATS:
                path = out / f"{name}.{fmt}"
                atomic_write(path, lambda tmp, fig=fig, fmt=fmt: fig.savefig(
                    tmp, format=fmt, dpi=150 if fmt == "png" else None,
                    metadata={"Date": None} if fmt == "svg" else {"Software": None}))
                files[name][fmt] = path
    return files


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(ax: Any, views: list[RunView], styles: list[Any]) -> None:
    from matplotlib.lines import Line2D

    runs = [Line2D([], [], color=v.colour, marker="o", lw=2, label=v.label) for v in views]
    ax.legend(handles=runs + styles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _accuracy_latency(fig: Any, views: list[RunView]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    ax = fig.subplots()
    if not any(v.evaluated for v in views):
        _empty(ax, "no finished candidate yet")
        return
    for v in views:
        rows = v.evaluated
        if not rows:
            continue
        known = [c for c in rows if c.latency_source != "predicted"]
        guessed = [c for c in rows if c.latency_source == "predicted"]
        ax.scatter([c.latency_ms for c in known], [c.accuracy for c in known], s=26, color=v.colour, alpha=0.45,
                   linewidths=0, zorder=2)
        ax.scatter([c.latency_ms for c in guessed], [c.accuracy for c in guessed], s=26, facecolors="none",
                   edgecolors=v.colour, alpha=0.6, linewidths=1.0, zorder=2)
        front = [rows[i] for i in pareto_front([(c.latency_ms, c.accuracy) for c in rows])]
        ax.plot([c.latency_ms for c in front], [c.accuracy for c in front], drawstyle="steps-post", color=v.colour,
                lw=1.6, zorder=3)
        ax.scatter([c.latency_ms for c in front], [c.accuracy for c in front], s=46, facecolors="white",
                   edgecolors=v.colour, linewidths=1.6, zorder=4)
        by_key = {c.arch_key: c for c in rows}
        for n, final in enumerate(v.finals, 1):
            latency_ms, accuracy, measured = v.final_point(final)
            if latency_ms is None or accuracy is None:
                continue
            proxy = by_key.get(final.arch_key)
            if proxy is not None:  # from the candidate's proxy score to its full training
                ax.plot([proxy.latency_ms, latency_ms], [proxy.accuracy, accuracy], ls=":", color=v.colour, lw=1.2,
                        zorder=3)
            ax.scatter([latency_ms], [accuracy], marker="*", s=260, zorder=6, linewidths=1.0,
                       facecolors=v.colour if measured else "white", edgecolors="black" if measured else v.colour)
            ax.annotate(f"F{n}", (latency_ms, accuracy), xytext=(7, 5), textcoords="offset points", fontsize=9,
                        color="0.15", zorder=7)
    targets = sorted({v.target_ms for v in views if v.target_ms})
    left, right = ax.get_xlim()
    if targets:  # every target in view, with room for the grey band beyond the last
        left, right = min(left, targets[0] * 0.95), max(right, targets[-1] * 1.08)
    for t in targets:
        colour = "0.25" if len(targets) == 1 else next(v.colour for v in views if v.target_ms == t)
        ax.axvline(t, color=colour, ls="--", lw=1.2, zorder=1)
        ax.annotate(f"target {t:g} ms", xy=(t, 0.0), xycoords=("data", "axes fraction"), xytext=(-4, 4),
                    textcoords="offset points", ha="right", va="bottom", fontsize=9, color=colour)
    if len(targets) == 1:
        ax.axvspan(targets[0], right, color="0.5", alpha=0.07, lw=0, zorder=0)
    ax.set_xlim(left, right)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    predicted = any(c.latency_source == "predicted" for v in views for c in v.evaluated)
    ax.set_xlabel(f"{'latency (hollow: predicted)' if predicted else 'measured latency'}, ms ({_measured_on(views)})")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.25)
    styles = [
        Line2D([], [], color="0.45", marker="o", lw=0, alpha=0.5, label="candidate: proxy accuracy (validation)"),
        Line2D([], [], color="0.45", marker="o", markerfacecolor="white", lw=1.6, drawstyle="steps-post",
               label="Pareto front: nothing faster is as accurate"),
    ]
    if predicted:
        styles.append(Line2D([], [], color="0.45", marker="o", markerfacecolor="none", lw=0,
                             label="candidate at its predicted latency (search --latency predict|hybrid)"))
    if any(v.finals for v in views):
        styles.append(Line2D([], [], color="0.45", marker="*", markersize=13, markeredgecolor="black", lw=0,
                             label="final F1, F2 ...: full training, test accuracy"))
    if targets:
        styles.append(Line2D([], [], color="0.25", ls="--", label="latency target (grey: over it)"))
    if any(not v.final_point(f)[2] for v in views for f in v.finals):
        styles.append(Line2D([], [], color="0.45", marker="*", markersize=13, markerfacecolor="white", lw=0,
                             label="final not measured (at its search latency)"))
    _legend(ax, views, styles)


def _measured_on(views: list[RunView]) -> str:
    where = {(Path(str(v.config.get("device", "?"))).name, v.config.get("fmt", "?")) for v in views}
    if len(where) == 1:
        device, fmt = next(iter(where))
        return f"median on device {device}, {fmt}"
    return "median on each run's device and format"


def _reward(fig: Any, views: list[RunView]) -> None:
    from matplotlib.lines import Line2D

    ax = fig.subplots()
    if not any(c.status != "pending" for v in views for c in v.candidates):
        _empty(ax, "no finished candidate yet")
        return
    any_failed = False
    for n, v in enumerate(views):
        rows = [c for c in v.candidates if c.status != "pending"]
        done = [(i, c) for i, c in enumerate(rows, 1) if c.status == "done"]
        failed = [i for i, c in enumerate(rows, 1) if c.status == "failed"]
        if done:
            xs, rewards = [i for i, _ in done], [c.reward for _, c in done]
            ax.scatter(xs, rewards, s=20, color=v.colour, alpha=0.4, linewidths=0, zorder=2)
            best = list(_running_max(rewards))
            ax.plot(xs + [len(rows)], best + best[-1:], drawstyle="steps-post", color=v.colour, lw=2.2, zorder=4)
            steps: dict[int, list[tuple[int, float]]] = {}
            for i, c in done:
                steps.setdefault(c.step, []).append((i, c.reward))
            mids = [(sum(i for i, _ in pts) / len(pts), sum(r for _, r in pts) / len(pts)) for pts in steps.values()
                    if len(pts) > 1]  # a steady-state run's steps are single candidates: no mean to draw
            ax.plot([m[0] for m in mids], [m[1] for m in mids], color=v.colour, ls="--", lw=1.2, marker="s",
                    markersize=4, zorder=3)
        if failed:
            any_failed = True
            ax.scatter(failed, [0.03 + 0.025 * n] * len(failed), transform=ax.get_xaxis_transform(), marker="x", s=30,
                       color=v.colour, zorder=5)
    ax.set_xlabel("candidate, in the order evaluated")
    ax.set_ylabel(r"reward  $ACC \cdot (LAT\,/\,T)^{w}$")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.25)
    styles = [
        Line2D([], [], color="0.45", marker="o", lw=0, alpha=0.5, label="candidate"),
        Line2D([], [], color="0.45", ls="--", marker="s", markersize=4, lw=1.2,
               label="mean of each controller step"),
        Line2D([], [], color="0.45", lw=2.2, label="best so far"),
    ]
    if any_failed:
        styles.append(Line2D([], [], color="0.45", marker="x", lw=0, label="failed (no reward)"))
    _legend(ax, views, styles)


def _running_max(values: list[float]) -> Iterator[float]:
    best = -math.inf
    for v in values:
        best = max(best, v)
        yield best


def _time(fig: Any, views: list[RunView]) -> None:
    from matplotlib.patches import Patch

    ax = fig.subplots()
    parts = [(v, {**v.summary.time_split_s, "finals_s": sum(f.train_s or 0 for f in v.finals)}) for v in views]
    used = [p for p in TIME_PARTS if any(split.get(p[0], 0) > 0 for _, split in parts)]
    totals = [sum(split.get(k, 0) for k, _, _ in used) for _, split in parts]
    if not used or max(totals) <= 0:
        _empty(ax, "no time spent yet")
        return
    minutes = max(totals) > 300
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    ys = list(range(len(views)))[::-1]
    for y, (v, split), total in zip(ys, parts, totals):
        left = 0.0
        for key, _, colour in used:
            width = split.get(key, 0) / scale
            ax.barh(y, width, left=left, color=colour, height=0.6)
            left += width
        ax.annotate(f"{total / scale:.1f} {unit}" if minutes else f"{total:.0f} s", (left, y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(ys, [v.label for v in views])
    for tick, v in zip(ax.get_yticklabels(), views):
        tick.set_color(v.colour)
    ax.set_xlabel(f"time, {'minutes' if minutes else 'seconds'}")
    ax.set_xlim(0, max(totals) / scale * 1.12)
    ax.grid(axis="x", alpha=0.25)
    ax.legend(handles=[Patch(color=c, label=label) for _, label, c in used], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


# ---------------------------------------------------------------- the page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.meta, .note, figcaption { color: #555; font-size: 0.92em; }
.live { background: #fff6d6; border: 1px solid #e8d27a; padding: 6px 10px; border-radius: 4px; }
.warn { background: #fdecea; border: 1px solid #f1b0a8; padding: 6px 10px; border-radius: 4px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 0.9em; }
th, td { padding: 3px 9px; text-align: left; vertical-align: top; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tr.arch td { border-bottom: 1px solid #ddd; padding-top: 0; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.88em; }
code.arch { color: #444; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px;
          vertical-align: -1px; }
figure { margin: 16px 0 28px; }
figure img { width: 100%; max-width: 1080px; height: auto; border: 1px solid #eee; }
dl.config { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 0.92em; }
dl.config dt { color: #555; }
dl.config dd { margin: 0; overflow-wrap: anywhere; }
.status-done { color: #2b7a2b; } .status-running { color: #a06a00; }
.status-failed, .status-stale, .status-interrupted { color: #b3261e; }
"""

_CAPTIONS = {
    "accuracy_latency": (
        "Every candidate the search evaluated, at its proxy accuracy (a short training, scored on the validation "
        "split) and its measured latency. The line through the hollow points is each run's Pareto front: the most "
        "accurate candidate at each latency. Stars are the finals, trained in full and scored on the test split; "
        "a dotted line joins each to its proxy score. Left of the dashed target line is within the latency budget."
    ),
    "reward": (
        "The reward of each candidate in the order the search evaluated them, the mean of each controller step "
        "(one batch; evolution learns from each candidate as it finishes, so its steps have no mean) and the best "
        "so far. A learning controller's step means rise; a random search's stay flat."
    ),
    "time": (
        "Where each run's time went: proxy training of the candidates, waiting for exports (they run in the "
        "background), latency measurement on the device, the controller's updates, and the finals' full training."
    ),
}


_REWARDS = {"kd": "AKD: distilled from the teacher", "ce": "conventional NAS: no teacher"}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 60:.1f} min" if x >= 300 else f"{x:.0f} s"


def render_html(views: list[RunView], images: dict[str, str], top: int = TOP, refresh_s: int | None = None) -> str:
    """The page: an overview of the runs, the figures (`images`: name -> src beside the page)
    and each run's settings, top candidates and finals."""
    ids = ", ".join(str(v.run.id) for v in views)
    title = f"akd-mobile report: run{'s' if len(views) > 1 else ''} {ids}"
    head = [
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
    ]
    if refresh_s:
        head.append(f'<meta http-equiv="refresh" content="{int(refresh_s)}">')
    head += [f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="meta">written {_e(time.strftime("%Y-%m-%d %H:%M:%S"))} by akd-mobile; '
            "kd = AKD (each candidate's proxy is distilled from the teacher), ce = conventional NAS "
            "(trained on labels alone, no teacher)</p>"]
    live = [v for v in views if v.run.shown_status == "running"]
    if refresh_s and live:
        body.append(f'<p class="live">run {", ".join(str(v.run.id) for v in live)} is still searching: this page '
                    f"reloads itself every {int(refresh_s)} s.</p>")
    body += _overview(views)
    for name, title_text in FIGURES.items():
        stem = Path(images[name].split("?")[0]).stem
        body += [
            f'<figure id="{name}">', f"<h2>{_e(title_text)}</h2>",
            f'<img src="{_e(images[name])}" alt="{_e(title_text)}">',
            f'<figcaption>{_e(_CAPTIONS[name])} Files: <a href="{_e(stem)}.png">PNG</a>, '
            f'<a href="{_e(stem)}.svg">SVG</a>.</figcaption>', "</figure>",
        ]
    for v in views:
        body += _run_section(v, top)
    return "\n".join(head + body + ["</body>", "</html>", ""])


def _status(v: RunView) -> str:
    status = v.run.shown_status
    return f'<span class="status-{_e(status)}">{_e(status)}</span>'


def _overview(views: list[RunView]) -> list[str]:
    rows = ['<table class="overview">', "<tr><th>run</th><th>status</th><th class='num'>evaluated</th>"
            "<th class='num'>failed</th><th class='num'>best reward</th><th>best under the target</th>"
            "<th>best final (test)</th></tr>"]
    notes = []
    for v in views:
        s = v.summary
        under = s.best_under_target
        done_finals = [f for f in v.finals if f.test_accuracy is not None]
        best_final = max(done_finals, key=lambda f: f.test_accuracy, default=None)
        final_text = "-"
        if best_final is not None:
            lat, fmt = final_latency(best_final, v.config.get("fmt", "tflite"))
            final_text = f"{_pct(best_final.test_accuracy)}" + (f" at {_ms(lat)} ({_e(fmt)})" if lat else "")
        best = "-" if s.best is None else f"{s.best['reward']:.4f}"
        under_text = "-" if under is None else f"{_pct(under['accuracy'])} at {_ms(under['latency_ms'])}"
        rows.append(
            f'<tr><td><a href="#run-{v.run.id}"><span class="swatch" style="background:{v.colour}"></span>'
            f"{_e(v.label)}</a></td><td>{_status(v)}</td>"
            f"<td class='num'>{s.evaluated} of {_e(v.config.get('budget', '?'))}</td><td class='num'>{s.failed}</td>"
            f"<td class='num'>{best}</td><td>{under_text}</td><td>{final_text}</td></tr>"
        )
        if not v.evaluated:
            why = f": {v.run.reason}" if v.run.reason else ""
            notes.append(f'<p class="warn">{_e(v.label)} has no finished candidate yet (it is '
                         f"{_e(v.run.shown_status)}{_e(why)}); the figures show nothing of it.</p>")
    return ["<h2>Runs</h2>"] + rows + ["</table>"] + notes


def _run_section(v: RunView, top: int) -> list[str]:
    cfg, run = v.config, v.run
    out = [f'<h2 id="run-{run.id}"><span class="swatch" style="background:{v.colour}"></span>{_e(v.label)}</h2>']
    proxy = cfg.get("proxy") or {}
    settings = [
        ("status", _status(v) + (f" — {_e(run.reason)}" if run.reason else "")),
        ("started", _e(time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created_at)))),
        ("reward", _e(f"{cfg.get('reward')} ({_REWARDS.get(cfg.get('reward'), '?')}), "
                      f"{cfg.get('constraint', 'soft')} constraint")),
        ("strategy", _e(f"{cfg.get('strategy')}, seed {cfg.get('seed')}, batch {cfg.get('batch')}")),
        ("latency target", _e(_ms(v.target_ms))),
        ("device", _e(f"{cfg.get('device')}, {cfg.get('fmt')}, {cfg.get('threads')} thread(s), "
                      f"{cfg.get('runs')} timed runs")),
        ("data", _e(cfg.get("data"))),
    ]
    if cfg.get("reward") == "kd":
        settings.append(("teacher", _e(cfg.get("teacher"))))
    settings += [
        ("space", _e(cfg.get("space"))),
        ("proxy", _e(", ".join(f"{k} {val}" for k, val in proxy.items() if val is not None) or "-")),
        ("candidates", _e(f"{v.summary.evaluated} evaluated, {v.summary.failed} failed, "
                          f"{sum(c.status == 'pending' for c in v.candidates)} pending, of a budget of "
                          f"{cfg.get('budget')}")),
        ("time", _e(", ".join(f"{label} {_seconds(v.summary.time_split_s.get(key))}"
                              for key, label, _ in TIME_PARTS[:4]))),
    ]
    for label, command in v.commands:
        settings.append((label, f"<code>{_e(command)}</code>"))
    out.append('<dl class="config">' + "".join(f"<dt>{k}</dt><dd>{val}</dd>" for k, val in settings) + "</dl>")

    ranked = v.ranked()
    front = v.front_keys()
    final_keys = {f.arch_key: n for n, f in enumerate(v.finals, 1)}
    out.append(f"<h3>Top candidates ({min(top, len(ranked))} of {len(ranked)})</h3>")
    if not ranked:
        out.append('<p class="note">No finished candidate yet.</p>')
    else:
        out.append('<p class="note">Ranked as finalize picks them: under the latency target first, then by '
                   "reward. Accuracy is the proxy's, on the validation split.</p>")
        out += ["<table>", "<tr><th class='num'>#</th><th>key</th><th class='num'>accuracy</th>"
                "<th class='num'>latency</th><th class='num'>reward</th><th class='num'>params</th>"
                "<th class='num'>MMACs</th><th>under target</th><th>Pareto front</th><th>final</th></tr>"]
        target = v.target_ms
        for n, c in enumerate(ranked[:top], 1):
            under = "yes" if target is None or c.latency_ms <= target else "no"
            out.append(
                f"<tr><td class='num'>{n}</td><td class='mono'>{_e(c.arch_key)}</td>"
                f"<td class='num'>{_pct(c.accuracy)}</td><td class='num'>{_ms(c.latency_ms)}</td>"
                f"<td class='num'>{c.reward:.4f}</td>"
                f"<td class='num'>{'-' if c.params is None else f'{c.params:,}'}</td>"
                f"<td class='num'>{'-' if c.macs is None else f'{c.macs / 1e6:.2f}'}</td><td>{under}</td>"
                f"<td>{'yes' if c.arch_key in front else ''}</td>"
                f"<td>{'F' + str(final_keys[c.arch_key]) if c.arch_key in final_keys else ''}</td></tr>"
                f"<tr class='arch'><td></td><td colspan='9'><code class='arch'>{_e(c.arch)}</code></td></tr>"
            )
        out.append("</table>")
    out += _finals_table(v)
    failed = [c for c in v.candidates if c.status == "failed"]
    if failed:
        out.append(f"<details><summary>{len(failed)} failed candidate{'s' if len(failed) > 1 else ''}</summary>"
                   "<table><tr><th>key</th><th>error</th></tr>")
        out += [f"<tr><td class='mono'>{_e(c.arch_key)}</td><td>{_e(c.error)}</td></tr>" for c in failed]
        out.append("</table></details>")
    return out


def _finals_table(v: RunView) -> list[str]:
    out = [f"<h3>Finals ({len(v.finals)})</h3>"]
    if not v.finals:
        out.append('<p class="note">None yet: <code>akd-mobile finalize</code> trains the best candidates in full, '
                   "exports and measures them.</p>")
        return out
    fmt = v.config.get("fmt", "tflite")
    formats = [fmt] + [f for f in FORMATS if f != fmt]
    out += ['<p class="note">Trained in full with the run\'s teacher and data, scored on the test split, exported '
            "with the trained weights and measured on the run's device. Latency: median, and the model's size.</p>",
            "<table>", "<tr><th>final</th><th>from</th><th>key</th><th class='num'>proxy accuracy</th>"
            "<th class='num'>test accuracy</th><th class='num'>validation</th>"
            + "".join(f"<th class='num'>{_e(f)} latency</th>" for f in formats)
            + "<th class='num'>epochs</th><th class='num'>training</th><th>status</th></tr>"]
    for n, f in enumerate(v.finals, 1):
        cells = []
        for name in formats:
            r = f.result.get(name) or {}
            size = r.get("size_bytes")
            cells.append(f"<td class='num'>{_ms(r.get('median_ms'))}"
                         + (f"<br><span class='note'>{size / 1024:,.0f} KiB</span>" if size else "") + "</td>")
        status = _e(f.status) + (f": {_e(f.error)}" if f.error else "")
        if f.status == "trained":
            status += " (not exported and measured yet)"
        out.append(
            f"<tr><td>F{n}</td><td>{'search' if f.source == 'top' else 'your --arch'}</td>"
            f"<td class='mono'>{_e(f.arch_key)}</td><td class='num'>{_pct(f.proxy_accuracy)}</td>"
            f"<td class='num'>{_pct(f.test_accuracy)}</td><td class='num'>{_pct(f.val_accuracy)}</td>"
            + "".join(cells)
            + f"<td class='num'>{f.epochs}</td><td class='num'>{_seconds(f.train_s)}</td><td>{status}</td></tr>"
            f"<tr class='arch'><td></td><td colspan='{8 + len(formats)}'><code class='arch'>{_e(f.arch)}</code>"
            "</td></tr>"
        )
    out.append("</table>")
    return out


# ---------------------------------------------------------------- live, during a search


class LiveReport:
    """Rewrites a search's report as it goes: the search loop's progress callback.

    Writes at the first report (the page exists as soon as the run does), then after each
    finished candidate but at most once every `min_interval_s` (a candidate finished in
    between is written at the next report after the interval), and once more at `close`,
    when the run has stopped and the page stops reloading itself. A page that cannot be
    written is logged, once, and the search goes on.
    """

    def __init__(self, out: Path, db_path: Path | None, min_interval_s: float = LIVE_INTERVAL_S, top: int = TOP) -> None:
        self.out = prepare_folder(out, "--report")
        self.db_path, self.min_interval_s, self.top = db_path, min_interval_s, top
        self.run_id: int | None = None
        self._due = True
        self._last = -math.inf
        self._warned = False

    def __call__(self, progress: Any) -> None:
        self.run_id = progress.run_id
        if progress.last is not None:
            self._due = True
        if self._due and time.monotonic() - self._last >= self.min_interval_s:
            self.write()

    def close(self) -> None:
        """Write the final page (nothing if the run never started)."""
        if self.run_id is not None:
            self.write()

    def write(self) -> None:
        from latency_db import open_db

        try:
            with open_db(self.db_path, read_only=True) as db:
                write_report(db, [self.run_id], self.out, self.top)
        except Exception as exc:  # noqa: BLE001 - the page is a view; the search must not stop for it
            (log.debug if self._warned else log.warning)("could not write the report in %s: %s", self.out, exc)
            self._warned = True
        self._last = time.monotonic()
        self._due = False


@contextlib.contextmanager
def live_report(out: Path | None, db_path: Path | None,
                min_interval_s: float = LIVE_INTERVAL_S) -> Iterator[Callable[[Any], None]]:
    """A search progress callback that keeps the report in `out` current (nothing when `out`
    is None); the last page is written on exit, also when the search stopped with an error.

    Raises:
        ReportError: `out` is a file or cannot be created (before the search starts).
    """
    if out is None:
        yield lambda progress: None
        return
    report = LiveReport(out, db_path, min_interval_s)
    try:
        yield report
    finally:
        report.close()


def chained(*callbacks: Callable[[Any], None]) -> Callable[[Any], None]:
    """One progress callback that calls each of `callbacks` in turn."""

    def call(progress: Any) -> None:
        for callback in callbacks:
            callback(progress)

    return call

