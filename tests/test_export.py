"""Export to .tflite and .pte: agreement with PyTorch, NHWC input, the cache, and errors."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from akd_mobile import export as export_mod
from akd_mobile.builder import build_student
from akd_base.errors import ExportError
from akd_mobile.export import DEFAULT_ATOL, converter_version, export_model, file_sha256, save_as
from akd_base.files import default_cache_dir
from akd_mobile.space import get_space

SMALL = get_space("mnasnet-small").sample(random.Random(1))


@pytest.fixture(scope="module")
def small_exports() -> dict[str, export_mod.ExportResult]:
    """The small arch in both formats, in the session's default cache (shared with other test files)."""
    return {fmt: export_model(SMALL, fmt) for fmt in ("tflite", "pte")}


@pytest.mark.parametrize("fmt", ["tflite", "pte"])
def test_export_agrees_with_pytorch(small_exports, fmt):
    r = small_exports[fmt]
    assert r.path.suffix == f".{fmt}" and r.path.parent == default_cache_dir() / "exports"
    assert r.size_bytes == r.path.stat().st_size > 10_000
    assert r.sha256 == file_sha256(r.path)
    assert 0.0 <= r.max_abs_diff <= DEFAULT_ATOL
    assert r.converter_version == converter_version(fmt) and r.converter_version.startswith(
        {"tflite": "litert-torch ", "pte": "executorch "}[fmt]
    )
    assert SMALL.key in r.path.name


def test_tflite_input_is_channels_last_with_no_transpose(small_exports):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(small_exports["tflite"].path))
    (inp,) = interp.get_input_details()
    c, h, w = SMALL.input_shape
    assert list(inp["shape"]) == [1, h, w, c]
    # _get_ops_details is the interpreter's only op listing; the input must feed no TRANSPOSE.
    consumers = [op["op_name"] for op in interp._get_ops_details() if inp["index"] in list(op["inputs"])]
    assert consumers and "TRANSPOSE" not in consumers


def test_second_export_is_a_cache_hit(small_exports):
    for fmt, first in small_exports.items():
        start = time.perf_counter()
        again = export_model(SMALL, fmt)
        assert time.perf_counter() - start < 1.0
        assert again.cached
        assert (again.path, again.sha256, again.max_abs_diff) == (first.path, first.sha256, first.max_abs_diff)
        if first.max_abs_diff > 0:  # a cached file is held to the caller's tolerance too
            with pytest.raises(ExportError, match="differs from PyTorch"):
                export_model(SMALL, fmt, atol=first.max_abs_diff / 2)
    other = get_space("mnasnet-small").sample(random.Random(2))
    assert export_mod._cached(*_cache_paths(other, "tflite")) is None


def test_truncated_cache_file_is_not_a_hit(small_exports, tmp_path):
    path, sidecar = _cache_paths(SMALL, "tflite")
    assert export_mod._cached(path, sidecar) is not None
    copy, copy_sidecar = tmp_path / path.name, tmp_path / sidecar.name
    copy.write_bytes(path.read_bytes()[:1000])
    copy_sidecar.write_text(sidecar.read_text())
    assert export_mod._cached(copy, copy_sidecar) is None
    copy_sidecar.write_text("{")
    assert export_mod._cached(path, copy_sidecar) is None


def _cache_paths(arch, fmt):
    stem = f"{arch.key}-init-{export_mod._slug(converter_version(fmt))}"
    folder = default_cache_dir() / "exports"
    return folder / f"{stem}.{fmt}", folder / f"{stem}.json"


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AKD_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AKD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "akd-mobile"


def test_disagreement_is_an_error_and_is_not_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(export_mod, "_to_tflite", lambda model, x, path: path.write_bytes(b"model"))
    monkeypatch.setattr(export_mod, "_run_tflite", lambda path, x: np.full((1, 10), 5.0, dtype=np.float32))
    with pytest.raises(ExportError, match=r"differs from PyTorch by .* \(> atol 0.001\)"):
        export_model(SMALL, "tflite", cache_dir=tmp_path)
    assert not [p for p in (tmp_path / "exports").iterdir()]


def test_converter_failure_is_one_line(monkeypatch, tmp_path):
    def boom(model, x, path):
        raise RuntimeError("lowering failed\nlong internal trace")

    monkeypatch.setattr(export_mod, "_to_pte", boom)
    with pytest.raises(ExportError) as err:
        export_model(SMALL, "pte", cache_dir=tmp_path)
    assert str(err.value) == f"pte conversion of {SMALL.key} failed: RuntimeError: lowering failed"
    assert not list((tmp_path / "exports").iterdir())


def test_bad_format_and_bad_weights(tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        export_model(SMALL, "onnx", cache_dir=tmp_path)
    with pytest.raises(ExportError, match="does not exist"):
        export_model(SMALL, "tflite", weights=tmp_path / "none.pt", cache_dir=tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot read weights"):
        export_model(SMALL, "tflite", weights=tmp_path / "junk.pt", cache_dir=tmp_path)
    other = get_space("mnasnet-small").sample(random.Random(3))
    torch.save(build_student(other, seed=0).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ExportError, match="do not fit this architecture"):
        export_model(SMALL, "tflite", weights=tmp_path / "other.pt", cache_dir=tmp_path)


def test_save_as_checks_suffix_and_folder(small_exports, tmp_path):
    r = small_exports["tflite"]
    assert save_as(r, tmp_path / "m.tflite").read_bytes() == r.path.read_bytes()
    with pytest.raises(ExportError, match="must end in .tflite"):
        save_as(r, tmp_path / "m.pte")
    with pytest.raises(ExportError, match="does not exist"):
        save_as(r, tmp_path / "no" / "m.tflite")


@pytest.mark.slow
def test_trained_weights_are_exported_and_keyed(tmp_path):
    model = build_student(SMALL, seed=5)
    with torch.no_grad():
        model.classifier.bias.add_(3.0)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    r = export_model(SMALL, "tflite", weights=tmp_path / "w.pt", cache_dir=tmp_path)
    assert not r.cached and r.max_abs_diff <= DEFAULT_ATOL
    assert file_sha256(tmp_path / "w.pt")[:16] in r.path.name
    assert export_model(SMALL, "tflite", weights=tmp_path / "w.pt", cache_dir=tmp_path).cached


@pytest.mark.slow
@pytest.mark.parametrize(
    "space, seed, fmt",
    [("mnasnet-small", 7, "tflite"), ("mnasnet-small", 8, "pte"), ("mnasnet-small", 9, "tflite"),
     ("mnasnet-imagenet", 1, "tflite"), ("mnasnet-imagenet", 1, "pte")],
)
def test_more_archs_agree(space, seed, fmt, tmp_path: Path):
    arch = get_space(space).sample(random.Random(seed))
    r = export_model(arch, fmt, cache_dir=tmp_path)
    assert not r.cached and r.max_abs_diff <= DEFAULT_ATOL and r.size_bytes > 0
