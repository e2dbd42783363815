"""The user's own images: any size and mode through the on-disk cache, both layouts, the
splits they give, bad images, augmentation, and bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from akd_mobile import image_cache
from akd_mobile.augment import Augmentation
from akd_mobile.data import DataOptions, load_dataset
from akd_mobile.distill import ProxyBudget, TrainConfig, proxy_score, train_student
from akd_base.errors import DataError, DistillError
from akd_mobile.image_cache import CachedImages, Preprocessing, decode_image
from akd_mobile.image_sets import list_folder
from akd_mobile.space import get_space
from tests.image_support import image_folder, photo, write_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("img") / "photos", per_class=12)


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


# ---------------------------------------------------------------- sizes, modes, spaces


def test_mixed_sizes_and_modes_are_cropped_to_the_spaces_input(photos):
    small = load_dataset(str(photos), options=DataOptions(input_size=32))
    assert small.input_shape == (3, 32, 32) and small.num_classes == 3
    assert small.classes == ("class0", "class1", "class2")
    assert len(small.train_y) + len(small.val_y) + len(small.test_y) == 36
    batch = small.train_x[0:4]
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32
    every = torch.cat([small.train_x[:], small.val_x[:]])  # normalized by the training images' statistics
    assert abs(float(every.mean())) < 0.05 and abs(float(every.std()) - 1.0) < 0.05
    assert small.input_shape == get_space("mnasnet-small", small.input_shape, 3).input_shape

    imagenet = load_dataset(str(photos), space="mnasnet-imagenet")
    assert imagenet.input_shape == (3, 224, 224)  # the space's own input size
    assert load_dataset(str(photos), options=DataOptions(input_size=64), space="mnasnet-imagenet").input_shape == (3, 64, 64)
    assert load_dataset(str(photos), options=DataOptions(input_size=32)).fingerprint != imagenet.fingerprint


def test_gray_photos_stay_one_channel_unless_the_space_wants_three(tmp_path):
    gray = image_folder(tmp_path / "gray", per_class=4, gray=True)
    assert load_dataset(str(gray)).input_shape == (1, 28, 28)  # mnasnet-small's default size
    assert load_dataset(str(gray), options=DataOptions(input_size=40), space="mnasnet-imagenet").input_shape == (3, 40, 40)


def test_decoding_fits_the_shorter_side_and_crops_the_center(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 20:60] = 255  # a white center band, as wide as the crop
    write_image(tmp_path / "wide.png", pixels, "RGB")
    out = decode_image(tmp_path / "wide.png", Preprocessing(20, 3))
    assert out.shape == (20, 20, 3) and out[:, 2:-2].min() > 200
    rgba = np.dstack([pixels, np.full((40, 80), 128, np.uint8)])
    write_image(tmp_path / "alpha.png", rgba, "RGBA")
    assert decode_image(tmp_path / "alpha.png", Preprocessing(20, 1)).shape == (20, 20, 1)


def test_a_view_reads_what_was_decoded(photos, tmp_path):
    data = load_dataset(str(photos), options=DataOptions(input_size=30))
    view: CachedImages = data.train_x
    pos = 3
    listing = list_folder(photos)
    want = decode_image(listing.files[int(view.index[pos])], Preprocessing(30, 3)).astype(np.float32) / 255.0
    want = (torch.from_numpy(want).permute(2, 0, 1) - torch.tensor(data.mean).view(3, 1, 1)) / torch.tensor(data.std).view(3, 1, 1)
    assert torch.allclose(view[torch.tensor([pos])][0], want, atol=1e-5)
    assert torch.equal(view[pos : pos + 2], view[torch.tensor([pos, pos + 1])])


# ---------------------------------------------------------------- the cache


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "set", per_class=4)
    decoded = []
    real = image_cache.decode_image
    monkeypatch.setattr(image_cache, "decode_image", lambda path, pre: decoded.append(path) or real(path, pre))
    first = load_dataset(str(root))
    assert len(decoded) == 12
    again = load_dataset(str(root))
    assert len(decoded) == 12 and again.fingerprint == first.fingerprint  # nothing decoded again
    changed = root / "class0" / "0.jpg"  # an RGB JPEG (image_support.MODES)
    write_image(changed, photo(np.random.default_rng(9), 0, 50, 50), "RGB")
    os.utime(changed, ns=(1, 1))
    third = load_dataset(str(root))
    assert len(decoded) == 24 and third.fingerprint != first.fingerprint


def test_an_interrupted_build_resumes_from_its_last_chunk(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "set", per_class=10)
    monkeypatch.setenv("AKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(image_cache, "CHUNK_IMAGES", 8)
    real = image_cache.decode_image
    calls = []

    def dies_at_the_twentieth(path, pre):
        calls.append(path)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return real(path, pre)

    monkeypatch.setattr(image_cache, "decode_image", dies_at_the_twentieth)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(str(root))
    meta = json.loads(next((tmp_path / "cache" / "images").glob("*/meta.json")).read_text())
    assert meta["done"] == 16  # two whole chunks written
    calls.clear()
    monkeypatch.setattr(image_cache, "decode_image", lambda path, pre: calls.append(path) or real(path, pre))
    resumed = load_dataset(str(root))
    assert len(calls) == 30 - 16
    monkeypatch.setattr(image_cache, "CHUNK_IMAGES", 256)
    fresh = load_dataset(str(root), options=DataOptions(input_size=29))  # another entry, built in one go
    assert resumed.num_classes == fresh.num_classes == 3
    assert torch.equal(resumed.train_y, load_dataset(str(root)).train_y)


def test_a_proxy_score_on_the_cache_equals_one_in_memory(tmp_path):
    root = image_folder(tmp_path / "set", per_class=20)
    data = load_dataset(str(root), options=DataOptions(input_size=28))
    import dataclasses

    in_memory = dataclasses.replace(data, train_x=data.train_x[:], val_x=data.val_x[:], test_x=data.test_x[:])
    arch = get_space("mnasnet-small", data.input_shape, 3).sample(__import__("random").Random(1))
    budget = ProxyBudget(steps=6, batch_size=16)
    on_disk = proxy_score(arch, data, None, budget, "ce", seed=2, threads=1)
    in_ram = proxy_score(arch, in_memory, None, budget, "ce", seed=2, threads=1)
    assert on_disk.accuracy == in_ram.accuracy and on_disk.final_loss == in_ram.final_loss


# ---------------------------------------------------------------- layouts and splits


def test_user_splits_are_kept(tmp_path):
    three = image_folder(tmp_path / "three", per_class=3, splits=("train", "val", "test"))
    data = load_dataset(str(three))
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (9, 9, 9)
    two = image_folder(tmp_path / "two", per_class=10, splits=("train", "val"))
    data = load_dataset(str(two))  # val/ is the evaluation split; validation held out of train/
    assert len(data.test_y) == 30 and len(data.train_y) + len(data.val_y) == 30 and len(data.val_y) == 3


def test_a_csv_of_paths_and_labels_is_a_data_set(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=10)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rows = ["path,label"] + [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in files]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(str(tmp_path / "labels.csv"), options=DataOptions(input_size=28))
    assert data.classes == ("class0", "class1", "class2") and data.name == "labels"
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 30 and len(data.test_y) == 6

    split = [f"{p.relative_to(tmp_path)},{int(p.parent.name[-1])},{'test' if i % 3 == 0 else 'train'}"
             for i, p in enumerate(files)]
    (tmp_path / "split.csv").write_text("\n".join(split))
    data = load_dataset(str(tmp_path / "split.csv"))
    assert len(data.test_y) == 10 and data.classes == ("0", "1", "2")


@pytest.mark.parametrize("rows, message", [
    (["a.png"], "expected path,label"),
    (["missing.png,cat", "missing2.png,dog"], "2 missing images"),
    (["{img},cat,holdout", "{img},dog"], "unknown split holdout"),
    (["{img},cat", "{img},cat"], "1 class"),
])
def test_bad_csv_listings_raise_data_errors(tmp_path, rows, message):
    write_image(tmp_path / "x.png", photo(np.random.default_rng(0), 0, 30, 30), "RGB")
    (tmp_path / "l.csv").write_text("\n".join(r.format(img="x.png") for r in rows))
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "l.csv"))


# ---------------------------------------------------------------- bad images


def test_every_bad_image_is_named_at_once_and_can_be_skipped(tmp_path):
    root = image_folder(tmp_path / "set", per_class=6)
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "class2" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_dataset(str(root))
    message = str(err.value)
    assert "2 unreadable images" in message and "broken.jpg" in message and "empty.png" in message
    assert "--skip-bad-images" in message and "\n" not in message
    data = load_dataset(str(root), options=DataOptions(skip_bad_images=True))
    assert len(data.skipped) == 2 and data.summary()["skipped_images"] == 2
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 18


def test_the_cli_names_a_bad_image_and_a_bad_size_in_one_line(tmp_path):
    root = image_folder(tmp_path / "set", per_class=4)
    (root / "class1" / "bad.png").write_bytes(b"nope")
    args = ["distill", "x", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "s.pt"), "--mode", "ce"]
    assert "bad.png" in _one_error_line(CliRunner().invoke(cli.cli, args))
    assert "--input-size must be a positive" in _one_error_line(CliRunner().invoke(cli.cli, [*args, "--input-size", "0"]))
    line = _one_error_line(CliRunner().invoke(cli.cli, ["search", "--data", str(root), "--skip-bad-images",
                                                        "--input-size", "64", "--reward", "ce",
                                                        "--db", str(tmp_path / "db.sqlite")]))
    assert "does not fit space mnasnet-small" in line and "64" in line


# ---------------------------------------------------------------- augmentation


def test_augmentation_resolves_per_data_set_and_is_seeded():
    assert Augmentation.resolve("auto", 32, mirror_safe=True) == Augmentation(4, True)
    assert Augmentation.resolve("auto", 28, mirror_safe=False) == Augmentation(3, False)
    assert Augmentation.resolve("flip", 28, True) == Augmentation(0, True) and not Augmentation.resolve("none", 28, True).active
    with pytest.raises(DistillError, match="unknown augmentation"):
        TrainConfig(augment="rotate")
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    aug = Augmentation(2, True)
    a, b = aug(x, torch.Generator().manual_seed(5)), aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape
    for img, src in zip(a, x):  # each output is a shifted window of the (maybe mirrored) zero-padded input
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        windows = [p[:, dy : dy + 8, dx : dx + 8] for p in (padded, padded.flip(2)) for dy in range(5) for dx in range(5)]
        assert any(torch.equal(img, w) for w in windows)
    many = aug(x.repeat(16, 1, 1, 1), torch.Generator().manual_seed(1))
    assert len({tuple(m.flatten().tolist()) for m in many[::2]}) > 4  # the draws differ image by image


def test_full_training_on_the_cache_augments_by_default(tmp_path):
    root = image_folder(tmp_path / "set", per_class=20)
    data = load_dataset(str(root), options=DataOptions(input_size=28))
    arch = get_space("mnasnet-small", data.input_shape, 3).sample(__import__("random").Random(0))
    config = TrainConfig(epochs=2, batch_size=16)
    _, plain = train_student(arch, data, None, TrainConfig(epochs=2, batch_size=16, augment="none"), "ce", seed=0)
    _, augmented = train_student(arch, data, None, config, "ce", seed=0)
    _, again = train_student(arch, data, None, config, "ce", seed=0)
    assert augmented.val_history == again.val_history  # seeded
    assert augmented.val_history != plain.val_history  # and it changes what is trained on


# ---------------------------------------------------------------- commands end to end


@pytest.mark.slow
def test_search_and_distill_run_on_a_folder_of_photos(tmp_path):
    """Also: the ce reward loads no teacher, and a proxy batch (125) larger than the training
    split (64 images) takes all of it."""
    root = image_folder(tmp_path / "photos", per_class=30)
    (root / "class0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff broken")
    db = tmp_path / "db.sqlite"
    runner = CliRunner()
    result = runner.invoke(cli.cli, ["search", "--data", str(root), "--input-size", "32", "--skip-bad-images",
                                     "--reward", "ce", "--teacher", "/nonexistent.pt2", "--budget", "2", "--batch", "2", "--proxy-steps", "5",
                                     "--target-ms", "5", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "1 unreadable images skipped" in result.stdout
    runs = json.loads(runner.invoke(cli.cli, ["runs", "list", "--db", str(db), "--json"]).stdout)
    assert runs[0]["status"] == "done"
    shown = json.loads(runner.invoke(cli.cli, ["runs", "show", "1", "--db", str(db), "--json"]).stdout)
    assert shown["config"]["data_options"] == {"input_size": 32, "skip_bad_images": True}
    arch = shown["top"][0]["arch"]
    result = runner.invoke(cli.cli, ["distill", arch, "--data", str(root), "--input-size", "32", "--skip-bad-images",
                                     "--mode", "ce", "--epochs", "1", "--batch-size", "16",
                                     "--out", str(tmp_path / "s.pt"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test_accuracy"] > 0.4  # three classes that show: above chance


@pytest.mark.slow
def test_a_data_set_larger_than_the_memory_limit_still_trains(tmp_path):
    """3,000 photos at 64x64x3 take 35 MiB as uint8 pixels and 141 MiB as float32 tensors.
    After a warm-up training on 256 of them in memory, the process's address space is capped
    150 MiB above its peak, and a whole epoch on the cache must leave the memory the process
    holds (its resident set once malloc_trim has returned the free heap, with the data set
    still referenced) within 20 MiB of the warm-up's: the set streams from disk, it is never
    held, neither as tensors nor as touched pages of a mapped file.

    (Peak resident memory is no measure of this: one evaluation batch's activations set it, and
    how far they reach differs by some 100 MiB between CPUs and allocator histories.)"""
    root = image_folder(tmp_path / "big", per_class=1000, sizes=(64, 96), seed=3)
    script = textwrap.dedent(f"""
        import ctypes, dataclasses, random, resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from akd_mobile.data import DataOptions, load_dataset
        from akd_mobile.distill import TrainConfig, train_student
        from akd_mobile.space import get_space
        def status_mb(field):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            for line in open("/proc/self/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        torch.set_num_threads(1)
        data = load_dataset({str(root)!r}, options=DataOptions(input_size=64), space="mnasnet-imagenet")
        arch = get_space("mnasnet-imagenet", (3, 64, 64), 3).sample(random.Random(0))
        config = TrainConfig(epochs=1, batch_size=32, augment="crop")
        first = {{name: getattr(data, name)[:256] for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}}
        train_student(arch, dataclasses.replace(data, **first), None, config, "ce")
        warm_held = status_mb("VmRSS")
        limit = int((status_mb("VmPeak") + 150) * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        _, result = train_student(arch, data, None, config, "ce")
        images = len(data.train_y) + len(data.val_y) + len(data.test_y)
        print(images, images * 3 * 64 * 64 * 4 / 2**20, status_mb("VmRSS") - warm_held, result.test_accuracy)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    images, float_mb, growth_mb, _ = (float(v) for v in done.stdout.split())
    assert images == 3000 and float_mb > 140, done.stdout
    assert growth_mb < 20, f"the process holds {growth_mb:.0f} MiB more after an epoch on the cache"
