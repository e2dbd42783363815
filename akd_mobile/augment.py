"""Data augmentation for full training: a random crop of the zero-padded image and a random
horizontal flip, applied to a batch on the fly (the proxy trains without it).

Settings are one word: `auto` (crop, and flip where the data set's classes survive a
mirror: not for digits), `none`, `crop`, `flip` or `crop+flip`. The crop pads each side
by an eighth of the image (4 px at 32 px, the CIFAR recipe) with zeros, which after
normalization is the data set's mean colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from akd_base.errors import DistillError

if TYPE_CHECKING:  # torch is imported where a batch is augmented: the CLI reads AUGMENTATIONS
    import torch

AUGMENTATIONS = ("auto", "none", "crop", "flip", "crop+flip")


@dataclass(frozen=True)
class Augmentation:
    """A resolved augmentation.

    Attributes:
        crop_padding: px of zero padding on each side before a random crop back to the
            image's size; 0: no crop.
        flip: mirror each image left to right with probability 1/2.
    """

    crop_padding: int = 0
    flip: bool = False

    @classmethod
    def resolve(cls, setting: str, image_size: int, mirror_safe: bool) -> Augmentation:
        """The augmentation `setting` names, for square images of `image_size` px of a data
        set whose classes survive a mirror or not (`Dataset.mirror_safe`).

        Raises:
            DistillError: an unknown setting.
        """
        check_setting(setting)
        parts = {"auto": {"crop", "flip"} if mirror_safe else {"crop"}, "none": set()}.get(setting, set(setting.split("+")))
        return cls(crop_padding=max(1, image_size // 8) if "crop" in parts else 0, flip="flip" in parts)

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Batch `x` (N, C, H, W) augmented, each image on its own random draw from `generator`."""
        import torch
        import torch.nn.functional as F

        n, _, h, w = x.shape
        if self.flip:
            mirror = torch.rand(n, generator=generator) < 0.5
            x = torch.where(mirror.view(n, 1, 1, 1).to(x.device), x.flip(3), x)
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).tolist()
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).tolist()
            x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
        return x


def check_setting(setting: str) -> None:
    """Raise DistillError unless `setting` is one of `AUGMENTATIONS`."""
    if setting not in AUGMENTATIONS:
        raise DistillError(f"unknown augmentation {setting!r}; use one of {', '.join(AUGMENTATIONS)}")
