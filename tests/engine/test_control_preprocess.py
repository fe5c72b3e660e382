"""The built-in control preprocessors against simple references (numpy and Pillow only)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from desktop.engine.control_preprocess import (
    PREPROCESSORS,
    Thresholds,
    canny,
    preprocess,
    preprocessor_from_module,
    to_preview,
)
from desktop.engine.errors import InvalidRequest


def square(size: int = 64, box: tuple[int, int, int, int] = (16, 16, 47, 47)) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle(box, fill="white")
    return image


def test_canny_edges_of_a_white_square_lie_on_its_border_and_nowhere_else():
    edges = preprocess("canny", square())[..., 0]
    assert set(np.unique(edges)) <= {0.0, 1.0}
    ys, xs = np.nonzero(edges)
    # Every edge pixel is within one pixel of the square's outline (15..16 or 47..48 on some axis) ...
    on_border = (np.minimum(abs(xs - 15.5), abs(xs - 47.5)) <= 1) | (np.minimum(abs(ys - 15.5), abs(ys - 47.5)) <= 1)
    inside_frame = (xs >= 14) & (xs <= 49) & (ys >= 14) & (ys <= 49)
    assert on_border.all() and inside_frame.all()
    # ... the outline is closed (each side found along its whole length) and one pixel thin.
    assert edges[16:48, 15:17].any(axis=1).all() and edges[16:48, 47:49].any(axis=1).all()
    assert edges[15:17, 16:48].any(axis=0).all() and edges[47:49, 16:48].any(axis=0).all()
    assert edges[32, :].sum() == 2 and edges[:, 32].sum() == 2
    assert preprocess("canny", Image.new("RGB", (64, 64), "gray")).max() == 0.0  # flat: no edges


def test_canny_hysteresis_keeps_weak_edges_only_where_they_touch_strong_ones():
    gray = np.zeros((32, 64), dtype=np.float32)
    gray[:, 16:] = 30.0  # a weak step (L1 Sobel magnitude 120)
    gray[12:20, 16:] = 130.0  # strong along part of the same line
    kept = canny(gray, 100, 200)
    assert kept[:, 15:17].any(axis=1).all()  # the weak parts are kept: they run on from the strong part
    alone = np.zeros((32, 64), dtype=np.float32)
    alone[:, 16:] = 30.0
    assert not canny(alone, 100, 200).any()  # only weak: dropped
    assert canny(alone, 100, 110).any()  # strong enough once the high threshold drops


def test_soft_edge_scribble_tile_and_none():
    image = square()
    soft = preprocess("softedge", image)[..., 0]
    assert soft.max() == pytest.approx(1.0) and soft[32, 32] == 0.0 and soft[32, 16] > 0.5
    assert 0.0 < soft[32, 13] < soft[32, 16]  # soft: it fades away from the edge
    scribble = preprocess("scribble", Image.new("RGB", (8, 8), "white").copy())
    assert scribble.max() == 0.0
    drawn = Image.new("RGB", (8, 8), "white")
    drawn.putpixel((3, 4), (0, 0, 0))
    lines = preprocess("scribble", drawn)[..., 0]
    assert lines[4, 3] == 1.0 and lines.sum() == 1.0  # dark strokes become white lines on black
    assert np.array_equal(preprocess("tile", image), np.asarray(image, dtype=np.float32) / 255)  # rate 1: as is
    blurred = preprocess("tile", image, thresholds=Thresholds(a=4.0))
    assert 0.1 < blurred[32, 16, 0] < 0.9  # the edge is smeared
    plain = preprocess("none", image)
    assert plain.shape == (64, 64, 3) and plain.dtype == np.float32 and plain.max() == 1.0


def test_inpaint_marks_the_masked_pixels_with_minus_one():
    image = Image.new("RGB", (16, 16), (255, 0, 0))
    mask = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 7, 15), fill=255)
    result = preprocess("inpaint", image, mask)
    assert (result[:, :8] == -1.0).all() and np.allclose(result[:, 8:], [1.0, 0.0, 0.0])
    with pytest.raises(InvalidRequest, match="needs a mask"):
        preprocess("inpaint", image)
    assert np.asarray(to_preview(result))[:, :8].max() == 0  # shown black


def test_unknown_names_are_refused_and_a1111_modules_map_back():
    with pytest.raises(InvalidRequest, match="Unknown control preprocessor 'hed'"):
        preprocess("hed", square())
    # Learned ones run in the backend with their network (tests/engine/test_annotators.py), never here.
    with pytest.raises(InvalidRequest, match="The depth preprocessor needs its network"):
        preprocess("depth", square())
    assert [preprocessor_from_module(n) for n in ("canny", "softedge_gradient", "tile_resample", "scribble_hed")] == [
        "canny", "softedge", "tile", None
    ]
    assert set(PREPROCESSORS) == {"none", "canny", "softedge", "scribble", "tile", "inpaint", "blur", "gray"}
    assert [preprocessor_from_module(n) for n in ("blur_gaussian", "recolor_luminance")] == ["blur", "gray"]


def photo(seed: int = 1) -> np.ndarray:
    """Seeded noise with a flat red block and a few pure colours: every branch of the colour maths."""
    pixels = np.random.default_rng(seed).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    pixels[5:20, 10:30] = (250, 30, 60)
    pixels[0, :6] = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (3, 3, 3)]
    return pixels


@pytest.mark.parametrize("sigma", [0.5, 2.0, 9.0, 30.0])  # 30: the kernel is wider than the picture's height
def test_blur_is_opencvs_gaussian_blur_as_a1111_runs_it(sigma):
    import cv2  # the reference A1111's blur_gaussian calls; a test-only dependency

    pixels = photo()
    ours = preprocess("blur", Image.fromarray(pixels), None, Thresholds(sigma, -1.0)) * 255.0
    expected = cv2.GaussianBlur(pixels, (0, 0), sigma).astype(np.float32)
    difference = np.abs(ours - expected)  # OpenCV's 8-bit path is fixed point: a level here and there
    assert difference.max() <= 2.0 and difference.mean() < 0.4, (difference.max(), difference.mean())
    # The default is A1111's sigma 9.
    assert np.array_equal(preprocess("blur", Image.fromarray(pixels)), preprocess(
        "blur", Image.fromarray(pixels), None, Thresholds(9.0, -1.0)))


@pytest.mark.parametrize("gamma", [1.0, 0.6, 2.2])
def test_gray_is_the_l_of_opencvs_lab_raised_to_the_gamma_as_a1111_runs_it(gamma):
    import cv2

    pixels = photo()
    ours = preprocess("gray", Image.fromarray(pixels), None, Thresholds(gamma, -1.0))
    assert np.array_equal(ours[..., 0], ours[..., 2])  # grey: three equal channels
    lightness = cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB)[:, :, 0].astype(np.float32) / 255.0
    expected = (lightness**gamma * 255.0).clip(0, 255).astype(np.uint8)
    difference = np.abs(ours[..., 0] * 255.0 - expected)  # OpenCV's Lab is tabulated: a level here and there
    assert difference.max() <= 3.0 and difference.mean() < 0.2, (difference.max(), difference.mean())
    # Black, white and pure red, worked by hand: L* 0, 100 and 53.24 (-> 136 of 255).
    assert [round(ours[0, i, 0] * 255) for i in range(3)] == [0, 255, round((136 / 255) ** gamma * 255 - 0.5)]
