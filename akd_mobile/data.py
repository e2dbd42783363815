"""Image classification data sets: the built-in ones as normalized in-memory tensors, the
user's own images (any size and mode) through an on-disk cache read in batches.

`load_dataset` takes a name or a path:

| name or path | what it loads |
| --- | --- |
| `fashion-mnist` | the IDX files of the Debian package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`) |
| `digits` | scikit-learn's bundled 8x8 digits, resized once to 28x28 so the `mnasnet-small` space takes them |
| a folder of IDX files | `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-...` (each optionally `.gz`) |
| a CIFAR-10 python folder | `data_batch_1` .. `data_batch_5` and `test_batch` (or its parent holding `cifar-10-batches-py`) |
| an ImageFolder tree | `train/<class>/*` with `val/` and `test/` where given, or only `<class>/*` (see `image_sets`) |
| a CSV file | `path,label[,split]` rows, paths relative to the CSV's folder |

The user's own images are resized and center-cropped to a square of `DataOptions.input_size`
px (default: the space's input size), converted to the channels the space takes, and
decoded once into a uint8 cache on disk (`image_cache`); the splits are then views that
read normalized batches from it, so memory stays bounded whatever the set's size.

The training set is split into a proxy training part (`train_x`) and a held-out validation
part (`val_x`), deterministic for the seed, as MnasNet held out part of ImageNet's training
set (a validation split the user gave is kept). The test split is for final evaluation
only; the search never reads it. Pixels are scaled to [0, 1] and normalized per channel by
the mean and standard deviation of the whole training set.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from akd_base.errors import DataError
from akd_mobile.image_cache import CachedImages

if TYPE_CHECKING:
    from akd_mobile.image_sets import ImageListing

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
DIGITS_SIZE = 28
# Bumped whenever decoding or preprocessing changes, so cached teacher logits are recomputed.
PREPROCESSING_VERSION = 1
# Unreadable images named in an error or a log line; the rest are counted.
BAD_IMAGES_NAMED = 20

# A split's images: a tensor in memory, or a view of an image cache on disk.
Images = Union[torch.Tensor, CachedImages]


@dataclass(frozen=True)
class DataOptions:
    """How a data set is loaded; stored with a run, so a resume loads the same data.

    Attributes:
        input_size: square side in px every image is brought to (None: the space's input
            size for the user's own images; the source's size for the built-in sets, 28
            for `digits`).
        skip_bad_images: leave unreadable images out (counted, and named in the log)
            instead of refusing the data set.
    """

    input_size: int | None = None
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        if self.input_size is not None and self.input_size < 1:
            raise DataError(f"--input-size must be a positive number of pixels, got {self.input_size}")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set: float32 NCHW normalized images (in memory, or read from
    an image cache on demand), int64 labels.

    Attributes:
        name: short name (`fashion-mnist`, `digits`, or the source folder's name).
        input_shape: (channels, height, width) of one image.
        num_classes: number of classes.
        train_x: proxy training images.
        train_y: proxy training labels.
        val_x: validation images held out from the training set (deterministic for the seed).
        val_y: validation labels.
        test_x: test images, for final evaluation only.
        test_y: test labels.
        fingerprint: hash of the source data, preprocessing and split; keys caches.
        classes: class names, index order.
        mean: per-channel mean subtracted (of pixels scaled to [0, 1]).
        std: per-channel standard deviation divided by.
        mirror_safe: whether a horizontal flip keeps an image's class (not for digits).
        skipped: unreadable images left out (`DataOptions.skip_bad_images`).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    train_x: Images
    train_y: torch.Tensor
    val_x: Images
    val_y: torch.Tensor
    test_x: Images
    test_y: torch.Tensor
    fingerprint: str
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    mirror_safe: bool = True
    skipped: tuple[str, ...] = ()

    def summary(self) -> dict[str, object]:
        """Sizes and identity, for logs and `--json` output."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train": len(self.train_y),
            "val": len(self.val_y),
            "test": len(self.test_y),
            "fingerprint": self.fingerprint,
            "skipped_images": len(self.skipped),
        }


@dataclass(frozen=True)
class _Raw:
    """Decoded source before splitting and normalization: uint8 NCHW images, int labels."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]


def load_dataset(
    name_or_path: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    options: DataOptions = DataOptions(),
    space: str = "mnasnet-small",
) -> Dataset:
    """Load a data set by name or path, split off validation data and normalize it.

    Args:
        name_or_path: `fashion-mnist`, `digits`, or a folder of IDX files, CIFAR-10 python
            batches or an ImageFolder tree, or a CSV of `path,label[,split]` rows (`cifar10`
            needs its folder).
        seed: seed of the train/validation split.
        val_fraction: share of the training set held out for validation, in (0, 1), where
            the data name no validation split.
        options: input size and the handling of unreadable images.
        space: the search space the data feed; the user's own images take its input size
            and channels unless `options` says otherwise.

    Returns:
        The data set.

    Raises:
        DataError: unknown name, missing folder, unreadable or malformed files.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    from akd_mobile import image_sets

    named = _NAMED.get(name_or_path.strip().lower())
    if named is not None:
        raw = named()
    else:
        path = _existing(name_or_path)
        if image_sets.is_image_csv(path):
            return _cached_set(image_sets.list_csv(path), seed, val_fraction, options, space)
        raw = _decode_folder(path)
        if raw is None:
            return _cached_set(image_sets.list_folder(path), seed, val_fraction, options, space)
    size = options.input_size or (DIGITS_SIZE if raw.name == "digits" else None)
    return _prepare(raw, seed, val_fraction, size)


def _fashion_mnist() -> _Raw:
    if not FASHION_MNIST_DIR.is_dir():
        raise DataError(
            f"Fashion-MNIST is not at {FASHION_MNIST_DIR}: install the Debian package "
            "dataset-fashion-mnist, or pass the folder holding its IDX files"
        )
    return _idx_folder(FASHION_MNIST_DIR, "fashion-mnist")


def _cifar10_needs_a_path() -> _Raw:
    raise DataError(
        "cifar10 needs a path: pass the folder holding data_batch_1..5 and test_batch "
        "(the extracted cifar-10-python.tar.gz)"
    )


def absolute_data_spec(spec: str) -> str:
    """`spec` with an existing path made absolute (a resume from another folder finds it);
    the built-in names stay names."""
    path = Path(spec).expanduser()
    return spec if spec.strip().lower() in _NAMED or not path.exists() else str(path.resolve())


def _existing(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise DataError(
            f"no data set named {name_or_path!r} and no such path; pass fashion-mnist, digits, a folder of IDX "
            "files, CIFAR-10 python batches or an ImageFolder tree, or a CSV of path,label rows"
        )
    if not path.is_dir() and path.suffix.lower() != ".csv":
        raise DataError(f"{path} is a file; pass the folder that holds the data set (extract archives first) "
                        "or a .csv of path,label rows")
    return path


def _decode_folder(path: Path) -> _Raw | None:
    """The IDX or CIFAR-10 set in folder `path`, or None for an ImageFolder tree."""
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    if _find_idx(path, "train-images-idx3-ubyte") is not None:
        return _idx_folder(path, path.name)
    if (path / "data_batch_1").is_file():
        return _cifar_folder(path)
    return None


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_folder(folder: Path, name: str) -> _Raw:
    arrays = []
    for stem in _IDX_FILES:
        path = _find_idx(folder, stem)
        if path is None:
            raise DataError(
                f"{folder} lacks {stem} (or {stem}.gz); an IDX data set needs all of {', '.join(_IDX_FILES)}"
            )
        arrays.append(read_idx(path))
    train_x, train_y, test_x, test_y = arrays
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not pair up "
                "(need N x H x W images and N labels)"
            )
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{folder}: train images are {train_x.shape[1:]} but test images {test_x.shape[1:]}")
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else ()
    return _Raw(name, train_x[:, None], train_y.astype(np.int64), test_x[:, None], test_y.astype(np.int64), classes)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzipped or not) into an array.

    Raises:
        DataError: unreadable file, bad magic number, non-byte data or wrong length.
    """
    try:
        blob = path.read_bytes()
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(blob) < 4 or blob[0:2] != b"\x00\x00":
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    if blob[2] != 0x08:
        raise DataError(f"{path}: IDX data type 0x{blob[2]:02x} is not supported; need unsigned bytes (0x08)")
    ndim = blob[3]
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{path}: IDX header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    if len(blob) - header != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {dims} but holds {len(blob) - header} bytes of data")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


# ---------------------------------------------------------------- scikit-learn digits


def _digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    # Digits ship no test split: a fixed fifth, the same for every seed, is the test set.
    order = np.random.default_rng(20240611).permutation(len(labels))
    n_test = len(labels) // 5
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    classes = tuple(str(c) for c in bunch.target_names)
    return _Raw("digits", images[train], labels[train], images[test], labels[test], classes)


# ---------------------------------------------------------------- CIFAR-10 python batches


# the names `load_dataset` takes instead of a path (case and spaces around them ignored)
_NAMED: dict[str, Callable[[], _Raw]] = {
    "digits": _digits,
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10_needs_a_path,
    "cifar-10": _cifar10_needs_a_path,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: a batch file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("_codecs", "encode"): ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(*target)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (expected a dict, got {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
        images = data.reshape(len(data), 3, 32, 32)
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 batch (needs 'data' N x 3072 and 'labels'): {exc}") from None
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _cifar_folder(folder: Path) -> _Raw:
    train_files = sorted(folder.glob("data_batch_[0-9]*"))
    if not (folder / "test_batch").is_file():
        raise DataError(f"{folder} has data_batch files but no test_batch; pass a complete CIFAR-10 python folder")
    parts = [_cifar_batch(p) for p in train_files]
    test_x, test_y = _cifar_batch(folder / "test_batch")
    classes: tuple[str, ...] = ()
    if (folder / "batches.meta").is_file():
        names = _unpickle(folder / "batches.meta").get("label_names", [])
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return _Raw("cifar10", train_x, train_y, test_x, test_y, classes)


# ---------------------------------------------------------------- the user's own images


def _cached_set(listing: ImageListing, seed: int, val_fraction: float, options: DataOptions, space: str) -> Dataset:
    """A data set of the user's image files (an `image_sets.ImageListing`), through the cache."""
    from akd_mobile.image_cache import Preprocessing, build_cache, guess_channels
    from akd_mobile.image_sets import TEST, TRAIN, UNSPLIT, VAL
    from akd_mobile.space import input_preference

    default_size, takes = input_preference(space)
    channels = takes[0] if len(takes) == 1 else guess_channels(listing.files)  # 1 or 3, both taken
    pre = Preprocessing(options.input_size or default_size, channels)
    entry = build_cache(listing.root, listing.files, listing.labels, pre, listing.splits != TEST)
    good = np.ones(len(listing.files), dtype=bool)
    if entry.bad:
        named = "; ".join(f"{b.path} ({b.reason})" for b in entry.bad[:BAD_IMAGES_NAMED])
        more = f"; and {len(entry.bad) - BAD_IMAGES_NAMED} more" if len(entry.bad) > BAD_IMAGES_NAMED else ""
        if not options.skip_bad_images:
            raise DataError(f"{len(entry.bad)} unreadable images in {listing.name}: {named}{more}; "
                            "fix or remove them, or pass --skip-bad-images to leave them out")
        log.warning("skipping %d unreadable images of %s: %s%s", len(entry.bad), listing.name, named, more)
        good[[b.index for b in entry.bad]] = False
    splits = listing.splits
    test = np.flatnonzero(good & (splits == TEST))
    if (splits == VAL).any():
        train, val = np.flatnonzero(good & (splits == TRAIN)), np.flatnonzero(good & (splits == VAL))
    else:
        pool = np.flatnonzero(good & (splits == UNSPLIT))
        n_val = int(round(len(pool) * val_fraction))
        order = np.random.default_rng(seed).permutation(len(pool))
        val, train = np.sort(pool[order[:n_val]]), np.sort(pool[order[n_val:]])
    for part, name in ((train, "training"), (val, "validation"), (test, "test")):
        if len(part) < 1:
            raise DataError(f"{listing.name}: no {name} images left (of {len(listing.files)} listed); "
                            "a data set needs images in every split")
    labels = torch.from_numpy(np.asarray(listing.labels, dtype=np.int64))
    skipped = tuple(b.path for b in entry.bad)
    ident = (f"v{PREPROCESSING_VERSION}|images|{entry.key}|seed={seed}|val={val_fraction!r}|"
             f"skipped={len(skipped)}|n={len(train)},{len(val)},{len(test)}")

    def view(index: np.ndarray) -> CachedImages:
        return CachedImages(entry, index, entry.mean, entry.std)

    return Dataset(
        name=listing.name,
        input_shape=(pre.channels, pre.size, pre.size),
        num_classes=len(listing.classes),
        train_x=view(train), train_y=labels[torch.from_numpy(train)],
        val_x=view(val), val_y=labels[torch.from_numpy(val)],
        test_x=view(test), test_y=labels[torch.from_numpy(test)],
        fingerprint=hashlib.sha256(ident.encode()).hexdigest()[:16],
        classes=listing.classes, mean=entry.mean, std=entry.std, skipped=skipped,
    )


# ---------------------------------------------------------------- split, resize, normalize


def _prepare(raw: _Raw, seed: int, val_fraction: float, size: int | None) -> Dataset:
    n = len(raw.train_y)
    n_val = int(round(n * val_fraction))
    if n_val < 1 or n - n_val < 1:
        raise DataError(f"{raw.name}: {n} training images are too few to hold out {val_fraction:.0%} for validation")
    labels = np.concatenate([raw.train_y, raw.test_y])
    num_classes = len(raw.classes) or int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_classes or num_classes < 2:
        raise DataError(
            f"{raw.name}: labels must be 0..K-1 with K >= 2 classes, got {labels.min()}..{labels.max()} "
            f"for {num_classes} classes"
        )
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])

    train_all = _to_float(raw.train_x, size)
    test = _to_float(raw.test_x, size)
    mean = train_all.mean(dim=(0, 2, 3), dtype=torch.float64)
    std = train_all.double().std(dim=(0, 2, 3)).clamp_min(1e-6)
    shift, scale = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)
    train_all.sub_(shift).div_(scale)
    test.sub_(shift).div_(scale)

    digest = hashlib.sha256()
    ident = f"v{PREPROCESSING_VERSION}|{raw.name}|size={size}|seed={seed}|val={val_fraction!r}|n={n}"
    digest.update(ident.encode())
    for arr in (raw.train_x, raw.train_y, raw.test_x, raw.test_y):
        digest.update(str(arr.shape).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    train_y = torch.from_numpy(raw.train_y)
    return Dataset(
        name=raw.name,
        input_shape=tuple(train_all.shape[1:]),  # type: ignore[arg-type]
        num_classes=num_classes,
        train_x=train_all[torch.from_numpy(train_idx)],
        train_y=train_y[torch.from_numpy(train_idx)],
        val_x=train_all[torch.from_numpy(val_idx)],
        val_y=train_y[torch.from_numpy(val_idx)],
        test_x=test,
        test_y=torch.from_numpy(raw.test_y.copy()),
        fingerprint=digest.hexdigest()[:16],
        classes=raw.classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        mirror_safe=raw.name != "digits",
    )


def _to_float(images: np.ndarray, size: int | None) -> torch.Tensor:
    x = torch.from_numpy(np.require(images, requirements=["C", "W"])).float().div_(255.0)
    if size is not None and x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()
