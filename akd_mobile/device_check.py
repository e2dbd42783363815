"""`devices check`: push a tiny model (one 16->4 linear layer with a ReLU, exported once per
format into `<cache>/check/`) to a device, run it with the profile's tool and measurement
settings, and parse the result: the whole phone path in about a second of device time.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from akd_base.errors import ExportError
from akd_base.formats import FORMATS

log = logging.getLogger(__name__)


def check_device(name: str, fmt: str = "tflite") -> dict[str, Any]:
    """Measure the tiny check model on device `name` with its profile's threads, warm-up and
    runs (no minimum time: a check, not a measurement to keep); the result and how it ran.

    Raises:
        DeviceError: a bad profile, or the device fails anywhere on the path.
        ExportError: the check model cannot be exported.
    """
    from akd_mobile.latency import LatencyService
    from devices.profiles import load_profile, open_device

    profile = load_profile(name)
    settings = dataclasses.replace(profile.measure.with_options(fmt=fmt), min_time_s=0.0)
    service = LatencyService(open_device(profile), None, settings)
    new = service.measure_file(check_model(fmt))
    return {
        "device": profile.name,
        "model": str(new.outcome.artifact),
        "threads": settings.threads,
        "warmup": settings.warmup,
        "runs": settings.runs,
        "latency": new.outcome.result.to_dict(),
        "conditions": new.conditions,
    }


def check_model(fmt: str, cache_dir: Path | None = None) -> Path:
    """The tiny check model in `fmt`, exported on first use.

    Raises:
        ExportError: an unknown format or a failing converter.
    """
    from akd_base.files import default_cache_dir

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    folder = (cache_dir or default_cache_dir()) / "check"
    path = folder / f"tiny-linear.{fmt}"
    if path.is_file() and path.stat().st_size > 0:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"tiny-linear.partial.{fmt}"
    from akd_mobile.export import quiet_converters  # litert-torch prints progress to stdout

    try:
        with quiet_converters():
            _export_check_model(fmt, partial)
    except Exception as exc:  # converters raise many types; the user needs one line
        partial.unlink(missing_ok=True)
        raise ExportError(f"cannot export the check model to .{fmt}: {' '.join(str(exc).split())[:300]}") from exc
    partial.replace(path)
    log.info("exported the check model %s", path)
    return path


def _export_check_model(fmt: str, out: Path) -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.ReLU()).eval()
    example = (torch.randn(1, 16),)
    if fmt == "tflite":
        import litert_torch

        litert_torch.convert(model, example).export(str(out))
        return
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model, example)
    out.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
