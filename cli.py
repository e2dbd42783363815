"""The `akd-mobile` command line: each command a few lines that call library functions."""

from __future__ import annotations

import json
import sys
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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="akd-mobile")


if __name__ == "__main__":
    main()
