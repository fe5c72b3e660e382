"""OpenPose hands and faces around a body pose: where to look, where the keypoints are, how they are drawn.

numpy and Pillow only (the networks run in desktop/engine/backends/annotators.py). A1111's
`openpose_hand`, `openpose_face` and `openpose_full` modules draw these over the body skeleton:

- Hand boxes come from the arm (OpenPose's rule of thumb): a square centred a third of the forearm
  beyond the wrist, 1.5 times the longer of the forearm and 0.9 x the upper arm on a side, clipped to
  the image; boxes under MIN_BOX px are dropped (too small for the network).
- Face boxes come from the head: centred on the nose, with a side of the largest of 2 x nose-neck,
  3 x eye-eye and 2 x ear-ear (those present), clipped the same way.
- Keypoints: each of the network's maps (the last, background, one excepted) resized to the box; the
  keypoint is its maximum, kept when above the threshold (hands 0.05, faces 0.05).
- Drawing (ControlNet 1.1's standard look): hand bones as 2 px lines in rainbow colours (hue i / 20 for
  bone i), joints as blue discs of radius 4; face keypoints as white discs of radius 3.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]

HAND_MAPS = 22  # 21 hand keypoints + background
FACE_MAPS = 71  # 70 face keypoints + background
MIN_BOX = 20
HAND_THRESHOLD = 0.05
FACE_THRESHOLD = 0.05
# Body parts (COCO order, as annotators.decode_pose returns them).
NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST = 2, 3, 4
L_SHOULDER, L_ELBOW, L_WRIST = 5, 6, 7
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17
# Hand bones: the wrist (0) to each finger's four joints, thumb first.
HAND_BONES = tuple(
    pair for finger in range(5) for pair in ((0 if j == 0 else 4 * finger + j, 4 * finger + j + 1) for j in range(4))
)
HAND_JOINT_COLOUR = (0, 0, 255)
FACE_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class Box:
    """A square region of the image: top-left corner and side, in pixels."""

    x: int
    y: int
    side: int


def hand_boxes(people: Sequence[Sequence[Point | None]], size: tuple[int, int]) -> list[Box]:
    """The hand boxes of each person's arms that have shoulder, elbow and wrist (left arm, then right)."""
    boxes = []
    for person in people:
        for shoulder, elbow, wrist in ((L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST)):
            a, b, c = person[shoulder], person[elbow], person[wrist]
            if a is None or b is None or c is None:
                continue
            centre = (c[0] + (c[0] - b[0]) / 3, c[1] + (c[1] - b[1]) / 3)
            side = 1.5 * max(_distance(b, c), 0.9 * _distance(a, b))
            box = _square(centre, side, size)
            if box is not None:
                boxes.append(box)
    return boxes


def face_boxes(people: Sequence[Sequence[Point | None]], size: tuple[int, int]) -> list[Box]:
    """One box per person whose nose was found and whose head gives a size (neck, both eyes or both ears)."""
    boxes = []
    for person in people:
        nose = person[NOSE]
        if nose is None:
            continue
        sides = []
        for a, b, factor in ((NOSE, NECK, 2.0), (R_EYE, L_EYE, 3.0), (R_EAR, L_EAR, 2.0)):
            pa, pb = person[a], person[b]
            if pa is not None and pb is not None:
                sides.append(factor * _distance(pa, pb))
        box = _square(nose, max(sides), size) if sides else None
        if box is not None:
            boxes.append(box)
    return boxes


def _square(centre: Point, side: float, size: tuple[int, int]) -> Box | None:
    x = max(0.0, centre[0] - side / 2)
    y = max(0.0, centre[1] - side / 2)
    # Clipped at the right and bottom edges too, staying square.
    side = min(side, size[0] - x, size[1] - y)
    if side < MIN_BOX:
        return None
    return Box(int(x), int(y), int(side))


def keypoints(maps: np.ndarray, box: Box, threshold: float) -> tuple[Point | None, ...]:
    """Image coordinates of each keypoint map's maximum (maps (N + 1, side, side) at the box's size, the
    last one background); None where the maximum is not above `threshold`."""
    found: list[Point | None] = []
    for plane in maps[:-1]:
        y, x = np.unravel_index(int(np.argmax(plane)), plane.shape)
        found.append((float(box.x + x), float(box.y + y)) if plane[y, x] > threshold else None)
    return tuple(found)


def draw_hands(canvas: Image.Image, hands: Sequence[Sequence[Point | None]]) -> Image.Image:
    """`canvas` with the hands drawn over it (in place, returned)."""
    draw = ImageDraw.Draw(canvas)
    for hand in hands:
        for index, (a, b) in enumerate(HAND_BONES):
            pa, pb = hand[a], hand[b]
            if pa is None or pb is None:
                continue
            colour = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(index / len(HAND_BONES), 1.0, 1.0))
            draw.line((_pixel(pa), _pixel(pb)), fill=colour, width=2)  # type: ignore[arg-type]
        for point in hand:
            if point is not None:
                x, y = _pixel(point)
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=HAND_JOINT_COLOUR)
    return canvas


def draw_faces(canvas: Image.Image, faces: Sequence[Sequence[Point | None]]) -> Image.Image:
    draw = ImageDraw.Draw(canvas)
    for face in faces:
        for point in face:
            if point is not None:
                x, y = _pixel(point)
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=FACE_COLOUR)
    return canvas


def _pixel(point: Point) -> tuple[int, int]:
    return int(point[0]), int(point[1])


def _distance(a: Point, b: Point) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])
