"""A random source picture and a box mask on disk, as an edit test hands them to a job and to bare diffusers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def source_and_mask(
    folder: Path, box: tuple[int, int, int, int], seed: int, size: tuple[int, int] = (64, 64)
) -> tuple[Path, Path, Image.Image, np.ndarray]:
    """`source.png` of seeded noise and `mask.png` white inside `box` (left, top, right, bottom) in `folder`;
    returns both paths, the source as RGB and the mask as a (h, w) uint8 array."""
    width, height = size
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / "source.png")
    mask = np.zeros((height, width), np.uint8)
    mask[box[1] : box[3], box[0] : box[2]] = 255
    Image.fromarray(mask, "L").save(folder / "mask.png")
    return folder / "source.png", folder / "mask.png", Image.open(folder / "source.png").convert("RGB"), mask
