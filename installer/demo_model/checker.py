"""An analytic judge of one-shape pictures: no learned model, only pixels and geometry.

The background is the colour most of the border has; the foreground is every pixel far from it, of
which the largest connected piece is the shape. From that piece: its colour (the palette entry nearest
its median pixel), its position (which third of the picture its centroid falls in, per axis), its kind
(how much of its bounding box it fills: a triangle half, a circle pi/4, a square all of it) and its
size (the bounding box's side against the midpoint between the two trained sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from installer.demo_model.scenes import COLOURS, EXTENT

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _NAMES], dtype=np.float32)
_FOREGROUND_DISTANCE = 50.0  # RGB distance from the background colour; palette entries are >= 82 apart
_MIN_AREA = 0.004  # of the picture: anything smaller is noise, not a shape
_ROWS = ("top", "", "bottom")
_COLUMNS = ("left", "", "right")


@dataclass(frozen=True)
class Measurement:
    background: str
    colour: str  # "" when no shape was found
    position: str  # a key of scenes.POSITIONS, or ""
    kind: str  # circle | square | triangle | ""
    size: str  # small | large | ""
    fill_ratio: float  # of the bounding box
    area: float  # of the picture


def nearest_colour(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(np.linalg.norm(_PALETTE - rgb.astype(np.float32), axis=1)))]


def measure(image: Image.Image | np.ndarray) -> Measurement:
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    height, width = pixels.shape[:2]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = nearest_colour(np.median(border, axis=0))
    distance = np.linalg.norm(pixels - np.array(COLOURS[background], dtype=np.float32), axis=2)
    labels, count = ndimage.label(distance > _FOREGROUND_DISTANCE)
    if count == 0:
        return Measurement(background, "", "", "", "", 0.0, 0.0)
    areas = ndimage.sum_labels(np.ones_like(distance), labels, index=np.arange(1, count + 1))
    biggest = int(np.argmax(areas)) + 1
    area = float(areas[biggest - 1]) / (height * width)
    if area < _MIN_AREA:
        return Measurement(background, "", "", "", "", 0.0, area)
    piece = labels == biggest
    colour = nearest_colour(np.median(pixels[piece], axis=0))
    ys, xs = np.nonzero(piece)
    row = _ROWS[min(2, int(3 * ys.mean() / height))]
    column = _COLUMNS[min(2, int(3 * xs.mean() / width))]
    position = " ".join(part for part in (row, column) if part) or "centre"
    box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(piece.sum()) / float(box_area)
    kind = "triangle" if fill < 0.64 else "circle" if fill < 0.89 else "square"
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / max(height, width)
    size = "large" if side > (EXTENT["small"] + EXTENT["large"]) / 2 else "small"
    return Measurement(background, colour, position, kind, size, fill, area)
