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
def search_progress(budget: int, quiet: bool = False) -> Iterator[Callable[[Any], None]]:
    """A live progress display on stderr (rich); yields the search loop's progress callback.

    Shows step, candidates done, best reward with its accuracy and latency, and the ETA,
    and prints one line per finished candidate.
    """
    if quiet:
        yield lambda progress: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console)
    task = bar.add_task("search", total=budget)
    started = False

    def update(p: Any) -> None:
        nonlocal started
        if not started:  # shown from the first finished candidate: set-up errors stay one line
            bar.start()
            started = True
        best = ""
        if p.best is not None:
            best = f" | best reward {p.best.reward:.4f} acc {p.best.accuracy:.4f} lat {p.best.latency_ms:.3f} ms"
        bar.update(task, completed=p.done, total=p.budget, description=f"run {p.run_id} step {p.step}{best}")
        if p.last is not None:
            c = p.last.to_dict()
            timing = ""
            if c["status"] == "done":
                timing = (
                    f"  (kd {c['train_s'] or 0:.1f} s, export {c['export_s'] or 0:.1f} s, "
                    f"measure {c['measure_s'] or 0:.1f} s{', reused' if c['reused'] else ''})"
                )
            bar.console.print(f"[{p.done}/{p.budget}] {_candidate_line(c)}{timing}", highlight=False, soft_wrap=True)

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
        "time: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in summary.time_split_s.items()),
    ]
    for title, c in (("best reward", summary.best), ("best under target", summary.best_under_target)):
        if c is None:
            lines.append(f"{title}: none")
        else:
            lines += [f"{title}: {_candidate_line(c)}", f"  {c['arch']}"]
    lines.append(f"details: akd-mobile runs show {summary.run_id}")
    return "\n".join(lines)


def run_list(db: Any) -> list[dict[str, Any]]:
    """One row per stored run."""
    from akd_mobile.runs import RunStore

    store = RunStore(db)
    out = []
    for run in store.list_runs():
        rows = store.candidates(run.id)
        done = [r for r in rows if r.status == "done"]
        best = max(done, key=lambda r: r.reward, default=None)
        out.append(
            {
                "run_id": run.id,
                "status": run.status,
                "created_at": run.created_at,
                "strategy": run.config["strategy"],
                "reward": run.config["reward"],
                "device": run.config["device"],
                "target_ms": run.config["target_ms"],
                "budget": run.config["budget"],
                "evaluated": len(done),
                "failed": sum(r.status == "failed" for r in rows),
                "best_reward": best.reward if best else None,
                "best_arch": best.arch if best else None,
            }
        )
    return out


def format_run_list(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs yet: akd-mobile search starts one"
    lines = [f"{'run':>4}  {'status':<11}{'strategy':<10}{'reward':<7}{'device':<10}{'target':>8}{'done':>9}  best reward"]
    for r in rows:
        best = f"{r['best_reward']:.4f}" if r["best_reward"] is not None else "-"
        lines.append(
            f"{r['run_id']:>4}  {r['status']:<11}{r['strategy']:<10}{r['reward']:<7}{r['device']:<10}"
            f"{r['target_ms']:>6.3g}ms{r['evaluated']:>4}/{r['budget']:<4}  {best}"
        )
    return "\n".join(lines)


def run_details(db: Any, run_id: int, top: int = 10) -> dict[str, Any]:
    """A run's configuration, versions, top candidates by reward and best under the target."""
    from akd_mobile.runs import RunStore
    from akd_mobile.search import summarize

    store = RunStore(db)
    summary = summarize(store, run_id)
    run = store.get_run(run_id)
    done = sorted((r for r in store.candidates(run_id) if r.status == "done" and not r.reused), key=lambda r: -r.reward)
    return {
        **summary.to_dict(),
        "versions": run.versions,
        "step": run.step,
        "top": [r.to_dict() for r in done[:top]],
        "failures": [r.to_dict() for r in store.candidates(run_id) if r.status == "failed"],
    }


def format_run(details: dict[str, Any]) -> str:
    from akd_mobile.search import SearchSummary

    fields = SearchSummary.__dataclass_fields__
    lines = [format_summary(SearchSummary(**{k: details[k] for k in fields})), "", "top candidates:"]
    lines += [f"  {_candidate_line(c)}\n    {c['arch']}" for c in details["top"]]
    if details["failures"]:
        lines += ["failures:"] + [f"  {_candidate_line(c)}" for c in details["failures"]]
    return "\n".join(lines)
