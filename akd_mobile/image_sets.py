"""The user's own image sets, listed (not decoded): which file is which class and split.

Two layouts:

| layout | what it holds |
| --- | --- |
| an ImageFolder tree | `train/<class>/*`, with `val/<class>/*` and `test/<class>/*` where given; or only `<class>/*` |
| a CSV file | rows `path,label[,split]` (a header row naming the columns is optional); paths relative to the CSV's folder |

A split the user gave is kept. Where none is given, a fixed fifth of the images (the same
for every seed) is the test split, and the validation split is held out of the training
images by `data.load_dataset`. An ImageFolder with `train/` and `val/` but no `test/`
evaluates on `val/`, as torchvision's ImageNet does.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from akd_base.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
UNSPLIT = -1  # a training image whose train/validation split `load_dataset` draws
TRAIN, VAL, TEST = range(3)
# Seeds the fixed test fifth of a set that names no test split: the same for every run.
TEST_SPLIT_SEED = 20240611


@dataclass(frozen=True)
class ImageListing:
    """Image files with their labels and splits, in a fixed order.

    Attributes:
        name: short name of the set (its folder's or CSV file's name).
        root: the folder the file paths are relative to (keys the cache).
        files: the image files.
        labels: class index of each file.
        splits: `TRAIN`, `VAL`, `TEST` or `UNSPLIT` for each file.
        classes: class names, index order.
    """

    name: str
    root: Path
    files: tuple[Path, ...]
    labels: np.ndarray
    splits: np.ndarray
    classes: tuple[str, ...]


def is_image_csv(path: Path) -> bool:
    """Whether `path` names a CSV listing (rather than a folder)."""
    return path.is_file() and path.suffix.lower() == ".csv"


def list_folder(root: Path) -> ImageListing:
    """The ImageFolder tree at `root`.

    Raises:
        DataError: fewer than two class folders, or a class folder with no images.
    """
    parts = {split: root / split for split in SPLITS if (root / split).is_dir()}
    if "train" not in parts:
        parts = {"train": root}
    classes = _class_dirs(parts["train"])
    files: list[Path] = []
    labels, splits = [], []
    for split, folder in parts.items():
        found, found_labels = _class_files(folder, classes)
        files += found
        labels.append(found_labels)
        splits.append(np.full(len(found), SPLITS.index(split), dtype=np.int8))
    return ImageListing(root.name, root, tuple(files), np.concatenate(labels), _settle(np.concatenate(splits)),
                        tuple(classes))


def list_csv(path: Path) -> ImageListing:
    """The CSV listing at `path`: `path,label` or `path,label,split` rows.

    Labels are class names (sorted into indices) or, when every label is a whole number,
    class indices 0..K-1.

    Raises:
        DataError: an unreadable file, a malformed row, a missing image or an unknown split.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read image list {path}: {exc}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path} lists no images; write one `path,label[,split]` row per image")
    root = path.parent
    files, names, split_names = [], [], []
    for number, row in enumerate(rows, 1):
        if len(row) not in (2, 3):
            raise DataError(f"{path} row {number}: expected path,label[,split], got {len(row)} columns")
        files.append(root / row[0].strip())
        names.append(row[1].strip())
        split_names.append(row[2].strip().lower() if len(row) == 3 else "")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{path} lists {len(missing)} missing images: {_some(missing)}")
    unknown = sorted(set(split_names) - {"", *SPLITS})
    if unknown:
        raise DataError(f"{path}: unknown split {', '.join(unknown)}; use train, val or test")
    numeric = all(n.isdigit() for n in names)
    classes = [str(i) for i in range(max(map(int, names)) + 1)] if numeric else sorted(set(names))
    if len(classes) < 2:
        raise DataError(f"{path} names {len(classes)} class; a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([int(n) if numeric else index[n] for n in names], dtype=np.int64)
    given = np.asarray([SPLITS.index(s or "train") for s in split_names], dtype=np.int8)
    return ImageListing(path.stem, root, tuple(files), labels, _settle(given), tuple(classes))


def _settle(given: np.ndarray) -> np.ndarray:
    """The splits to use from the splits given: with no test split, the validation split is the
    test split, or else a fixed fifth of the training images is; with no validation split,
    the training images are `UNSPLIT` (`load_dataset` holds out validation images from them)."""
    splits = given.copy()
    if not (splits == TEST).any():
        if (splits == VAL).any():
            splits[splits == VAL] = TEST
        else:
            train = np.flatnonzero(splits == TRAIN)
            order = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(train))
            splits[train[order[: max(1, len(train) // 5)]]] = TEST
    if not (splits == VAL).any():
        splits[splits == TRAIN] = UNSPLIT
    return splits


def _class_dirs(folder: Path) -> list[str]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{folder} is not a data set: expected IDX files, CIFAR-10 batches, a CSV of path,label rows, or an "
            f"ImageFolder tree with one sub-folder per class (found {len(classes)} class folders)"
        )
    return classes


def _class_files(folder: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for index, cls in enumerate(classes):
        found = sorted(p for p in (folder / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"class folder {folder / cls} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _some(items: list[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
