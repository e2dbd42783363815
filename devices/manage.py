"""What the `devices` commands do: list profiles and whether each answers, set up tools, check.

`devices check` pushes a tiny model (one 16->4 linear layer with a ReLU, exported once per
format into `<cache>/check/`), runs it with the profile's tool, parses and prints the result:
the whole phone path in about a second of device time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from akd_base.errors import AkdError, DeviceError, ExportError

log = logging.getLogger(__name__)

CHECK_FORMATS = ("tflite", "pte")
CHECK_COUNTS = (1, 2, 10)  # threads, warm-up, runs for backends without profile defaults


def list_devices() -> list[dict[str, Any]]:
    """Every shipped profile with its backend and whether the device answers now (and why not)."""
    from devices.profiles import list_profiles, open_device

    rows = []
    for profile in list_profiles():
        row: dict[str, Any] = {"name": profile.name, "backend": profile.backend, "description": profile.description}
        try:
            device = open_device(profile)
            status = getattr(device, "status", None)
            if status is not None:
                row["answers"], row["reason"] = status()
            else:
                device.info()
                row["answers"], row["reason"] = True, ""
        except AkdError as exc:
            row["answers"], row["reason"] = False, str(exc)
        rows.append(row)
    return rows


def setup_device(name: str) -> list[dict[str, Any]]:
    """Push the benchmark tools of profile `name` to its device (see `AdbDevice.setup`).

    Raises:
        DeviceError: a profile whose backend has no tools to set up, or a device failure.
    """
    from devices.profiles import open_device

    device = open_device(name)
    setup = getattr(device, "setup", None)
    if setup is None:
        raise DeviceError(f"device {device.name} runs models in-process: it has no tools to set up")
    return setup()


def check_device(name: str, fmt: str = "tflite") -> dict[str, Any]:
    """Push the tiny check model to device `name`, run, parse; the result and how it ran.

    Raises:
        DeviceError: the device fails anywhere on the path.
        ExportError: the check model cannot be exported.
    """
    from devices.profiles import open_device

    device = open_device(name)
    model = check_model(fmt)
    settings = getattr(device, "settings", None)
    threads, warmup, runs = (settings.threads, settings.warmup, settings.runs) if settings else CHECK_COUNTS
    result = device.measure(model, threads, warmup, runs)
    conditions = getattr(device, "last_conditions", None)
    return {
        "device": device.name,
        "model": str(model),
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "latency": result.to_dict(),
        "conditions": conditions.to_dict() if conditions is not None else {},
    }


def check_model(fmt: str, cache_dir: Path | None = None) -> Path:
    """The tiny check model in `fmt`, exported on first use.

    Raises:
        ExportError: an unknown format or a failing converter.
    """
    from akd_base.files import default_cache_dir

    if fmt not in CHECK_FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(CHECK_FORMATS)}")
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
