"""Data sets: names and formats, the deterministic split, normalization and one-line errors."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from akd_mobile.data import FASHION_MNIST_DIR, DataOptions, load_dataset, read_idx
from akd_base.errors import DataError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_are_28px_normalized_and_split_three_ways(digits):
    assert digits.input_shape == (1, 28, 28)
    assert digits.num_classes == 10
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert digits.train_x.shape[1:] == (1, 28, 28) and digits.test_x.shape[1:] == (1, 28, 28)
    assert len(digits.train_y) + len(digits.val_y) + len(digits.test_y) == 1797
    assert len(digits.val_y) == round(0.1 * (len(digits.train_y) + len(digits.val_y)))
    all_train = torch.cat([digits.train_x, digits.val_x])
    assert abs(float(all_train.mean())) < 1e-3 and abs(float(all_train.std()) - 1.0) < 1e-2
    assert set(digits.train_y.tolist()) == set(range(10))


def test_split_is_deterministic_for_a_seed_and_test_split_never_moves(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.val_x, digits.val_x) and torch.equal(again.train_y, digits.train_y)
    assert again.fingerprint == digits.fingerprint
    assert not torch.equal(other.val_x, digits.val_x)
    assert other.fingerprint != digits.fingerprint
    assert torch.equal(other.test_x, digits.test_x) and torch.equal(other.test_y, digits.test_y)


def test_validation_images_are_held_out_of_the_proxy_training_split(digits):
    train = {row.numpy().tobytes() for row in digits.train_x}
    held_out = [row.numpy().tobytes() for row in digits.val_x]
    # Digits has a few duplicate images; nearly all held-out images are unseen in training.
    assert sum(h in train for h in held_out) <= 0.05 * len(held_out)


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)


def _idx_folder(root, compress: bool, n_train: int = 40, n_test: int = 10):
    rng = np.random.default_rng(0)
    root.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if compress else ""
        _write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 3, compress)
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_an_idx_folder_loads_gzipped_or_not(tmp_path, compress):
    data = load_dataset(str(_idx_folder(tmp_path / "mini", compress)), seed=3)
    assert data.name == "mini" and data.input_shape == (1, 28, 28) and data.num_classes == 3
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (36, 4, 10)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_from_the_debian_package():
    data = load_dataset("fashion-mnist")
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (54000, 6000, 10000)
    assert data.classes[0] == "t-shirt/top"


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x12\x34\x08\x01\x00\x00\x00\x02ab", "magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x02ab", "data type"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "holds 2 bytes"),
        (b"\x1f\x8b\x08\x00garbage", "cannot read"),
    ],
)
def test_malformed_idx_files_raise_data_errors(tmp_path, blob, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(blob)
    with pytest.raises(DataError, match=message):
        read_idx(path)


def _cifar_folder(root, n: int = 30):
    rng = np.random.default_rng(1)
    root.mkdir()
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"labels": list(np.arange(n) % 10)}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (root / "batches.meta").write_bytes(pickle.dumps(names, protocol=2))
    return root


def test_a_cifar10_python_folder_loads(tmp_path):
    data = load_dataset(str(_cifar_folder(tmp_path / "cifar-10-batches-py")))
    assert data.name == "cifar10" and data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (54, 6, 30)
    assert data.classes[3] == "class3"
    assert load_dataset(str(tmp_path)).fingerprint == data.fingerprint  # the parent folder works too


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    root = _cifar_folder(tmp_path / "c")
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset(str(root))


def _png_tree(root, split_dirs: bool):
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in ("train", "test") if split_dirs else ("",):
        for cls in ("cat", "dog", "eel"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(5):
                Image.fromarray(rng.integers(0, 256, (30, 30, 3)).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("split_dirs", [True, False])
def test_an_imagefolder_tree_loads_with_or_without_a_test_folder(tmp_path, split_dirs):
    data = load_dataset(str(_png_tree(tmp_path / "pets", split_dirs)), options=DataOptions(input_size=28))
    assert data.input_shape == (3, 28, 28) and data.classes == ("cat", "dog", "eel")
    total = 30 if split_dirs else 15
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == total


def test_an_undecodable_image_names_the_file(tmp_path):
    root = _png_tree(tmp_path / "pets", split_dirs=False)
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(str(root))


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-dataset", "no data set named"),
        ("cifar10", "cifar10 needs a path"),
    ],
)
def test_unknown_names_raise_data_errors(name, message):
    with pytest.raises(DataError, match=message):
        load_dataset(name)


def test_folders_that_are_no_data_set_raise_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a data set"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        load_dataset(str(tmp_path / "file.bin"))
    partial = _idx_folder(tmp_path / "partial", compress=True)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels"):
        load_dataset(str(partial))


@pytest.mark.parametrize("data", ["/no/such/folder", "cifar10"])
def test_the_cli_reports_a_bad_dataset_in_one_line_and_exits_2(tmp_path, data):
    result = CliRunner().invoke(
        cli.cli, ["distill", "x", "--data", data, "--epochs", "1", "--out", str(tmp_path / "s.pt")]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
