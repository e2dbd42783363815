"""Human-readable and JSON reports of architectures."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from akd_mobile.space import ArchSpec, Cost, SearchSpace, layer_cost


def describe_arch(space: SearchSpace, arch: ArchSpec) -> dict[str, Any]:
    """Parameters, MACs and per-block input/output shapes of `arch`."""
    plan = space.plan(arch)
    blocks = []
    for b, blk in enumerate(arch.blocks):
        layers = [p for p in plan if p.block == b]
        cost = sum((layer_cost(p) for p in layers), Cost(0, 0))
        first, last = layers[0], layers[-1]
        blocks.append(
            {
                "block": b + 1,
                "tokens": blk.canonical,
                "in_shape": [first.in_ch, *first.in_hw],
                "out_shape": [last.out_ch, *last.out_hw],
                "layers": len(layers),
                "params": cost.params,
                "macs": cost.macs,
            }
        )
    stem, head = space.stem_cost(), space.head_cost(space.last_channels(arch))
    total = space.cost(arch)
    return {
        **arch.to_json(),
        "params": total.params,
        "macs": total.macs,
        "stem": {"params": stem.params, "macs": stem.macs},
        "blocks": blocks,
        "head": {"params": head.params, "macs": head.macs},
    }


def format_description(desc: dict[str, Any]) -> str:
    """A table of `describe_arch`'s result for the terminal."""
    lines = [
        f"arch   {desc['arch']}",
        f"key    {desc['key']}   space {desc['space']} {'x'.join(map(str, desc['input_shape']))}, "
        f"{desc['num_classes']} classes",
        f"total  {desc['params']:,} params, {desc['macs'] / 1e6:.2f} MMACs",
        "",
        f"{'block':<6}{'tokens':<26}{'in':>12}{'out':>12}{'layers':>7}{'params':>11}{'MMACs':>9}",
        f"{'stem':<6}{'':<26}{'':>12}{'':>12}{'':>7}{desc['stem']['params']:>11,}{desc['stem']['macs'] / 1e6:>9.2f}",
    ]
    for b in desc["blocks"]:
        lines.append(
            f"{b['block']:<6}{b['tokens']:<26}{'x'.join(map(str, b['in_shape'])):>12}"
            f"{'x'.join(map(str, b['out_shape'])):>12}{b['layers']:>7}{b['params']:>11,}{b['macs'] / 1e6:>9.2f}"
        )
    lines.append(
        f"{'head':<6}{'':<26}{'':>12}{'':>12}{'':>7}{desc['head']['params']:>11,}{desc['head']['macs'] / 1e6:>9.2f}"
    )
    return "\n".join(lines)


def _candidate_line(c: dict[str, Any]) -> str:
    if c["status"] != "done":
        return f"{c['arch_key']}  failed: {c['error']}"
    return (
        f"{c['arch_key']}  acc {c['accuracy']:.4f}  lat {c['latency_ms']:.3f} ms  reward {c['reward']:.4f}"
        f"  {c['params']:,} params"
    )


@contextlib.contextmanager
def search_progress(budget: int, quiet: bool = False, console: Any = None) -> Iterator[Callable[[Any], None]]:
    """A live progress display on stderr (rich); yields the search loop's progress callback.

    One short live line (run, candidates done, what the current candidate is doing, a bar,
    elapsed time and ETA) that fits 80 columns, and one printed line per finished candidate
    with the best so far (wrapped, never cut).
    """
    if quiet:
        yield lambda progress: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    columns = (
        TextColumn("{task.description}"), BarColumn(bar_width=16), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console)
    task = bar.add_task("search", total=budget)
    started = False

    def update(p: Any) -> None:
        nonlocal started
        if not started:  # shown from the first report: set-up errors stay one line
            bar.start()
            started = True
        doing = f" {p.phase} {p.current[:8]}" if p.phase else ""
        bar.update(task, completed=p.done, total=p.budget, description=f"run {p.run_id} {p.done}/{p.budget}{doing}")
        if p.last is not None:
            c = p.last.to_dict()
            timing = ""
            if c["status"] == "done":
                timing = (
                    f"  (kd {c['train_s'] or 0:.1f} s, export {c['export_s'] or 0:.1f} s, "
                    f"measure {c['measure_s'] or 0:.1f} s{', reused' if c['reused'] else ''})"
                )
            best = f"; best reward {p.best.reward:.4f} ({p.best.arch_key})" if p.best is not None else ""
            bar.console.print(f"[{p.done}/{p.budget}] {_candidate_line(c)}{timing}{best}", highlight=False,
                              soft_wrap=True)

    try:
        yield update
    finally:
        if started:
            bar.stop()


def format_summary(summary: Any) -> str:
    """The end-of-search report."""
    cfg = summary.config
    lines = [
        f"run {summary.run_id} {summary.status}: {summary.evaluated} candidates evaluated, {summary.failed} failed, "
        f"{summary.seconds:.0f} s",
        f"reward {cfg['reward']}, strategy {cfg['strategy']}, device {cfg['device']}, format {cfg['fmt']}, "
        f"target {cfg['target_ms']} ms ({cfg['constraint']})",
        f"data {cfg['data']}" + (f" ({summary.skipped_images} unreadable images skipped)" if summary.skipped_images else "")
        + (f", teacher {cfg['teacher']}" if cfg["reward"] == "kd" else ""),
        "time: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in summary.time_split_s.items()),
    ]
    if any(summary.latency_sources.values()):
        lines.append(f"latency ({cfg.get('latency', 'measure')}): " + ", ".join(
            f"{n} {source}" for source, n in summary.latency_sources.items() if n))
    if summary.model_drift is not None:
        from akd_base.measurement import TOLERANCE
        from akd_mobile.latency_policy import model_is_off

        lines.append(f"latency model against this run's {summary.model_checked} measured candidates: median "
                     f"{summary.model_drift:+.1%}" + (f", off by more than {TOLERANCE:.0%}: the device's speed changed? "
                                                       "(akd-mobile latency recheck)"
                                                       if model_is_off(summary.model_drift) else ""))
    for title, c in (("best reward", summary.best), ("best under target", summary.best_under_target)):
        if c is None:
            lines.append(f"{title}: none")
        else:
            lines += [f"{title}: {_candidate_line(c)}", f"  {c['arch']}"]
    lines.append(f"details: akd-mobile runs show {summary.run_id}")
    return "\n".join(lines)


def run_list(db: Any) -> list[dict[str, Any]]:
    """One row per stored run (a `running` run whose owner died is `stale`)."""
    import datetime

    from akd_mobile.runs import RunStore

    store = RunStore(db)
    out = []
    for run in store.list_runs():
        rows = store.candidates(run.id)
        done = [r for r in rows if r.status == "done"]
        best = max(done, key=lambda r: r.reward, default=None)
        cfg = run.config
        out.append(
            {
                "run_id": run.id,
                "status": run.shown_status,
                "reason": run.reason,
                "created_at": run.created_at,
                "started": datetime.datetime.fromtimestamp(run.created_at).strftime("%Y-%m-%d %H:%M"),
                "owner": run.owner,
                "strategy": cfg["strategy"],
                "reward": cfg["reward"],
                "data": _short(cfg["data"]),
                "teacher": _short(cfg["teacher"]) if cfg["reward"] == "kd" else "-",
                "device": _short(cfg["device"]),
                "target_ms": cfg["target_ms"],
                "budget": cfg["budget"],
                "evaluated": len(done),
                "failed": sum(r.status == "failed" for r in rows),
                "best_reward": best.reward if best else None,
                "best_arch": best.arch if best else None,
            }
        )
    return out


def _short(spec: str) -> str:
    """A file path's name (each member of a `,`-joined list), a name as it is."""
    from pathlib import Path

    return ",".join(Path(part).name for part in spec.split(","))


_RUN_LIST_COLUMNS = (  # (header, width, row formatter)
    ("run", 4, lambda r: f"{r['run_id']:>4}"),
    ("status", 12, lambda r: r["status"]),
    ("started", 17, lambda r: r["started"]),
    ("strategy", 9, lambda r: f"{r['strategy']} {r['reward']}"),
    ("data", 14, lambda r: r["data"]),
    ("teacher", 14, lambda r: r["teacher"]),
    ("device", 9, lambda r: r["device"]),
    ("target", 8, lambda r: f"{r['target_ms']:.3g} ms"),
    ("done", 9, lambda r: f"{r['evaluated']}/{r['budget']}"),
    ("best", 6, lambda r: f"{r['best_reward']:.4f}" if r["best_reward"] is not None else "-"),
)


def format_run_list(rows: list[dict[str, Any]]) -> str:
    """A table of `run_list`'s rows; a value longer than its column is cut with `~`, never run together."""
    if not rows:
        return "no runs yet: akd-mobile search starts one"

    def cell(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + "~"

    lines = ["  ".join(f"{h:<{w}}" for h, w, _ in _RUN_LIST_COLUMNS).rstrip()]
    lines += ["  ".join(f"{cell(fmt(r), w):<{w}}" for _, w, fmt in _RUN_LIST_COLUMNS).rstrip() for r in rows]
    if any(r["status"] == "stale" for r in rows):
        lines.append("stale: its search died without stopping it; `akd-mobile search --resume RUN_ID` continues it")
    return "\n".join(lines)


def run_details(db: Any, run_id: int, top: int = 10) -> dict[str, Any]:
    """A run's configuration, versions, top candidates by reward and best under the target."""
    from akd_mobile.runs import RunStore
    from akd_mobile.search import summarize

    store = RunStore(db)
    summary = summarize(store, run_id)
    run = store.get_run(run_id)
    done = sorted((r for r in store.candidates(run_id) if r.status == "done" and not r.reused), key=lambda r: -r.reward)
    from akd_mobile.finals import FinalStore

    return {
        **summary.to_dict(),
        "finals": [f.to_dict() for f in FinalStore(db).finals(run_id)],
        "status": run.shown_status,
        "reason": run.reason,
        "inputs": run.inputs,
        "versions": run.versions,
        "step": run.step,
        "top": [r.to_dict() for r in done[:top]],
        "failures": [r.to_dict() for r in store.candidates(run_id) if r.status == "failed"],
    }


def format_run(details: dict[str, Any]) -> str:
    from akd_mobile.search import SearchSummary

    fields = SearchSummary.__dataclass_fields__
    lines = [format_summary(SearchSummary(**{k: details[k] for k in fields}))]
    if details["reason"]:
        lines.append(f"stopped because: {details['reason']}")
    lines += ["", "top candidates:"]
    lines += [f"  {_candidate_line(c)}\n    {c['arch']}" for c in details["top"]]
    if details["failures"]:
        lines += ["failures:"] + [f"  {_candidate_line(c)}" for c in details["failures"]]
    if details["finals"]:
        lines += ["", "finals (fully trained):", format_finals(details["finals"])]
    return "\n".join(lines)


def format_finals(finals: list[dict[str, Any]]) -> str:
    """A table of a run's finals: proxy and full accuracy, latency and size per format."""
    lines = [f"  {'key':<13}{'from':<5}{'mode':<5}{'epochs':>6}{'proxy':>8}{'test':>8}{'tflite ms':>11}{'pte ms':>9}"
             f"  status"]
    for f in finals:
        fmt_ms = [f["result"].get(fmt, {}).get("median_ms") for fmt in ("tflite", "pte")]
        cells = [f"{v:.3f}" if v is not None else "-" for v in fmt_ms]
        proxy = f"{f['proxy_accuracy']:.4f}" if f["proxy_accuracy"] is not None else "-"
        test = f"{f['test_accuracy']:.4f}" if f["test_accuracy"] is not None else "-"
        status = f["status"] if not f["error"] else f"{f['status']}: {f['error']}"
        lines.append(f"  {f['arch_key']:<13}{f['source']:<5}{f['mode']:<5}{f['epochs']:>6}{proxy:>8}{test:>8}"
                     f"{cells[0]:>11}{cells[1]:>9}  {status}")
    return "\n".join(lines)


@contextlib.contextmanager
def finalize_progress(quiet: bool = False) -> Iterator[Callable[[Any], None]]:
    """A live line on stderr for finalize: which final, its phase and epoch; yields the callback."""
    if quiet:
        yield lambda progress: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16), TimeElapsedColumn(),
                   console=Console(stderr=True))
    task = bar.add_task("finalize", total=None)
    started = False

    def update(p: Any) -> None:
        nonlocal started
        if not started:  # from the first report on: set-up errors stay one line
            bar.start()
            started = True
        epoch = f" epoch {p.epoch}/{p.epochs}" if p.phase == "training" else ""
        val = f" val {p.val_accuracy:.4f}" if p.val_accuracy is not None else ""
        bar.update(task, description=f"final {p.index + 1}/{p.total} {p.arch_key[:8]} {p.phase}{epoch}{val}",
                   total=p.epochs or None, completed=p.epoch)

    try:
        yield update
    finally:
        if started:
            bar.stop()
