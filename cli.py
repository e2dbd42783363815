"""The `akd-mobile` command line: each command a few lines that call library functions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from akd_mobile import __version__
from akd_mobile.errors import AkdError


class AkdGroup(click.Group):
    """A click group whose user errors print one line and exit 2, with no traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.ClickException as exc:
            _fail(exc.format_message())
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


@cli.command()
@click.option("--device", default="local", show_default=True, help="Device profile name or .toml path.")
@click.option("--teacher", default="default", show_default=True, help="Teacher: default, a .pt2/TorchScript/checkpoint file, or several joined by ','.")
@click.option("--data", default="fashion-mnist", show_default=True, help="Dataset name or path.")
@click.option("--space", "space_name", default="mnasnet-small", show_default=True, help="Search space preset.")
@click.option("--target-ms", type=float, default=None, help="Latency target T in ms (default: the device profile's).")
@click.option("--constraint", default="soft", show_default=True, help="soft (alpha=beta=-0.07) or hard (alpha=0, beta=-1).")
@click.option("--reward", default="kd", show_default=True, help="kd (AKD) or ce (conventional NAS, no teacher).")
@click.option("--strategy", default="rl", show_default=True, help="rl, random or evolution.")
@click.option("--budget", type=int, default=16, show_default=True, help="Candidates to evaluate.")
@click.option("--batch", type=int, default=4, show_default=True, help="Candidates per controller update.")
@click.option("--format", "fmt", default="tflite", show_default=True, help="Artifact measured: tflite or pte.")
@click.option("--threads", type=int, default=None, help="Inference threads (default: the profile's).")
@click.option("--proxy-steps", type=int, default=None, help="KD proxy training steps per candidate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", type=int, default=None, help="Continue run RUN_ID from its last checkpoint.")
@db_option
@json_option
def search(device, teacher, data, space_name, target_ms, constraint, reward, strategy, budget, batch, fmt,
           threads, proxy_steps, seed, resume, db_path, as_json):
    """Search for the student the teacher distils best into, under the latency target."""
    from akd_mobile.report import format_summary, search_progress
    from akd_mobile.search import SearchConfig, run_search

    config = SearchConfig(
        device=device, teacher=teacher, data=data, space=space_name, target_ms=target_ms, constraint=constraint,
        reward=reward, strategy=strategy, budget=budget, batch=batch, fmt=fmt, threads=threads,
        proxy_steps=proxy_steps, seed=seed,
    )
    config.validate()
    with search_progress(budget, quiet=as_json) as on_progress:
        summary = run_search(config, db_path, resume, on_progress)
    emit(summary.to_dict(), as_json, format_summary(summary))


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

    rows = run_list(open_db(db_path))
    emit(rows, as_json, format_run_list(rows))


@runs.command("show")
@click.argument("run_id", type=int)
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Candidates to list.")
@db_option
@json_option
def runs_show(run_id, top, db_path, as_json):
    """A run's configuration, its top candidates and the best one under the target."""
    from akd_mobile.report import format_run, run_details
    from latency_db import open_db

    details = run_details(open_db(db_path), run_id, top)
    emit(details, as_json, format_run(details))


# ---------------------------------------------------------------- latency


def db_option(f):
    """--db PATH: the latency database (default: $AKD_DB or the user's data folder)."""
    return click.option(
        "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Latency database file (default: $AKD_DB, else the user's data folder).",
    )(f)


def _stats_line(r: dict[str, Any]) -> str:
    return (f"median {r['median_ms']:.3f} ms  mean {r['mean_ms']:.3f}  std {r['std_ms']:.3f}  "
            f"p90 {r['p90_ms']:.3f}  min {r['min_ms']:.3f}  ({r['count']} runs)")


@cli.command("bench")
@click.argument("model_or_arch")
@click.option("--device", "device_name", default="local", show_default=True, help="Device profile name or .toml path.")
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), default=None,
              help="Export format for an ARCH (default tflite); a file's own suffix otherwise.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True)
@space_options
@db_option
@json_option
def bench(model_or_arch, device_name, fmt, threads, warmup, runs, space_name, input_shape, classes, db_path, as_json):
    """Measure a .tflite/.pte file or an architecture on a device, store and print it."""
    from akd_mobile.latency import measure_arch, measure_file
    from devices.profiles import open_device
    from latency_db import open_db

    device = open_device(device_name)
    is_file = model_or_arch.endswith((".tflite", ".pte")) or Path(model_or_arch).is_file()
    if is_file and fmt is not None and not model_or_arch.endswith(f".{fmt}"):
        raise click.UsageError(f"--format {fmt} does not match the file {model_or_arch}")
    arch = None if is_file else _space(space_name, input_shape, classes).decode(model_or_arch)
    with open_db(db_path) as db:
        if arch is None:
            out = measure_file(Path(model_or_arch), device, db, threads, warmup, runs)
        else:
            out = measure_arch(arch, device, db, fmt or "tflite", threads, warmup, runs)
    d = {**out.to_dict(), "device": device.name}
    emit(d, as_json, f"{out.arch_key or Path(model_or_arch).name}  {out.fmt}  {device.name}  "
                     f"threads {threads}  {_stats_line(d)}")


@cli.command("export")
@click.argument("arch")
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the model.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A state dict (torch.save); default: initialised weights.")
@space_options
@json_option
def export(arch, fmt, out, weights, space_name, input_shape, classes, as_json):
    """Export ARCH to .tflite (litert-torch) or .pte (ExecuTorch + XNNPACK)."""
    from akd_mobile.export import export_model, save_as

    spec = _space(space_name, input_shape, classes).decode(arch)
    result = export_model(spec, fmt, weights=weights)
    save_as(result, out)
    d = {**result.to_dict(), "out": str(out), "arch_key": spec.key}
    emit(d, as_json, f"{out}  {result.size_bytes:,} bytes  max abs diff {result.max_abs_diff:.2g}  "
                     f"{'cached' if result.cached else f'{result.seconds:.1f} s'}  ({result.converter_version})")


@cli.group()
def latency() -> None:
    """Query, summarise, export and import the latency database."""


@latency.command("query")
@click.option("--device", default=None, help="Device profile name or fingerprint.")
@click.option("--format", "fmt", type=click.Choice(["tflite", "pte"]), default=None)
@click.option("--min-ms", type=float, default=None, help="Lowest median, inclusive.")
@click.option("--max-ms", type=float, default=None, help="Highest median, inclusive.")
@click.option("--limit", type=int, default=None, help="At most this many rows.")
@db_option
@json_option
def latency_query(device, fmt, min_ms, max_ms, limit, db_path, as_json):
    """Stored measurements, fastest first."""
    from latency_db import open_db
    from latency_db.store import check_query

    check_query(fmt, min_ms, max_ms, limit)
    with open_db(db_path) as db:
        rows = [m.to_dict() for m in db.query(device, fmt, min_ms, max_ms, limit)]
    text = "\n".join(
        f"{r['id']:>6}  {r['device_name']:<10} {r['fmt']:<6} t{r['threads']}  {r['arch_key'] or '-':<12}  "
        f"{r['median_ms']:9.3f} ms  p90 {r['p90_ms'] or float('nan'):9.3f}  {r['measured_at'][:19]}"
        for r in rows
    )
    emit(rows, as_json, text or "no measurements match")


@latency.command("stats")
@db_option
@json_option
def latency_stats(db_path, as_json):
    """Counts of measurements, devices and architectures, and ranges per device and format."""
    from latency_db import open_db

    with open_db(db_path) as db:
        s = db.stats().to_dict()
    lines = [f"{s['path']} (schema v{s['schema_version']}): {s['measurements']} measurements, "
             f"{s['archs']} archs, {s['devices']} devices, {s['artifacts']} artifacts"]
    lines += [f"  {g['device']:<10} {g['format']:<6} {g['n']:>6}  {g['min_ms']:.3f} .. {g['max_ms']:.3f} ms"
              for g in s["by_device_format"]]
    emit(s, as_json, "\n".join(lines))


@latency.command("export")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@db_option
def latency_export(csv_file, json_file, db_path):
    """Write every measurement to a CSV or JSON file (give exactly one)."""
    from latency_db import open_db
    from latency_db.transfer import export_measurements

    if (csv_file is None) == (json_file is None):
        raise click.UsageError("give exactly one of --csv FILE or --json FILE")
    with open_db(db_path) as db:
        n = export_measurements(db, csv_file or json_file, as_csv=csv_file is not None)
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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="akd-mobile")


if __name__ == "__main__":
    main()
