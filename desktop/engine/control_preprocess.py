"""Control-image preprocessors without learned weights: numpy and Pillow only (no Qt, no torch, no OpenCV).

Each takes an RGB image already at the working size and returns float32 (height, width, 3): values in
[0, 1], what diffusers' ControlNet pipelines read for an image (they do not normalise control images to
[-1, 1]). The inpaint preprocessor marks the pixels to repaint with -1, the value ControlNet 1.1's
inpaint model was trained with (A1111's extension and diffusers' example do the same).

Canny follows OpenCV's `cv2.Canny(image, low, high)`, which A1111's extension calls: 3x3 Sobel on the
grayscale image, L1 gradient magnitude, non-maximum suppression along the gradient direction, then
hysteresis (strong edges above `high`, weak ones above `low` kept where they touch a strong one). No
blur first, as OpenCV does none. Learned preprocessors (depth, lineart, pose) need weights the user
imports: they are named here (LEARNED) and run by desktop/engine/backends/annotators.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from desktop.engine.errors import InvalidRequest

PREPROCESSORS = ("none", "canny", "softedge", "scribble", "tile", "inpaint", "blur", "gray")
# Preprocessors that run a network from the control library (an imported annotator of that task).
LEARNED = ("depth", "lineart", "openpose", "openpose_hand", "openpose_face", "openpose_full")
# A1111's extension names its modules differently; these are the names it writes as "Module:".
A1111_MODULES = {
    "none": "none", "canny": "canny", "softedge": "softedge_gradient", "scribble": "scribble_thr",
    "tile": "tile_resample", "inpaint": "inpaint_only", "blur": "blur_gaussian", "gray": "recolor_luminance",
    "depth": "depth_anything", "lineart": "lineart_realistic", "openpose": "openpose",
    "openpose_hand": "openpose_hand", "openpose_face": "openpose_face", "openpose_full": "openpose_full",
}  # fmt: skip
# Other module names A1111 writes that mean the same output (inverse relative depth as grey).
_READ_AS = {"invert": "scribble", "depth_midas": "depth", "depth_anything_v2": "depth"}
# Threshold A / B as the extension writes them; -1 where a module has no such slider.
DEFAULT_THRESHOLDS = {
    "none": (-1.0, -1.0), "canny": (100.0, 200.0), "softedge": (-1.0, -1.0), "scribble": (127.0, -1.0),
    "tile": (1.0, -1.0), "inpaint": (-1.0, -1.0), "depth": (-1.0, -1.0), "lineart": (-1.0, -1.0),
    "openpose": (-1.0, -1.0), "openpose_hand": (-1.0, -1.0), "openpose_face": (-1.0, -1.0),
    "openpose_full": (-1.0, -1.0), "blur": (9.0, -1.0), "gray": (1.0, -1.0),
}  # fmt: skip


@dataclass(frozen=True)
class Thresholds:
    a: float = -1.0
    b: float = -1.0


def preprocessor_from_module(module: str) -> str | None:
    """Marble's preprocessor for a module name A1111 wrote, or None when Marble has no such preprocessor."""
    for name, a1111 in A1111_MODULES.items():
        if module in (name, a1111):
            return name
    # The extension names IP-Adapter modules by encoder (ip-adapter_clip_sd15, ip-adapter_clip_sdxl,
    # ip-adapter_clip_h, ...) or face model (ip-adapter_face_id, ip-adapter_face_id_plus); Marble tells what
    # an adapter reads from the adapter file itself, so all read back as one.
    if module.startswith("ip-adapter"):
        return "ip-adapter"
    return _READ_AS.get(module)


def preprocess(
    name: str, image: Image.Image, mask: Image.Image | None = None, thresholds: Thresholds | None = None
) -> np.ndarray:
    """The control image for `image` (RGB, working size) by preprocessor `name`; float32 (H, W, 3)."""
    if name in LEARNED:
        raise InvalidRequest(f"The {name} preprocessor needs its network: it runs during generation.")
    if name not in PREPROCESSORS:
        raise InvalidRequest(f"Unknown control preprocessor {name!r}: use one of {', '.join(PREPROCESSORS)}.")
    a, b = DEFAULT_THRESHOLDS[name]
    if thresholds is not None:
        a = thresholds.a if thresholds.a >= 0 else a
        b = thresholds.b if thresholds.b >= 0 else b
    rgb = image.convert("RGB")
    steps: dict[str, Callable[[], np.ndarray]] = {
        "none": lambda: _unit(np.asarray(rgb, dtype=np.float32) / 255.0),
        "canny": lambda: _gray3(canny(_gray(rgb), a, b)),
        "softedge": lambda: _gray3(soft_edge(_gray(rgb))),
        "scribble": lambda: _gray3((_gray(rgb) < a).astype(np.float32)),
        "tile": lambda: _tile(rgb, a),
        "inpaint": lambda: _inpaint(rgb, mask),
        "blur": lambda: gaussian_blur(np.asarray(rgb, dtype=np.float32), a).round() / 255.0,
        "gray": lambda: _gray3(_luminance(rgb, a)),
    }
    return steps[name]()


def to_preview(control: np.ndarray) -> Image.Image:
    """An RGB image of a control array for the window; the inpaint marker (-1) shows black."""
    return Image.fromarray((np.clip(control, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------------ canny


def canny(gray: np.ndarray, low: float = 100.0, high: float = 200.0) -> np.ndarray:
    """Edges (0/1 float32) of a grayscale image (0-255 values)."""
    if low > high:
        low, high = high, low
    gx, gy = _sobel(gray)
    magnitude = np.abs(gx) + np.abs(gy)  # OpenCV's default L1 gradient
    thin = _non_max_suppression(magnitude, gx, gy)
    strong = thin > high
    weak = thin > low
    return _hysteresis(strong, weak).astype(np.float32)


def _sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Replicated border: the frame of the image is not an edge.
    p = np.pad(gray.astype(np.float32), 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def _non_max_suppression(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep a pixel only where it is a maximum along its gradient direction (4 quantised directions)."""
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    p = np.pad(magnitude, 1, mode="constant")
    center = p[1:-1, 1:-1]
    neighbours = {
        0: (p[1:-1, :-2], p[1:-1, 2:]),  # horizontal gradient: compare left/right
        45: (p[:-2, :-2], p[2:, 2:]),
        90: (p[:-2, 1:-1], p[2:, 1:-1]),
        135: (p[:-2, 2:], p[2:, :-2]),
    }
    sector = (np.round(angle / 45.0).astype(int) % 4) * 45
    keep = np.zeros(magnitude.shape, dtype=bool)
    for direction, (before, after) in neighbours.items():
        # Ties: the first of a plateau (">" one side, ">=" the other) keeps a one-pixel line.
        here = (sector == direction) & (center > before) & (center >= after)
        keep |= here
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    edges = strong.copy()
    while True:
        p = np.pad(edges, 1)
        grown = np.zeros_like(edges)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                grown |= p[dy : dy + edges.shape[0], dx : dx + edges.shape[1]]
        grown &= weak
        grown |= edges
        if np.array_equal(grown, edges):
            return edges
        edges = grown


# -------------------------------------------------------------------------------------- the rest


def soft_edge(gray: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the lightly blurred image, scaled to [0, 1]: soft edges, no threshold."""
    blurred = np.asarray(
        Image.fromarray(gray.astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32
    )
    gx, gy = _sobel(blurred)
    magnitude = np.hypot(gx, gy)
    peak = float(magnitude.max())
    return magnitude / peak if peak > 0 else magnitude


def _tile(rgb: Image.Image, rate: float) -> np.ndarray:
    # A1111's tile_resample: the image shrunk by `rate` (>= 1) and grown back, which blurs detail away.
    rate = max(1.0, rate)
    small = rgb.resize((max(1, round(rgb.width / rate)), max(1, round(rgb.height / rate))), Image.Resampling.BICUBIC)
    back = small.resize(rgb.size, Image.Resampling.BICUBIC) if small.size != rgb.size else small
    return np.asarray(back, dtype=np.float32) / 255.0


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A1111's blur_gaussian (`cv2.GaussianBlur(image, (0, 0), sigma)` on 8-bit pixels): a separable Gaussian of
    OpenCV's size for 8-bit images (2 * round(3 * sigma) + 1 taps), the border mirrored without repeating its
    edge pixel (OpenCV's BORDER_REFLECT_101). `image`: (H, W, C) float32 in 0-255."""
    sigma = max(float(sigma), 0.01)
    radius = max(1, round(sigma * 3.0))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    kernel = (kernel / kernel.sum()).astype(np.float32)
    out = image
    for axis in (0, 1):
        side = out.shape[axis]
        # Mirrored without the edge pixel, folding again where the kernel is wider than the image.
        period = max(2 * (side - 1), 1)
        index = np.abs(np.arange(-radius, side + radius)) % period
        padded = np.take(out, np.where(index >= side, period - index, index), axis=axis)
        total = np.zeros_like(out)
        for tap, weight in enumerate(kernel):
            window = np.take(padded, np.arange(tap, tap + side), axis=axis)
            total += weight * window
        out = total
    return out


def _luminance(rgb: Image.Image, gamma: float) -> np.ndarray:
    """A1111's recolor_luminance: the L of OpenCV's 8-bit Lab (L* of the sRGB pixel, scaled to 0-255 and
    rounded), raised to `gamma` and truncated to 8 bits as the extension does; float 0-1."""
    srgb = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.212671, 0.715160, 0.072169])  # OpenCV's D65 sRGB -> Y row
    lightness = np.where(y > 0.008856, 116.0 * np.cbrt(y) - 16.0, 903.3 * y)
    l8 = np.clip(np.round(lightness * 255.0 / 100.0), 0, 255).astype(np.float32) / np.float32(255.0)
    return np.clip(l8 ** np.float32(max(gamma, 0.01)) * np.float32(255.0), 0, 255).astype(np.uint8) / 255.0


def _inpaint(rgb: Image.Image, mask: Image.Image | None) -> np.ndarray:
    if mask is None:
        raise InvalidRequest("The inpaint control preprocessor needs a mask: give the job a source image and a mask.")
    image = np.asarray(rgb, dtype=np.float32) / 255.0
    repaint = np.asarray(mask.convert("L").resize(rgb.size), dtype=np.float32) > 127.5
    image = image.copy()
    image[repaint] = -1.0
    return image


def _gray(rgb: Image.Image) -> np.ndarray:
    return np.asarray(rgb.convert("L"), dtype=np.float32)


def _gray3(plane: np.ndarray) -> np.ndarray:
    return _unit(np.repeat(plane[..., None].astype(np.float32), 3, axis=2))


def _unit(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)
