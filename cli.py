"""The `akd-mobile` command line: each command a few lines that call library functions."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from akd_mobile import __version__
from akd_mobile.augment import AUGMENTATIONS
from akd_base.errors import AkdError, Interrupted
from akd_mobile.finals import FinalizeConfig
from akd_mobile.latency_recheck import RECHECK_ARCHS
from akd_base.measurement import TOLERANCE


class AkdGroup(click.Group):
    """A click group whose user errors print one line and exit 2, with no traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.ClickException as exc:
            _fail(exc.format_message())
        except Interrupted as exc:
            click.echo(f"interrupted: {' '.join(str(exc).split())}", err=True)
            sys.exit(exc.exit_code)
        except AkdError as exc:
            _fail(str(exc))
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(2)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print `data` as JSON, or `text` (or the JSON) for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text if text is not None else json.dumps(data, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _show_logs(ctx: click.Context, _param: click.Parameter, verbose: bool) -> None:
    """--verbose: akd-mobile's debug log on stderr for this command, and with it the converters'
    and runtimes' own output (see `akd_mobile.export.quiet_converters`)."""
    import logging

    if not verbose:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("akd_mobile", "devices", "latency_db")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.addHandler(handler)
        lg.propagate = False  # a converter may configure the root logger: print each line once

    def restore() -> None:
        for lg, (level, propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate

    ctx.call_on_close(restore)


verbose_option = click.option(
    "--verbose", is_flag=True, expose_value=False, callback=_show_logs,
    help="Show akd-mobile's log and the converters' and runtimes' own output on stderr.",
)


@click.group(cls=AkdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="akd-mobile")
def cli() -> None:
    """Find the student a teacher distils best into, under a latency budget measured on a phone."""


# ---------------------------------------------------------------- space


def space_options(f):
    """--space, --input and --classes: which search space an architecture belongs to."""
    f = click.option("--classes", type=int, default=None, help="Classifier outputs (default: the preset's).")(f)
    f = click.option("--input", "input_shape", default=None, help="Input shape CxHxW (default: the preset's).")(f)
    f = click.option("--space", "space_name", default="mnasnet-small", show_default=True, help="Search space preset.")(f)
    return f


def _space(space_name: str, input_shape: str | None, classes: int | None):
    from akd_mobile.space import get_space, parse_shape

    return get_space(space_name, parse_shape(input_shape) if input_shape else None, classes)


@cli.group()
def space() -> None:
    """Inspect the student search space."""


@space.command("sample")
@space_options
@click.option("--n", "count", type=click.IntRange(min=1), default=5, show_default=True, help="How many.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def space_sample(space_name, input_shape, classes, count, seed, as_json):
    """Sample random architectures."""
    import random

    sp = _space(space_name, input_shape, classes)
    rng = random.Random(seed)
    archs = [sp.sample(rng) for _ in range(count)]
    rows = [{**a.to_json(), "params": sp.cost(a).params, "macs": sp.cost(a).macs} for a in archs]
    text = "\n".join(f"{r['key']}  {r['params']:>9,} params  {r['macs'] / 1e6:8.2f} MMACs  {r['arch']}" for r in rows)
    emit(rows, as_json, text)


@space.command("describe")
@click.argument("arch")
@space_options
@json_option
def space_describe(arch, space_name, input_shape, classes, as_json):
    """Parameters, MACs and per-block shapes of ARCH."""
    from akd_mobile.report import describe_arch, format_description

    sp = _space(space_name, input_shape, classes)
    desc = describe_arch(sp, sp.decode(arch))
    emit(desc, as_json, format_description(desc))


@space.command("validate")
@click.argument("arch")
@space_options
def space_validate(arch, space_name, input_shape, classes):
    """Exit 0 if ARCH is a canonical architecture string, else name the bad token and exit 2."""
    sp = _space(space_name, input_shape, classes)
    a = sp.decode(arch)
    click.echo(f"ok {a.key}")


@space.command("size")
@space_options
@json_option
def space_size(space_name, input_shape, classes, as_json):
    """Number of distinct architectures in the space."""
    sp = _space(space_name, input_shape, classes)
    n = sp.size()
    emit({"space": sp.name, "size": n, "decisions": len(sp.decisions())}, as_json, f"{n} ({n:.3e}) architectures")


# ---------------------------------------------------------------- search and runs


def db_option(f):
    """--db: the SQLite file of latency measurements and search runs."""
    return click.option(
        "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="SQLite file of measurements and runs (default: $AKD_DB, else the user data folder).",
    )(f)


def data_options(f):
    """--data, --input-size and --skip-bad-images; the command gets `data` and one `data_options`."""

    @functools.wraps(f)
    def with_options(*args, input_size, skip_bad_images, **kwargs):
        from akd_mobile.data import DataOptions

        return f(*args, data_options=DataOptions(input_size, skip_bad_images), **kwargs)

    with_options = click.option(
        "--skip-bad-images", is_flag=True,
        help="Leave unreadable images out (counted and logged) instead of refusing the data set.")(with_options)
    with_options = click.option(
        "--input-size", type=int, default=None,
        help="Square side in px each image is resized and center-cropped to (default: the space's input for "
             "your own images, the source's size for the built-in sets).")(with_options)
    return click.option("--data", default="fashion-mnist", show_default=True,
                        help="Dataset: fashion-mnist, digits, or a path (IDX, CIFAR-10, ImageFolder, CSV).")(with_options)


def augment_option(f):
    """--augment: the augmentation of a full training."""
    return click.option("--augment", type=click.Choice(AUGMENTATIONS), default="auto", show_default=True,
                        help="Full training's augmentation: auto is a random crop of the padded image, and a "
                             "horizontal flip unless the data are digits.")(f)


@cli.command()
@click.option("--device", default="local", show_default=True, help="Device profile name or .toml path.")
@click.option("--teacher", default="default", show_default=True, help="Teacher: default, a .pt2/TorchScript/checkpoint file, or several joined by ','.")
@data_options
@click.option("--space", "space_name", default="mnasnet-small", show_default=True, help="Search space preset.")
@click.option("--target-ms", type=float, default=None, help="Latency target T in ms (default: the device profile's).")
@click.option("--constraint", default="soft", show_default=True, help="soft (alpha=beta=-0.07) or hard (alpha=0, beta=-1).")
@click.option("--reward", default="kd", show_default=True, help="kd (AKD) or ce (conventional NAS, no teacher).")
@click.option("--strategy", default="rl", show_default=True, help="rl, random or evolution.")
@click.option("--budget", type=int, default=16, show_default=True, help="Candidates to evaluate.")
@click.option("--batch", type=int, default=4, show_default=True, help="Candidates per controller update.")
@click.option("--format", "fmt", default="tflite", show_default=True, help="Artifact measured: tflite or pte.")
@click.option("--threads", type=int, default=None, help="Inference threads (default: the profile's).")
@click.option("--min-time", "min_time_s", type=float, default=None,
              help="Least seconds of timed runs per latency measurement (default: the profile's min_time_s).")
@click.option("--latency", "latency_mode", type=click.Choice(["measure", "predict", "hybrid"]), default="measure",
              show_default=True, help="Measure every new candidate, or let the device's latency model predict "
                                      "(hybrid: measure where the decision depends on it; docs/latency.md).")
@click.option("--proxy-steps", type=int, default=None, help="Proxy training steps per candidate (default 80).")
@click.option("--proxy-batch-size", type=int, default=None,
              help="Proxy images per step (default 125; more than the training split takes all of it).")
@click.option("--proxy-lr", type=float, default=None, help="Proxy peak learning rate (default 0.2).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", type=int, default=None, help="Continue run RUN_ID from its last checkpoint.")
@click.option("--ray", "ray_address", default=None, metavar="auto|HOST:PORT|off",
              help="Evaluate on Ray: auto (the cluster `ray start` began here, else a new local one) or a head's "
                   "address; off: in-process (default: the device profile's `ray`, else in-process).")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None,
              help="Candidates evaluated at once on Ray (default: four per training slot).")
@click.option("--torch-device", default="cpu", show_default=True, help="Where proxy training runs: cpu or cuda.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep an HTML report of the run in this folder, rewritten as the search goes (open its index.html).")
@db_option
@json_option
def search(device, teacher, data, data_options, space_name, target_ms, constraint, reward, strategy, budget, batch, fmt,
           threads, min_time_s, latency_mode, proxy_steps, proxy_batch_size, proxy_lr, seed, resume, ray_address,
           max_in_flight, torch_device, report_dir, db_path, as_json):
    """Search for the student the teacher distils best into, under the latency target."""
    from akd_mobile.distill import ProxyBudget
    from akd_mobile.engines import Execution
    from akd_mobile.report import format_summary, search_progress
    from akd_mobile.search import SearchConfig, run_search

    proxy = ProxyBudget().override(steps=proxy_steps, batch_size=proxy_batch_size, lr=proxy_lr)
    config = SearchConfig(
        device=device, teacher=teacher, data=data, data_options=data_options, space=space_name, target_ms=target_ms,
        constraint=constraint,
        reward=reward, strategy=strategy, budget=budget, batch=batch, fmt=fmt, threads=threads,
        min_time_s=min_time_s, latency=latency_mode, proxy=proxy, seed=seed,
    )
    from akd_mobile.run_report import chained, live_report

    with search_progress(budget, quiet=as_json) as show, live_report(report_dir, db_path) as write:
        summary = run_search(config, db_path, resume, chained(show, write),
                             Execution(ray_address, max_in_flight, torch_device))
    text = format_summary(summary) + (f"\nreport: {(report_dir / 'index.html').resolve()}" if report_dir else "")
    emit(summary.to_dict(), as_json, text)


@cli.group()
def runs() -> None:
    """Stored search runs."""


@runs.command("list")
@db_option
@json_option
def runs_list(db_path, as_json):
    """Every run: status, progress, best reward."""
    from akd_mobile.report import format_run_list, run_list
    from latency_db import open_db

    rows = run_list(open_db(db_path, read_only=True))
    emit(rows, as_json, format_run_list(rows))


@runs.command("delete")
@click.argument("run_id", type=int)
@db_option
def runs_delete(run_id, db_path):
    """Delete run RUN_ID and its candidates (its latency measurements stay)."""
    from akd_mobile.runs import RunStore
    from latency_db import open_db

    candidates, finals = RunStore(open_db(db_path)).delete_run(run_id)
    click.echo(f"deleted run {run_id}, its {candidates} candidates and {finals} finals (their files stay)")


@runs.command("show")
@click.argument("run_id", type=int)
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Candidates to list.")
@db_option
@json_option
def runs_show(run_id, top, db_path, as_json):
    """A run's configuration, its top candidates and the best one under the target."""
    from akd_mobile.report import format_run, run_details
    from latency_db import open_db

    details = run_details(open_db(db_path, read_only=True), run_id, top)
    emit(details, as_json, format_run(details))


@cli.command("report")
@click.argument("run_ids", nargs=-1, type=int)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for index.html and its figures (PNG and SVG).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Candidates listed per run.")
@db_option
@json_option
def report(run_ids, out, top, db_path, as_json):
    """An HTML page of runs RUN_ID...: accuracy against latency, reward, time, top candidates and finals.

    Several runs overlay on the same axes, one colour each: an AKD run beside its baselines."""
    from akd_mobile.run_report import write_report
    from latency_db import open_db

    files = write_report(open_db(db_path, read_only=True), list(run_ids), out, top)
    runs_text = ", ".join(map(str, files.run_ids))
    emit(files.to_dict(), as_json,
         f"report of run{'s' if len(files.run_ids) > 1 else ''} {runs_text}: {files.html.resolve()}\n"
         f"figures beside it as PNG and SVG: {', '.join(files.figures)}\nopen {files.html.resolve().as_uri()}")


# ---------------------------------------------------------------- latency


def measure_options(f):
    """--threads, --warmup, --runs, --min-time: how a latency is measured, each defaulting to the
    device profile's (`MeasureSettings.with_options`)."""
    f = click.option("--min-time", "min_time_s", type=float, default=None,
                     help="Least seconds of timed runs, in all: runs go on past --runs until then "
                          "(default: the profile's).")(f)
    f = click.option("--runs", type=click.IntRange(min=1), default=None,
                     help="Timed runs, at least (default: the profile's).")(f)
    f = click.option("--warmup", type=click.IntRange(min=0), default=None,
                     help="Untimed runs first (default: the profile's).")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Inference threads (default: the profile's).")(f)
    return f


def _stats_line(r: dict[str, Any]) -> str:
    return (f"median {r['median_ms']:.3f} ms  mean {r['mean_ms']:.3f}  std {r['std_ms']:.3f}  "
            f"p90 {r['p90_ms'] or float('nan'):.3f}  min {r['min_ms']:.3f}  ({r['count']} runs)")


@cli.command("bench")
@click.argument("model_or_arch")
@click.option("--device", "device_name", default="local", show_default=True, help="Device profile name or .toml path.")
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), default=None,
              help="Export format for an ARCH (default tflite); a file's own suffix otherwise.")
@measure_options
@space_options
@db_option
@json_option
@verbose_option
def bench(model_or_arch, device_name, fmt, threads, warmup, runs, min_time_s, space_name, input_shape, classes,
          db_path, as_json):
    """Measure a .tflite/.pte file or an architecture on a device, print and store it.

    Unset measurement options take the device profile's, else the defaults of
    akd_base.measurement.MeasureSettings."""
    from akd_base.errors import DatabaseError
    from akd_mobile.latency import LatencyService
    from devices.profiles import load_profile, open_device
    from latency_db import open_db

    is_file = model_or_arch.endswith((".tflite", ".pte")) or Path(model_or_arch).is_file()
    if is_file and fmt is not None and not model_or_arch.endswith(f".{fmt}"):
        raise click.UsageError(f"--format {fmt} does not match the file {model_or_arch}")
    profile = load_profile(device_name)
    if is_file:  # the file's own format (measure_file names a file of neither)
        fmt = "pte" if model_or_arch.endswith(".pte") else "tflite"
    settings = profile.measure.with_options(fmt=fmt, threads=threads, warmup=warmup, runs=runs, min_time_s=min_time_s)
    device = open_device(profile)
    arch = None if is_file else _space(space_name, input_shape, classes).decode(model_or_arch)
    with open_db(db_path) as db:
        service = LatencyService(device, db, settings)
        new = service.measure_file(Path(model_or_arch)) if arch is None else service.measure(arch)
        out = new.outcome
        d = {**out.to_dict(), "device": device.name, "threads": settings.threads, "warmup": settings.warmup,
             "runs": settings.runs, "min_time_s": settings.min_time_s}
        emit(d, as_json, f"{out.arch_key or Path(model_or_arch).name}  {out.fmt}  {device.name}  "
                         f"threads {settings.threads}  {_stats_line(d)}")
        try:
            service.store(new)
        except DatabaseError as exc:
            raise DatabaseError(f"{exc}; the measurement printed above was not stored") from None


@cli.command("export")
@click.argument("arch")
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the model.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A state dict (torch.save); default: initialised weights.")
@space_options
@json_option
@verbose_option
def export(arch, fmt, out, weights, space_name, input_shape, classes, as_json):
    """Export ARCH to .tflite (litert-torch) or .pte (ExecuTorch + XNNPACK)."""
    from akd_mobile.export import check_out_path, export_model, save_as

    spec = _space(space_name, input_shape, classes).decode(arch)
    check_out_path(out, fmt)
    result = export_model(spec, fmt, weights=weights)
    save_as(result, out)
    d = {**result.to_dict(), "out": str(out), "arch_key": spec.key}
    emit(d, as_json, f"{out}  {result.size_bytes:,} bytes  max abs diff {result.max_abs_diff:.2g}  "
                     f"{'cached' if result.cached else f'{result.seconds:.1f} s'}  ({result.converter_version})")


@cli.group()
def latency() -> None:
    """Query, summarise, export and import the latency database; sweep, fit, predict and evaluate predictors."""


@latency.command("query")
@click.option("--device", default=None, help="Device profile name or fingerprint.")
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), default=None)
@click.option("--min-ms", type=float, default=None, help="Lowest median, inclusive.")
@click.option("--max-ms", type=float, default=None, help="Highest median, inclusive.")
@click.option("--limit", type=int, default=None, help="At most this many rows.")
@db_option
@json_option
def latency_query(device, fmt, min_ms, max_ms, limit, db_path, as_json):
    """Stored measurements, fastest first; `noisy` marks a p90 far above the median."""
    from latency_db import open_db
    from latency_db.store import NOISY_P90_RATIO, check_query

    check_query(fmt, min_ms, max_ms, limit)
    with open_db(db_path, read_only=True) as db:
        rows = [m.to_dict() for m in db.query(device, fmt, min_ms, max_ms, limit)]
    lines = [f"{'id':>6}  {'device':<10} {'format':<6} {'threads':>7}  {'arch':<12}  {'median_ms':>9}  {'p90_ms':>9}  "
             f"{'measured_at':<19}  note"]
    lines += [f"{r['id']:>6}  {r['device_name']:<10} {r['fmt']:<6} {r['threads']:>7}  {r['arch_key'] or '-':<12}  "
              f"{r['median_ms']:9.3f}  {'-' if r['p90_ms'] is None else format(r['p90_ms'], '.3f'):>9}  "
              f"{r['measured_at'][:19]}  {'noisy' if r['noisy'] else ''}".rstrip() for r in rows]
    if any(r["noisy"] for r in rows):
        lines.append(f"noisy: p90 above {NOISY_P90_RATIO:g}x the median; measure it again on a quiet device")
    emit(rows, as_json, "\n".join(lines) if rows else "no measurements match")


@latency.command("stats")
@db_option
@json_option
def latency_stats(db_path, as_json):
    """Counts of measurements, devices and architectures, and ranges per device and format."""
    from latency_db import open_db

    with open_db(db_path, read_only=True) as db:
        s = db.stats().to_dict()
    lines = [f"{s['path']} (schema v{s['schema_version']}): {s['measurements']} measurements, "
             f"{s['archs']} archs, {s['devices']} devices, {s['artifacts']} artifacts"]
    lines += [f"  {g['device']:<10} {g['format']:<6} {g['n']:>6}  {g['min_ms']:.3f} .. {g['max_ms']:.3f} ms"
              for g in s["by_device_format"]]
    emit(s, as_json, "\n".join(lines))


@latency.command("export")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--without-samples", is_flag=True, help="Leave out the per-run latencies (the statistics stay).")
@db_option
def latency_export(csv_file, json_file, without_samples, db_path):
    """Write every measurement to a CSV or JSON file (give exactly one)."""
    from latency_db import open_db
    from latency_db.transfer import export_measurements

    if (csv_file is None) == (json_file is None):
        raise click.UsageError("give exactly one of --csv FILE or --json FILE")
    with open_db(db_path, read_only=True) as db:
        n = export_measurements(db, csv_file or json_file, as_csv=csv_file is not None, samples=not without_samples)
    click.echo(f"exported {n} measurements to {csv_file or json_file}")


@latency.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@json_option
def latency_import(file, db_path, as_json):
    """Merge an exported CSV or JSON file, skipping measurements already present."""
    from latency_db import open_db
    from latency_db.transfer import import_measurements

    with open_db(db_path) as db:
        r = import_measurements(db, file)
    emit({"added": r.added, "skipped": r.skipped}, as_json, f"added {r.added}, skipped {r.skipped} already present")


def _model_key(db, device: str, fmt: str, threads: int | None, runtime: str | None):
    """The predictor key of a device the database knows (name or fingerprint); threads
    default to the device profile's (else MeasureSettings' default)."""
    from akd_base.errors import DeviceError
    from akd_base.measurement import MeasureSettings
    from devices.profiles import load_profile
    from latency_db.predictors import resolve_key

    if threads is None:
        try:
            threads = load_profile(device).measure.threads
        except DeviceError:  # a fingerprint, or a profile only the database knows
            threads = MeasureSettings().threads
    return resolve_key(db, device, fmt, threads, runtime)


def show_recheck(r) -> None:
    """One architecture of a `latency recheck` (a `Recheck`), for people."""
    now = f"failed: {r.error}" if r.error else f"{r.now_ms:.3f} ms  x{r.ratio:.2f}"
    click.echo(f"recheck {r.arch_key}  stored {r.stored_ms:.3f} ms ({r.stored_count})  now {now}")


def predictor_options(f):
    """--device, --format, --threads, --runtime: which device's measurements a predictor is of."""
    f = click.option("--runtime", default=None, help="Runtime version, e.g. 'litert 2.3.0' (default: the newest measured).")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Inference threads (default: the device profile's).")(f)
    f = click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), default="tflite", show_default=True)(f)
    f = click.option("--device", required=True, help="Device profile name or fingerprint in the database.")(f)
    return f


@latency.command("sweep")
@click.option("--device", "device_name", default="local", show_default=True, help="Device profile name or .toml path.")
@click.option("--n", "count", type=click.IntRange(min=1), required=True, help="Architectures to measure.")
@click.option("--repeat", type=click.IntRange(min=0), default=0, show_default=True,
              help="Measure the j-th again right after the 2j-th, for j up to K (the device's noise floor).")
@click.option("--times", type=click.IntRange(min=1), default=1, show_default=True,
              help="Then pass over them again until each has K measurements, a whole pass apart (their median is "
                   "what latency eval judges a prediction against).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), default=None, help="Default: tflite.")
@measure_options
@click.option("--allow-drift", is_flag=True,
              help=f"Skip the recheck: add to the database's measurements of the device whatever its speed now "
                   f"(without it, a device more than {TOLERANCE:.0%} faster or slower than they say stops the sweep).")
@space_options
@db_option
@json_option
@verbose_option
def latency_sweep(device_name, count, repeat, times, seed, fmt, threads, warmup, runs, min_time_s, allow_drift,
                  space_name, input_shape, classes, db_path, as_json):
    """Measure N students spread over the space's cost range, to fit a predictor (resumable:
    the same command skips what the database holds; before it adds to what the database
    holds of the device, it measures a few of those again and stops if the device's speed
    changed, see latency recheck)."""
    from akd_mobile.latency import LatencyService
    from akd_mobile.latency_sweep import check_speed, run_sweep, sweep_archs
    from devices.profiles import load_profile, open_device
    from latency_db import open_db

    profile = load_profile(device_name)
    settings = profile.measure.with_options(fmt=fmt, threads=threads, warmup=warmup, runs=runs, min_time_s=min_time_s)
    space = _space(space_name, input_shape, classes)
    archs = sweep_archs(space, count, seed)

    def show(p):
        if not as_json:
            what = f"failed: {p.error}" if p.error else f"{p.median_ms:.3f} ms{' (in the database)' if p.cached else ''}"
            click.echo(f"{p.index}/{p.total}  {p.arch_key}  {what}")

    with open_db(db_path) as db:
        service = LatencyService(open_device(profile), db, settings)
        checked = None if allow_drift else check_speed(service, archs, repeat, times, TOLERANCE,
                                                       show_recheck if not as_json else lambda r: None)
        if checked is not None and not as_json:
            click.echo(f"recheck: the device runs at {checked.describe()}, within +-{TOLERANCE:.0%}: sweeping on")
        summary = run_sweep(service, archs, repeat, times, show)
    d = dataclasses.asdict(summary)
    emit(d, as_json, f"measured {d['measured']}, already in the database {d['cached']}, failed {d['failed']}, "
                     f"repeated {d['repeated']}, measured again {d['remeasured']}")


@latency.command("recheck")
@click.option("--device", "device_name", default="local", show_default=True, help="Device profile name or .toml path.")
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), default=None, help="Default: tflite.")
@measure_options
@click.option("--archs", "count", type=click.IntRange(min=1), default=RECHECK_ARCHS, show_default=True,
              help="Architectures measured again, spread over the stored latency range.")
@click.option("--max-drift", type=click.FloatRange(min=0, min_open=True), default=100 * TOLERANCE, show_default=True,
              help="Percent: a median ratio (now over stored) further than this from 1 exits 1.")
@click.option("--store", is_flag=True, help="Store the new measurements beside the old, unless the device drifted.")
@db_option
@json_option
@verbose_option
def latency_recheck(device_name, fmt, threads, warmup, runs, min_time_s, count, max_drift, store, db_path, as_json):
    """Measure again a few architectures the database holds for this device and compare: does
    it still run at the stored speed? Exits 1 when it drifted more than --max-drift."""
    from akd_mobile.latency import LatencyService
    from akd_mobile.latency_recheck import recheck
    from devices.profiles import load_profile, open_device
    from latency_db import open_db

    profile = load_profile(device_name)
    settings = profile.measure.with_options(fmt=fmt, threads=threads, warmup=warmup, runs=runs, min_time_s=min_time_s)

    with open_db(db_path) as db:
        service = LatencyService(open_device(profile), db, settings)
        summary = recheck(service, count, max_drift / 100, store, show_recheck if not as_json else lambda r: None)
    a = summary.agreement
    verdict = (f"drifted: this device now runs at {summary.describe()}; they, and its latency model, describe "
               "another speed" if summary.drifted else
               f"within +-{max_drift:g}%: the stored latencies still describe this device")
    kept = "" if not store else " (new measurements stored)" if summary.stored else " (not stored: drifted)"
    emit(summary.to_dict(), as_json,
         f"{service.key.describe()}, stored {summary.stored_from[:16]} .. {summary.stored_to[:16]} UTC: median ratio "
         f"now/stored x{1 + summary.drift:.3f} (x{1 + summary.drift_low:.2f} .. x{1 + summary.drift_high:.2f}), "
         f"{a.within} of {a.trials} within {TOLERANCE:.0%}; {verdict}{kept}")
    return 1 if summary.drifted else 0


@latency.command("fit")
@predictor_options
@db_option
@json_option
def latency_fit(device, fmt, threads, runtime, db_path, as_json):
    """Fit a latency predictor on the device's measurements and store it."""
    from akd_mobile.latency_predictor import fit_stored
    from latency_db import open_db

    with open_db(db_path) as db:
        stored = fit_stored(db, _model_key(db, device, fmt, threads, runtime))
    d = {"model_id": stored.id, "kind": stored.kind, "archs": stored.archs,
         "measurements": len(stored.measurement_uids), "band": stored.band, "tile": stored.model["tile"],
         "key": dataclasses.asdict(stored.key)}
    emit(d, as_json, f"latency model {stored.id} for {stored.key.describe()}: fitted on {stored.archs} architectures "
                     f"({d['measurements']} measurements), channels in tiles of {d['tile']}, 95% of its "
                     f"cross-validated predictions within +-{stored.band:.1%}")


@latency.command("predict")
@click.argument("arch")
@predictor_options
@space_options
@db_option
@json_option
def latency_predict(arch, device, fmt, threads, runtime, space_name, input_shape, classes, db_path, as_json):
    """Predict ARCH's latency with the device's newest latency model."""
    from akd_mobile.latency_predictor import Predictor
    from latency_db import open_db

    spec = _space(space_name, input_shape, classes).decode(arch)
    with open_db(db_path, read_only=True) as db:
        p = Predictor(db, _model_key(db, device, fmt, threads, runtime)).predict(spec)
    emit({"arch_key": spec.key, **p.to_dict()}, as_json,
         f"{spec.key}  {p.median_ms:.3f} ms (+-{p.band:.1%}, latency model {p.model_id})")


@latency.command("eval")
@predictor_options
@click.option("--sizes", default="10,30,100,300", show_default=True, help="Training sizes, comma-separated.")
@click.option("--held-out", type=click.IntRange(min=1), default=None, help="Architectures held out (default: half).")
@click.option("--seed", type=int, default=0, show_default=True)
@db_option
@json_option
def latency_eval(device, fmt, threads, runtime, sizes, held_out, seed, db_path, as_json):
    """Predictions on held-out architectures against their measurements, per training size,
    beside the device's agreement with itself."""
    from akd_mobile.latency_eval import evaluate_predictor
    from latency_db import open_db
    from latency_db.predictors import keyed_measurements

    try:
        size_list = tuple(int(v) for v in sizes.split(","))
    except ValueError:
        raise click.UsageError(f"--sizes must be integers separated by commas, got {sizes!r}") from None
    with open_db(db_path, read_only=True) as db:
        key = _model_key(db, device, fmt, threads, runtime)
        e = evaluate_predictor(keyed_measurements(db, key), key, size_list, held_out, seed)
    lines = [f"{key.describe()}: {e.archs} architectures, {e.held_out} held out (seed {seed}), judged against the "
             f"medians of their {e.held_out_measurements} measurements; each model fitted on one measurement per "
             "architecture",
             f"{'train':>6}  {'within 10%':>10}  {'95% lower':>9}  {'RMSPE':>6}  {'tau':>5}  {'band':>6}  {'tile':>4}  "
             f"{'near a measurement':>18}"]
    lines += [f"{r.train_archs:>6}  {r.agreement.share:>10.1%}  {r.agreement.lower:>9.1%}  {r.rmspe:>6.1%}  "
              f"{r.kendall_tau:>5.3f}  {r.band:>6.1%}  {r.tile:>4}  {r.near_a_measurement / e.held_out:>18.1%}"
              for r in e.results]
    spread, of = e.held_out_spread
    lines.append("held out and measured more than once: none" if not of else
                 f"held out and measured more than once: {of}, of which {spread} spread by more than 10% themselves")
    noise = e.noise
    lines.append("noise floor: no architecture measured twice (latency sweep --repeat K or --times K)"
                 if noise is None else
                 f"noise floor: {noise.within} of {noise.trials} repeated measurements within 10% of the first "
                 f"({noise.share:.1%}, 95% lower bound {noise.lower:.1%})")
    emit(e.to_dict(), as_json, "\n".join(lines))


# ---------------------------------------------------------------- devices


@cli.group("devices")
def devices_group() -> None:
    """Device profiles, phones over ADB, and their benchmark tools."""


@devices_group.command("list")
@json_option
def devices_list(as_json):
    """Profiles, and whether each device answers now."""
    from devices.manage import list_devices

    rows = list_devices()
    emit(rows, as_json, "\n".join(
        f"{r['name']:<10} {r['backend']:<6} {'answers' if r['answers'] else 'no answer':<9}  "
        f"{r['description']}{'' if r['answers'] else '  (' + r['reason'] + ')'}" for r in rows))


@devices_group.command("info")
@click.argument("name")
@json_option
def devices_info(name, as_json):
    """Model, SoC, ABI, cores, frequencies, runtimes and fingerprint of device NAME (profile or .toml)."""
    from devices.profiles import open_device

    info = open_device(name).info().to_dict()
    emit(info, as_json, "\n".join(f"{k}: {v}" for k, v in info.items()))


@devices_group.command("setup")
@click.argument("name")
@json_option
def devices_setup(name, as_json):
    """Push the benchmark tools of NAME's profile to the device (once; checksummed)."""
    from devices.manage import setup_device

    rows = setup_device(name)
    emit(rows, as_json, "\n".join(
        f"{r['format']}: {r['remote']} sha256 {r['sha256'][:16]} {'pushed' if r['pushed'] else 'already there'}"
        for r in rows))


@devices_group.command("check")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), default="tflite", show_default=True)
@json_option
@verbose_option
def devices_check(name, fmt, as_json):
    """Push a tiny model to NAME, run its tool, parse and print the latency."""
    from akd_mobile.device_check import check_device

    r = check_device(name, fmt)
    lat = r["latency"]
    emit(r, as_json, f"{r['device']}: ok, tiny .{fmt} model median {lat['median_ms']:.3g} ms "
                     f"over {lat['count']} runs ({r['threads']} thread(s))")


@devices_group.command("keygen")
@click.option("--path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Private key file (default: $XDG_CONFIG_HOME/akd-mobile/adbkey).")
@click.option("--force", is_flag=True, help="Replace an existing key.")
@json_option
def devices_keygen(path, force, as_json):
    """Write an ADB RSA key pair (private key 0600) for phones and the loopback daemon."""
    from devices.adb_keys import generate_key

    key = generate_key(path, force)
    emit({"private_key": str(key), "public_key": f"{key}.pub"}, as_json, f"wrote {key} and {key}.pub")


@cli.group("loopback")
def loopback_group() -> None:
    """The loopback ADB device: this host served over the real ADB protocol (for CI)."""


@loopback_group.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), default=15555, show_default=True, help="TCP port on 127.0.0.1 (0: any free one).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Sandbox folder served as the device filesystem (default: <cache>/loopback/root).")
@click.option("--keys", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="adbkey.pub lines of the keys allowed to connect (default: the .pub of the default ADB key).")
def loopback_serve(port, root, keys):
    """Serve an ADB daemon on 127.0.0.1 until Ctrl-C or SIGTERM."""
    from akd_base.files import default_cache_dir
    from devices.adb_keys import default_key_path
    from devices.adb_protocol import load_public_keys
    from devices.loopback import LoopbackConfig, serve

    keys = keys or Path(f"{default_key_path()}.pub")
    serve(LoopbackConfig(root or default_cache_dir() / "loopback" / "root", load_public_keys(keys), port))


# ---------------------------------------------------------------- teachers and distillation


def torch_options(f):
    """--torch-device and --threads: where torch trains, and on how many CPU threads."""
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Torch CPU threads (default: torch's, one per core); training splits each batch "
                          "into that many shards of 32 or more images, one thread each.")(f)
    f = click.option("--torch-device", default="cpu", show_default=True, help="cpu, cuda, cuda:N, or auto (cuda when present).")(f)
    return f


def _epoch_progress(epochs: int, label: str):
    """A rich progress bar on stderr and the per-epoch callback that advances it."""
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(*Progress.get_default_columns(), "{task.fields[acc]}", console=Console(stderr=True))
    task = progress.add_task(label, total=epochs, acc="")
    return progress, lambda epoch, acc: progress.update(task, completed=epoch, acc=f"val {acc:.4f}")


@cli.group()
def teacher() -> None:
    """Train, list and check teachers."""


@teacher.command("train")
@click.option("--recipe", required=True, help="Built-in recipe (see `teacher list`).")
@data_options
@click.option("--epochs", type=click.IntRange(min=1), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the recipe's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per step (default: the recipe's).")
@augment_option
@click.option("--space", "space_name", default="mnasnet-small", show_default=True,
              help="The space whose input your own images are brought to.")
@click.option("--seed", type=int, default=0, show_default=True)
@torch_options
@json_option
def teacher_train(recipe, data, data_options, epochs, out, lr, batch_size, augment, space_name, seed, torch_device,
                  threads, as_json):
    """Train a recipe teacher on labels, save it to --out and report its test accuracy."""
    from akd_mobile.data import load_dataset
    from akd_mobile.distill import torch_threads
    from akd_mobile.teachers import get_recipe, save_teacher, train_teacher

    get_recipe(recipe)
    dataset = load_dataset(data, seed=seed, options=data_options, space=space_name)
    progress, on_epoch = _epoch_progress(epochs, f"teacher {recipe}")
    with torch_threads(threads), progress:
        model, result = train_teacher(recipe, dataset, epochs, lr, batch_size, seed, torch_device, on_epoch,
                                      augment)
    save_teacher(model, result, dataset, out)
    row = {**result.__dict__, "out": str(out)}
    emit(row, as_json, f"{recipe}: test accuracy {result.test_accuracy:.4f} after {epochs} epochs "
                       f"({result.train_s:.0f} s); saved {out}")


@teacher.command("list")
@json_option
def teacher_list(as_json):
    """List the built-in teacher `default` (and the data set it fits), then the recipes."""
    from akd_mobile.teachers import RECIPES, teacher_info

    info = teacher_info()
    builtin = {"name": "default", "kind": "teacher", "recipe": info["recipe"], "params": info["params"],
               "dataset": info["dataset"], "test_accuracy": info["test_accuracy"],
               "description": f"built-in teacher: recipe {info['recipe']} ({info['params']:,} parameters) "
                              f"trained on {info['dataset']}, test accuracy {info['test_accuracy']:.4f}; "
                              f"teaches {info['dataset']} only"}
    rows = [builtin] + [{"name": r.name, "kind": "recipe", "recipe": r.name, "family": r.family,
                         "description": r.description} for r in RECIPES.values()]
    emit(rows, as_json, "\n".join(f"{r['name']:<12} {r['description']}" for r in rows))


@teacher.command("eval")
@click.argument("spec", default="default")
@data_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--space", "space_name", default="mnasnet-small", show_default=True,
              help="The space whose input your own images are brought to.")
@torch_options
@json_option
def teacher_eval(spec, data, data_options, split, space_name, torch_device, threads, as_json):
    """Top-1 accuracy of teacher SPEC (default, a file, or files joined by ',') on a data split."""
    from akd_mobile.data import load_dataset
    from akd_mobile.distill import torch_device as resolve, torch_threads
    from akd_mobile.teachers import evaluate_teacher, load_teacher

    resolve(torch_device)
    t, dataset = load_teacher(spec), load_dataset(data, options=data_options, space=space_name)
    with torch_threads(threads):
        acc = evaluate_teacher(t, dataset, split, torch_device)
    row = {"teacher": spec, "hash": t.hash, "members": len(t.models), "data": dataset.name, "split": split, "accuracy": acc}
    emit(row, as_json, f"{spec}: {split} accuracy {acc:.4f} on {dataset.name}")


@cli.command("distill")
@click.argument("arch")
@click.option("--teacher", "teacher_spec", default="default", show_default=True,
              help="Teacher: default, a .pt2/TorchScript/checkpoint file, or several joined by ','.")
@data_options
@click.option("--epochs", type=click.IntRange(min=1), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="State dict to write.")
@click.option("--mode", type=click.Choice(["kd", "ce"]), default="kd", show_default=True,
              help="kd: distil from the teacher; ce: labels only.")
@click.option("--schedule", type=click.Choice(["cosine", "step"]), default="cosine", show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True, help="Peak learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=float, default=0.9, show_default=True, help="Weight of the KD term.")
@augment_option
@click.option("--space", "space_name", default="mnasnet-small", show_default=True, help="Search space preset.")
@click.option("--seed", type=int, default=0, show_default=True)
@torch_options
@json_option
def distill(arch, teacher_spec, data, data_options, epochs, out, mode, schedule, lr, batch_size, temperature, alpha,
            augment, space_name, seed, torch_device, threads, as_json):
    """Fully train student ARCH (KD from --teacher, or --mode ce), save its weights, report test accuracy."""
    import torch

    from akd_mobile.data import load_dataset
    from akd_mobile.distill import TrainConfig, torch_device as resolve, torch_threads, train_student
    from akd_mobile.space import get_space
    from akd_mobile.teachers import cached_logits, check_teacher_fits, load_teacher

    resolve(torch_device)
    config = TrainConfig(epochs, batch_size, lr, schedule, temperature=temperature, alpha=alpha, augment=augment)
    dataset = load_dataset(data, seed=seed, options=data_options, space=space_name)
    student = get_space(space_name, dataset.input_shape, dataset.num_classes).decode(arch)
    progress, on_epoch = _epoch_progress(epochs, f"student {student.key}")
    with torch_threads(threads):
        logits = None
        if mode == "kd":
            t = load_teacher(teacher_spec)
            check_teacher_fits(t, dataset, torch_device)
            logits = cached_logits(t, dataset, device=torch_device)
        with progress:
            model, result = train_student(student, dataset, logits, config, mode, seed, torch_device, on_epoch)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    row = {**result.__dict__, "arch": student.canonical, "key": student.key, "teacher": teacher_spec if mode == "kd" else None,
           "data": dataset.name, "out": str(out)}
    emit(row, as_json, f"{student.key}: test accuracy {result.test_accuracy:.4f} after {epochs} epochs ({mode}); saved {out}")


@cli.command()
@click.argument("run_id", type=int)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the trained weights, the .tflite/.pte models and manifest.json.")
@click.option("--top", type=int, default=FinalizeConfig.top, show_default=True, help="The run's best candidates to finalize.")
@click.option("--arch", "archs", multiple=True, help="An architecture of your own to train and measure alike (repeatable).")
@click.option("--epochs", type=int, default=FinalizeConfig.epochs, show_default=True,
              help="Full training epochs (cosine schedule).")
@click.option("--mode", type=click.Choice(["kd", "ce"]), default=None,
              help="Train with the teacher (kd) or on labels (ce); default: as the run searched. "
                   "A ce run finalized with kd is the paper's NAS+KD baseline.")
@click.option("--teacher", "teacher_spec", default=None, help="Teacher of kd finals (default: the run's).")
@augment_option
@torch_options
@db_option
@json_option
def finalize(run_id, out, top, archs, epochs, mode, teacher_spec, augment, torch_device, threads, db_path, as_json):
    """Fully train RUN_ID's best candidates (and --arch ones), export both formats, measure on the run's device."""
    from akd_mobile.finals import finalize as run_finalize
    from akd_mobile.report import finalize_progress, format_finals
    from akd_mobile.signals import signal_name, signal_number, signals_as_interrupts
    from latency_db import open_db

    config = FinalizeConfig(out=out, top=top, archs=tuple(archs), epochs=epochs, mode=mode, teacher=teacher_spec,
                            torch_device=torch_device, threads=threads, augment=augment)
    try:
        with signals_as_interrupts(), finalize_progress(quiet=as_json) as on_progress:
            finals = run_finalize(run_id, config, open_db(db_path), on_progress)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"finalize of run {run_id} stopped by {signal_name(exc)}; the finals trained so far are "
                          "stored: the same command continues", signal_number(exc)) from None
    rows = [f.to_dict() for f in finals]
    emit(rows, as_json, format_finals(rows) + f"\nfiles and manifest.json in {out}")


# ---------------------------------------------------------------- proxy fidelity studies


@cli.group()
def proxy() -> None:
    """Check the proxy: does its score order students like their fully trained accuracy?"""


@proxy.command("study")
@click.option("--teacher", "teachers", multiple=True, default=("default",), show_default=True,
              help="Teacher spec; repeat for a second teacher (teacher dependence). The first is the proxy's.")
@data_options
@click.option("--space", "space_name", default="mnasnet-small", show_default=True, help="Search space preset.")
@click.option("--students", type=int, default=24, show_default=True, help="Students sampled.")
@click.option("--bins", type=int, default=4, show_default=True, help="Cost bins (quantiles of MACs).")
@click.option("--budgets", default="40,80,160,320", show_default=True, help="Proxy step budgets, increasing.")
@click.option("--seeds", type=int, default=2, show_default=True, help="Proxy seeds per budget and mode.")
@click.option("--epochs", type=int, default=3, show_default=True, help="Epochs E of a full training.")
@click.option("--ceiling-students", type=int, default=None, help="Students with a second full-KD seed (default: a third).")
@click.option("--convergence-students", type=int, default=4, show_default=True, help="Students also trained for 2E epochs.")
@click.option("--variant", "variants", multiple=True, help="A changed proxy setting, e.g. temperature=4 (repeatable).")
@click.option("--variant-steps", type=int, default=None, help="Budget the variants run at (default: the second budget).")
@click.option("--proxy-lr", type=float, default=None, help="Proxy peak learning rate (default: the search's).")
@click.option("--proxy-temperature", type=float, default=None, help="Proxy KD temperature (default: the search's).")
@click.option("--proxy-alpha", type=float, default=None, help="Proxy KD weight (default: the search's).")
@click.option("--proxy-batch-size", type=int, default=None, help="Proxy images per step (default: the search's).")
@click.option("--batch-size", type=int, default=None, help="Full training images per step (default: distill's).")
@augment_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the students' sampling and the data split.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads per training (default: the search's two; proxy scores depend on it).")
@click.option("--torch-device", default="cpu", show_default=True, help="cpu, cuda, cuda:N, or auto (cuda when present).")
@db_option
@json_option
def proxy_study(teachers, data, data_options, space_name, students, bins, budgets, seeds, epochs, ceiling_students,
                convergence_students, variants, variant_steps, proxy_lr, proxy_temperature, proxy_alpha,
                proxy_batch_size, batch_size, augment, seed, threads, torch_device, db_path, as_json):
    """Run (or continue: the same command resumes) a proxy fidelity study, then print its report."""
    from akd_mobile.fidelity import analyze, format_report
    from akd_mobile.study import StudyStore, run_study, study_config
    from latency_db import open_db

    config = study_config(
        teachers=teachers, data=data, data_options=data_options, space=space_name, students=students, bins=bins, budgets=budgets,
        seeds=seeds, epochs=epochs, ceiling_students=ceiling_students, convergence_students=convergence_students,
        variants=variants, variant_steps=variant_steps, proxy_lr=proxy_lr, proxy_temperature=proxy_temperature,
        proxy_alpha=proxy_alpha, proxy_batch_size=proxy_batch_size, batch_size=batch_size, augment=augment, seed=seed,
        threads=threads, torch_device=torch_device,
    )
    db = open_db(db_path)
    with _study_progress(quiet=as_json) as on_progress:
        study_id = run_study(config, db, on_progress)
    store = StudyStore(db)
    report = analyze(store.get(study_id), store.trainings(study_id))
    emit(report, as_json, format_report(report))


def _study_progress(quiet: bool):
    """A context giving the progress callback of a study: a rich bar on stderr, or nothing."""
    import contextlib

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return contextlib.nullcontext(lambda p: None)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[last]}"), console=Console(stderr=True))
    task = progress.add_task("proxy study", total=None, last="")

    def update(p) -> None:
        progress.start()  # at the first report, after every check: an error prints alone
        last = ""
        if p.job is not None:
            last = f"{p.job.kind} {p.job.mode} {p.job.budget} seed {p.job.seed}: {p.accuracy:.4f} in {p.seconds:.0f} s"
        progress.update(task, description=f"proxy study {p.study_id}", total=p.total, completed=p.done, last=last)

    @contextlib.contextmanager
    def running():
        try:
            yield update
        finally:
            progress.stop()

    return running()


@proxy.command("show")
@click.argument("study_id", type=int)
@click.option("--resamples", type=click.IntRange(min=0), default=2000, show_default=True, help="Bootstrap resamples.")
@db_option
@json_option
def proxy_show(study_id, resamples, db_path, as_json):
    """A study's fidelity report: rank correlations with 95% bootstrap intervals, regret, cost."""
    from akd_mobile.fidelity import analyze, format_report
    from akd_mobile.study import StudyStore
    from latency_db import open_db

    store = StudyStore(open_db(db_path))
    report = analyze(store.get(study_id), store.trainings(study_id), resamples=resamples)
    emit(report, as_json, format_report(report))


@proxy.command("list")
@db_option
@json_option
def proxy_list(db_path, as_json):
    """Every stored study: data, teachers, students and trainings done."""
    from akd_mobile.study import StudyStore, study_list
    from latency_db import open_db

    rows = study_list(StudyStore(open_db(db_path)))
    emit(rows, as_json, "\n".join(
        f"{r['id']:>4}  {r['data']:<16} {r['students']:>3} students  {r['trainings']:>5} trainings  "
        f"teachers {', '.join(r['teachers'])}" for r in rows) or "no proxy studies in this database")


@proxy.command("export")
@click.argument("study_id", type=int)
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV file to write: one row per training, with its student.")
@db_option
def proxy_export(study_id, csv_file, db_path):
    """Write a study's trainings as CSV."""
    from akd_mobile.study import StudyStore, write_csv
    from latency_db import open_db

    store = StudyStore(open_db(db_path))
    count = write_csv(store, study_id, csv_file)
    click.echo(f"wrote {count} trainings of study {study_id} to {csv_file}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="akd-mobile")


if __name__ == "__main__":
    main()
