"""Export a student to the two mobile formats, checked against PyTorch and cached on disk.

- `.tflite` through litert-torch. The model is wrapped with `litert_torch.to_channel_last_io`
  so its input is NHWC: the layout pass then folds the NCHW transposes into the convolutions
  and the phone runs none at the input.
- `.pte` through ExecuTorch: `torch.export`, then `to_edge_transform_and_lower` with the
  XNNPACK partitioner, then `to_executorch`. Its input stays NCHW, ExecuTorch's convention.

Every fresh export is run once in its own runtime (ai-edge-litert, ExecuTorch) on a fixed
input and compared with the PyTorch module; a larger difference than `atol` is an
ExportError. The file is then cached under `<cache>/exports/` by (arch key, format,
converter version, weights hash), with a JSON sidecar; a second export of the same thing is
a file lookup. The cache folder is `$AKD_CACHE_DIR`, else `$XDG_CACHE_HOME/akd-mobile`
(default `~/.cache/akd-mobile`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from akd_base.errors import ExportError
from akd_base.files import default_cache_dir, file_sha256
from akd_base.formats import FORMATS
from akd_mobile.space import ArchSpec

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-3
_CONVERTERS = {"tflite": "litert-torch", "pte": "executorch"}


@dataclass(frozen=True)
class ExportResult:
    """One exported model file.

    Attributes:
        path: the model file (in the export cache).
        fmt: `tflite` or `pte`.
        size_bytes: file size.
        converter_version: converter and torch versions that produced it.
        max_abs_diff: largest absolute difference between the runtime's and PyTorch's
            outputs on the fixed check input.
        seconds: wall time of this call (conversion and check, or the cache lookup).
        cached: True when the file came from the cache.
        sha256: hex digest of the file.
    """

    path: Path
    fmt: str
    size_bytes: int
    converter_version: str
    max_abs_diff: float
    seconds: float
    cached: bool
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def converter_version(fmt: str) -> str:
    """Versions of the converter of `fmt` and of torch, e.g. `litert-torch 0.10.0, torch 2.13.0`."""
    _check_format(fmt)
    return f"{_CONVERTERS[fmt]} {_version(_CONVERTERS[fmt])}, torch {_version('torch')}"


def export_model(
    arch: ArchSpec,
    fmt: str,
    weights: Path | None = None,
    cache_dir: Path | None = None,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Export `arch` to `fmt`, or return the cached file of an identical earlier export.

    Args:
        arch: the architecture to export.
        fmt: `tflite` or `pte`.
        weights: a state dict saved with `torch.save`; None exports the seed-0 initial
            weights with batch-norm statistics of a fixed random batch (latency does not
            depend on the values; the statistics keep the PyTorch check meaningful).
        cache_dir: cache root (default `default_cache_dir()`); files go to its `exports/`.
        atol: largest accepted absolute difference from PyTorch on the check input.

    Returns:
        The exported file and how it was obtained.

    Raises:
        ExportError: unknown format, unreadable or mismatched weights, a failed
            conversion, or outputs that differ from PyTorch by more than `atol`.
    """
    _check_format(fmt)
    start = time.perf_counter()
    version = converter_version(fmt)
    weights_tag = file_sha256(_existing(weights))[:16] if weights is not None else "init"
    folder = (cache_dir or default_cache_dir()) / "exports"
    stem = f"{arch.key}-{weights_tag}-{_slug(version)}"
    path, sidecar = folder / f"{stem}.{fmt}", folder / f"{stem}.json"

    hit = _cached(path, sidecar)
    if hit is not None:
        log.debug("export cache hit %s", path)
        _check_diff(hit["max_abs_diff"], atol, fmt, arch)
        return ExportResult(
            path=path,
            fmt=fmt,
            size_bytes=path.stat().st_size,
            converter_version=version,
            max_abs_diff=hit["max_abs_diff"],
            seconds=time.perf_counter() - start,
            cached=True,
            sha256=hit["sha256"],
        )

    import torch

    from akd_mobile.builder import build_student, example_input

    model = build_student(arch, seed=0)
    if weights is not None:
        _load_weights(model, weights)
    else:
        _calibrate_batchnorm(model, example_input(arch, batch=8, seed=1))
    model.eval()
    x = example_input(arch, seed=0)
    with torch.no_grad():
        expected = model(x).numpy()

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the export cache {folder}: {exc}; set AKD_CACHE_DIR") from None
    with _temp_file(folder, f".{fmt}") as tmp:
        convert, run = (_to_tflite, _run_tflite) if fmt == "tflite" else (_to_pte, _run_pte)
        try:
            with quiet_converters():
                convert(model, x, tmp)
                actual = run(tmp, x)
        except Exception as exc:  # converters and runtimes raise anything; the user needs one line
            raise ExportError(f"{fmt} conversion of {arch.key} failed: {_first_line(exc)}") from exc
        diff = float(abs(actual - expected).max())
        _check_diff(diff, atol, fmt, arch)
        sha = file_sha256(tmp)
        os.replace(tmp, path)
    seconds = time.perf_counter() - start
    meta = {"arch": arch.to_json(), "fmt": fmt, "converter_version": version, "weights": weights_tag,
            "max_abs_diff": diff, "sha256": sha, "size_bytes": path.stat().st_size, "export_seconds": seconds}
    with _temp_file(folder, ".json") as tmp_meta:
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_meta, sidecar)
    log.info("exported %s to %s in %.1f s (max abs diff %.2g)", arch.key, path, seconds, diff)
    return ExportResult(path, fmt, path.stat().st_size, version, diff, seconds, False, sha)


def check_out_path(out: Path, fmt: str) -> Path:
    """`out` as a Path if it ends in `.fmt` and its folder exists, else ExportError."""
    out = Path(out)
    if out.suffix != f".{fmt}":
        raise ExportError(f"--out {out} must end in .{fmt} for the {fmt} format")
    if not out.parent.is_dir():
        raise ExportError(f"folder {out.parent} does not exist; create it first")
    return out


def save_as(result: ExportResult, out: Path) -> Path:
    """Copy an exported file to `out` (see `check_out_path`); returns `out`."""
    out = check_out_path(out, result.fmt)
    shutil.copyfile(result.path, out)
    return out


def _to_tflite(model: Any, x: Any, path: Path) -> None:
    import litert_torch

    nhwc = litert_torch.to_channel_last_io(model, args=[0]).eval()
    edge = litert_torch.convert(nhwc, (x.permute(0, 2, 3, 1).contiguous(),))
    edge.export(str(path))


def _to_pte(model: Any, x: Any, path: Path) -> None:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model, (x,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path.write_bytes(lowered.to_executorch().buffer)


def _run_tflite(path: Path, x: Any) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    interp.set_tensor(inp["index"], x.permute(0, 2, 3, 1).contiguous().numpy())
    interp.invoke()
    return interp.get_tensor(out["index"])


def _run_pte(path: Path, x: Any) -> Any:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    return method.execute([x])[0].numpy()


def _check_diff(diff: float, atol: float, fmt: str, arch: ArchSpec) -> None:
    if not diff <= atol:
        raise ExportError(
            f"{fmt} export of {arch.key} differs from PyTorch by {diff:.3g} (> atol {atol:g}); "
            "report this architecture, or pass a larger tolerance"
        )


def _calibrate_batchnorm(model: Any, batch: Any) -> None:
    """Set every batch norm's running statistics to those of `batch`.

    With PyTorch's initial weights and unit running variance, activations shrink layer
    after layer until the logits are the classifier bias alone, and the PyTorch check would
    compare nothing. Statistics from one random batch keep activations near unit scale.
    """
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _load_weights(model: Any, weights: Path) -> None:
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike mean "not a state dict file"
        raise ExportError(f"cannot read weights {weights}: {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise ExportError(f"weights {weights} hold a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"weights {weights} do not fit this architecture: {_first_line(exc)}") from None


def _cached(path: Path, sidecar: Path) -> dict[str, Any] | None:
    """The sidecar of a complete cached export (file present, of the recorded size), or None."""
    try:
        meta = json.loads(sidecar.read_text())
        size = path.stat().st_size
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or not {"max_abs_diff", "sha256", "size_bytes"} <= meta.keys():
        return None
    return meta if meta["size_bytes"] == size else None


@contextlib.contextmanager
def _temp_file(folder: Path, suffix: str) -> Iterator[Path]:
    """A fresh file in `folder`, removed on exit unless renamed away."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_converters() -> Iterator[None]:
    """Keep the converters' and runtimes' own output off the terminal: litert-torch's progress,
    warnings, Python prints and logs, and what their C++ libraries (TensorFlow, XNNPACK,
    ExecuTorch, absl) write to file descriptors 1 and 2. When this module's logger is enabled
    for DEBUG (the CLI's `--verbose`) all of it goes to stderr instead; never to stdout, which
    holds a command's result."""
    verbose = log.isEnabledFor(logging.DEBUG)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    target = os.dup(2) if verbose else os.open(os.devnull, os.O_WRONLY)
    saved_env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    try:
        os.dup2(target, 1)
        if verbose:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        else:
            os.dup2(target, 2)
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
            sink = io.StringIO()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers, before fds 1 and 2 point back
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        os.close(target)
        if saved_env is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved_env


def _existing(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"weights file {path} does not exist")
    return path


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        raise ExportError(f"{dist} is not installed; install akd-mobile's dependencies") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
