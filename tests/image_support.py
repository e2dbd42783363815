"""Generated image sets for the tests: photos of mixed sizes and modes, as users have them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# (PIL mode, file suffix) in turn: colour and gray JPEGs, RGBA, palette and gray PNGs
MODES = (("RGB", ".jpg"), ("L", ".jpg"), ("RGBA", ".png"), ("P", ".png"), ("L", ".png"))


def photo(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray:
    """An RGB image whose class shows: class 0 bright at the top, class 1 at the bottom, class
    2 on the left (a flip keeps each class), over noise."""
    img = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
    if label == 0:
        img[: height // 2] += 150
    elif label == 1:
        img[height // 2 :] += 150
    else:
        img[:, : width // 3] += 150
    return img


def write_image(path: Path, pixels: np.ndarray, mode: str) -> None:
    from PIL import Image

    img = Image.fromarray(pixels).convert(mode)
    img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path)


def image_folder(root: Path, per_class: int = 12, splits: tuple[str, ...] = ("",), classes: int = 3,
                 sizes: tuple[int, int] = (20, 90), seed: int = 0, gray: bool = False) -> Path:
    """An ImageFolder tree under `root` (`<split>/<class>/<n><suffix>`) of mixed sizes and modes."""
    rng = np.random.default_rng(seed)
    n = 0
    for split in splits:
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                mode, suffix = ("L", ".png") if gray else MODES[n % len(MODES)]
                h, w = rng.integers(sizes[0], sizes[1], 2)
                write_image(folder / f"{i}{suffix}", photo(rng, label, int(h), int(w)), mode)
                n += 1
    return root
