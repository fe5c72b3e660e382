"""SD upscale's tiles: where they lie on the upscaled image and how their results are blended back.

Every tile has the full tile size (the model denoises what it was trained at, and one image-to-image
call per tile runs at one size), spread evenly so neighbours share at least `overlap` pixels. In each
shared band a tile's weight rises linearly from its edge while its neighbour's falls, and the result is
the weighted mean: across a tile border the image changes gradually, so no seam shows. A1111's SD
upscale script blends its grid the same way; its last row and column are placed differently.

numpy only: the backend runs the tiles, this module does the geometry and the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` px covering `length` px, sharing at least `overlap` px."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return [round(index * span / (count - 1)) for index in range(count)]


def tile_boxes(size: tuple[int, int], tile: int, overlap: int) -> list[Box]:
    """The tiles over an image of `size` (w, h), row by row; a side shorter than `tile` is one tile."""
    width, height = size
    tile_w, tile_h = min(tile, width), min(tile, height)
    return [
        (left, top, left + tile_w, top + tile_h)
        for top in tile_starts(height, tile_h, overlap)
        for left in tile_starts(width, tile_w, overlap)
    ]


def blend_tiles(
    size: tuple[int, int], boxes: Sequence[Box], tiles: Sequence[Image.Image], feather: bool = True
) -> Image.Image:
    """The tiles' results put together at `size`. `feather=False` pastes them one over the other (a
    hard seam where each begins), the naive way, kept to show what the blend avoids."""
    width, height = size
    total = np.zeros((height, width, 3), dtype=np.float64)
    weights = np.zeros((height, width, 1), dtype=np.float64)
    for box, image in zip(boxes, tiles, strict=True):
        left, top, right, bottom = box
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        if not feather:
            total[top:bottom, left:right] = pixels
            weights[top:bottom, left:right] = 1.0
            continue
        ramp_y = _ramp(top, bottom, [b for b in boxes if b[0] == left])
        ramp_x = _ramp(left, right, [(b[1], b[0], b[3], b[2]) for b in boxes if b[1] == top])
        weight = (ramp_y[:, None] * ramp_x[None, :])[:, :, None]
        total[top:bottom, left:right] += pixels * weight
        weights[top:bottom, left:right] += weight
    out = np.clip(np.rint(total / np.maximum(weights, 1e-12)), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


def _ramp(start: int, end: int, column: Sequence[Box]) -> np.ndarray:
    """A tile's weight along one axis: rising across the band it shares with the tile before it,
    falling across the band shared with the tile after it, 1 elsewhere. `column` holds the tiles in
    line with it, as (_, start, _, end) along this axis."""
    ramp = np.ones(end - start)
    before = [b[3] for b in column if b[1] < start < b[3]]
    after = [b[1] for b in column if start < b[1] < end]
    if before:
        band = max(before) - start
        ramp[:band] = np.minimum(ramp[:band], (np.arange(band) + 0.5) / band)
    if after:
        band = end - min(after)
        ramp[-band:] = np.minimum(ramp[-band:], ((np.arange(band) + 0.5) / band)[::-1])
    return ramp
