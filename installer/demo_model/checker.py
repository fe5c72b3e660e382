"""An analytic judge of one-shape pictures: no learned model, only pixels and geometry.

The background is the colour most of the border has; the foreground is every pixel far from it, of
which the largest connected piece is the shape. Its colour is the palette entry nearest its median
pixel. Soft edges are then split at the midpoint: a pixel belongs to the shape when it is nearer the
shape's colour than the background's, so a blurred edge neither grows nor rounds the shape. From the
refined piece: its position (which third of the picture its centroid falls in, per axis), its kind (an
upright triangle narrows to the top; a square fills the corners of its box, a circle does not) and its
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
_TRIANGLE_TAPER = 0.7
_SQUARE_CORNERS = 0.45
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
    taper: float = 0.0  # width at 1/4 of the height over width at 3/4


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
    piece = _midpoint_split(pixels, piece, colour, background)
    ys, xs = np.nonzero(piece)
    row = _ROWS[min(2, int(3 * ys.mean() / height))]
    column = _COLUMNS[min(2, int(3 * xs.mean() / width))]
    position = " ".join(part for part in (row, column) if part) or "centre"
    box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(piece.sum()) / float(box_area)
    taper = _taper(piece, ys.min(), ys.max())
    corners = _corner_fill(piece, ys.min(), ys.max(), xs.min(), xs.max())
    kind = "triangle" if taper < _TRIANGLE_TAPER else "square" if corners >= _SQUARE_CORNERS else "circle"
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / max(height, width)
    size = "large" if side > (EXTENT["small"] + EXTENT["large"]) / 2 else "small"
    return Measurement(background, colour, position, kind, size, fill, area, taper)


def _corner_fill(piece: np.ndarray, top: int, bottom: int, left: int, right: int) -> float:
    """How full the corners of the shape's box are (the median of the four): a square's are full, a
    circle's nearly empty. The median, so a circle cut square by the picture's edge stays a circle."""
    height, width = bottom - top + 1, right - left + 1
    # Never wider than the box: a corner box reaching past its left edge would index from the end.
    side = min(max(2, round(0.2 * min(height, width))), height, width)
    boxes = [
        piece[top : top + side, left : left + side],
        piece[top : top + side, right + 1 - side : right + 1],
        piece[bottom + 1 - side : bottom + 1, left : left + side],
        piece[bottom + 1 - side : bottom + 1, right + 1 - side : right + 1],
    ]
    return float(np.median([box.mean() for box in boxes]))


def _taper(piece: np.ndarray, top: int, bottom: int) -> float:
    """Width a quarter of the way down the shape over width three quarters down: an upright triangle
    about 1/3, a circle or a square 1."""
    height = bottom - top
    upper = piece[top + height // 4].sum()
    lower = piece[top + (3 * height) // 4].sum()
    return float(upper) / float(max(lower, 1))


def _midpoint_split(pixels: np.ndarray, piece: np.ndarray, colour: str, background: str) -> np.ndarray:
    """The piece, re-cut where each pixel is nearer the shape's colour than the background's."""
    near_shape = np.linalg.norm(pixels - np.array(COLOURS[colour], dtype=np.float32), axis=2)
    near_background = np.linalg.norm(pixels - np.array(COLOURS[background], dtype=np.float32), axis=2)
    around = ndimage.binary_dilation(piece, iterations=2)
    labels, count = ndimage.label(around & (near_shape < near_background))
    if count == 0:
        return piece
    areas = ndimage.sum_labels(np.ones_like(near_shape), labels, index=np.arange(1, count + 1))
    return labels == int(np.argmax(areas)) + 1
