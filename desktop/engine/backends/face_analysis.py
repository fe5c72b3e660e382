"""Face detection, alignment and identity embeddings, as insightface's FaceAnalysis gives them to FaceID.

The FaceID IP-Adapters were trained on insightface's `normed_embedding` of the reference face (an SCRFD
detector, then an ArcFace recognizer on the face aligned to ArcFace's 112 px template), and the Plus
variants also on CLIP features of the same alignment at 224 px. An embedding that differs from
insightface's by more than rounding gives a different person, so every step here follows insightface's
published behaviour (python-package: model_zoo/scrfd.py, utils/face_align.py, app/face_analysis.py,
model_zoo/arcface_onnx.py). The two networks arrive as callables (the ONNX interpreter builds them,
onnx_runner.py); this module never reads a model file. numpy does the geometry; torch is imported inside
`_run` only, to call the networks (the import-linter contract lists this module).

Detection (insightface's SCRFD.detect with FaceAnalysis' det_size):
- The RGB image is resized keeping its aspect ratio so its longer side (relative to the square input)
  fills `detector_size`; the shorter side is truncated to whole pixels (`int`), and the scale recorded is
  the new height over the old height, as insightface records it. The resize is cv2's INTER_LINEAR on 8-bit
  pixels: half-pixel centres, edge pixels repeated, no antialiasing when shrinking, in cv2's fixed-point
  arithmetic (weights in 1/2048, its vector code's rounding); identical to cv2.resize of OpenCV 4.10 to
  4.13 on the sizes tested, and never more than 1 grey level from it by construction. The resized
  picture sits at the top left of a black square; the network sees (x - mean) / std as NCHW float32.
- The network's outputs are scores, box distances and (with landmarks) keypoint offsets per stride:
  6 or 9 outputs for strides 8, 16, 32 with 2 anchors per feature-map location, 10 or 15 for strides
  8..128 with 1 anchor, each optionally with a leading batch dimension of 1. Anchor centres are
  (column * stride, row * stride), row by row, columns within a row, the anchors of a location
  consecutive. A box is centre - (left, top) * stride, centre + (right, bottom) * stride; a keypoint is
  centre + offset * stride. Only scores >= threshold are kept; boxes and keypoints are divided by the
  resize scale, ordered by score, and thinned by insightface's NMS (areas and overlaps with the +1 of
  pixel-inclusive boxes; a box is dropped when its overlap with a kept one exceeds nms_threshold).
- A detector whose graph takes any input size is tried again 64 px smaller, down to 320, when 640 finds no
  face, as ComfyUI's IP-Adapter and InstantID loaders do: a face filling a close-up is found smaller.
- The faces are returned largest box first (the face ComfyUI's IPAdapter nodes and InstantID take when
  there are several; boxes of equal area stay in score order). A detector without landmark outputs
  cannot align a face: ModelError.

Alignment (insightface's face_align.norm_crop): the similarity transform (rotation, uniform scale,
translation; Umeyama's least squares, a reflection never allowed, as skimage's SimilarityTransform
estimates it) from the 5 landmarks to ArcFace's template scaled by size / 112, or for sizes that are
multiples of 128 (and not of 112) scaled by size / 128 and shifted right by 8 * size / 128. The crop is
cv2.warpAffine's bilinear sampling with a black border, with OpenCV 4's source coordinates in 1/32 pixel:
identical to cv2.warpAffine of OpenCV 4.10 to 4.13 (what insightface installs run) on the maps tested.
OpenCV 5 computes the coordinates in floating point: its crops differ from these by up to 1 grey level
on smooth images, more on pixel noise.

Identity (insightface's ArcFaceONNX.get + Face.normed_embedding): the 112 px alignment as RGB NCHW,
(x - mean) / std, through the recognizer; its output flattened and divided by its L2 norm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from desktop.engine.errors import InvalidRequest, ModelError

if TYPE_CHECKING:
    from torch import Tensor

# ArcFace's five landmarks (left eye, right eye, nose, left and right mouth corner) in its 112 px crop.
ARCFACE_TEMPLATE = (
    (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041),
)  # fmt: skip
ARCFACE_SIZE = 112
LANDMARKS = 5
# SCRFD's output counts -> (strides, anchors per feature-map location, has landmark outputs).
DETECTOR_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
# cv2's fixed-point precisions: resize weights in 1/2048 (INTER_RESIZE_COEF_BITS = 11), warp source
# coordinates in 1/32 pixel (INTER_BITS = 5) from an affine map evaluated in 1/1024 (AB_BITS = 10).
RESIZE_WEIGHT_STEPS = 2048
WARP_COORDINATE_STEPS = 32
WARP_MAP_STEPS = 1024

Network = Callable[["Tensor"], Sequence["Tensor"]]


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in source-image pixels
    landmarks: tuple[tuple[float, float], ...]  # 5 points: left eye, right eye, nose, mouth left, right
    score: float


@dataclass(frozen=True)
class Detections:
    """One detector run decoded, in the detector input's pixels, before NMS: (n, 4), (n,), (n, 5, 2)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


# ComfyUI's retry sizes: range(640, 256, -64), every one a multiple of SCRFD's largest stride (32).
_RETRY_STEP = 64
_RETRY_FLOOR = 256


class FaceAnalyser:
    """insightface's FaceAnalysis for one detector and one recognizer (see the module docstring)."""

    def __init__(
        self,
        detector: Network,
        recognizer: Network,
        *,
        detector_mean: float = 127.5,
        detector_std: float = 128.0,
        recognizer_mean: float = 127.5,
        recognizer_std: float = 127.5,
        detector_size: int = 640,
        threshold: float = 0.5,
        nms_threshold: float = 0.4,
        retry_smaller: bool = False,
    ) -> None:
        """`retry_smaller`: when `detector_size` finds no face, try again 64 px smaller down to 320 (ComfyUI's
        IP-Adapter loaders do: a face filling a close-up is found at a smaller input); only for a detector
        whose graph takes any size."""
        if detector_size < 32 or detector_size % 32:
            # Every stride's feature map must tile the input exactly, as SCRFD's exported sizes do.
            raise ModelError(f"the face detector's input size must be a multiple of 32, not {detector_size}")
        self._detector = detector
        self._recognizer = recognizer
        self._detector_norm = (detector_mean, detector_std)
        self._recognizer_norm = (recognizer_mean, recognizer_std)
        self._detector_size = detector_size
        self._threshold = threshold
        self._nms_threshold = nms_threshold
        smaller = range(detector_size - _RETRY_STEP, _RETRY_FLOOR, -_RETRY_STEP) if retry_smaller else ()
        self._sizes = (detector_size, *smaller)

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """The faces in `image`, largest box first, at the first detector size that finds one; InvalidRequest
        when none does."""
        pixels = rgb_pixels(image)
        for size in self._sizes:
            faces = self._detect_at(pixels, size)
            if faces:
                return faces
        raise InvalidRequest(f"no face found in {_image_name(image)}")

    def _detect_at(self, pixels: np.ndarray, size: int) -> list[DetectedFace]:
        canvas, scale = detector_input(pixels, size)
        outputs = _run(self._detector, canvas, self._detector_norm)
        found = decode_detections(outputs, size, self._threshold)
        boxes = found.boxes / np.float32(scale)
        landmarks = found.landmarks / np.float32(scale)
        order = np.argsort(-found.scores, kind="stable")
        kept = order[nms(boxes[order], self._nms_threshold)]
        faces = [
            DetectedFace(
                box=tuple(float(v) for v in boxes[i]),  # type: ignore[arg-type]
                landmarks=tuple((float(x), float(y)) for x, y in landmarks[i]),
                score=float(found.scores[i]),
            )
            for i in kept
        ]
        # sorted() is stable: boxes of equal area stay in score order.
        return sorted(faces, key=lambda face: -_area(face.box))

    def identity(self, image: Image.Image, face: DetectedFace) -> Tensor:
        """The recognizer's embedding of `face`, L2-normalised: (512,) float32 for ArcFace."""
        import torch

        aligned = align_face(rgb_pixels(image), face.landmarks, ARCFACE_SIZE)
        outputs = _run(self._recognizer, aligned, self._recognizer_norm)
        if not outputs or outputs[0].size == 0:
            raise ModelError("the face recognizer gave no embedding")
        embedding = outputs[0].reshape(-1).astype(np.float32)
        norm = float(np.linalg.norm(embedding.astype(np.float64)))
        if not np.isfinite(norm) or norm == 0.0:
            raise ModelError("the face recognizer gave an embedding of zero or non-finite length")
        return torch.from_numpy(embedding / np.float32(norm))

    def crop(self, image: Image.Image, face: DetectedFace, size: int) -> Image.Image:
        """`face` aligned to ArcFace's template at `size` px (a multiple of 112 or 128)."""
        return Image.fromarray(align_face(rgb_pixels(image), face.landmarks, size), "RGB")


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey, palette and RGBA images converted (alpha dropped, as cv2.imread does)."""
    if image.width < 1 or image.height < 1:
        raise InvalidRequest(f"{_image_name(image)} is empty ({image.width} x {image.height} pixels)")
    try:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as error:  # a mode Pillow cannot turn into RGB, or unreadable pixel data
        raise InvalidRequest(
            f"{_image_name(image)} cannot be read as an RGB picture ({image.mode}): {error}"
        ) from error


def detector_input(pixels: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The square detector input (uint8, size x size x 3) and the scale from source to input pixels."""
    height, width = pixels.shape[:2]
    if height / width > 1.0:  # taller than the square input: the height fills it
        new_height, new_width = size, int(size / (height / width))
    else:
        new_width, new_height = size, int(size * (height / width))
    if new_width < 1 or new_height < 1:
        raise InvalidRequest(f"an image of {width} x {height} pixels is too narrow to find a face in")
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_height, :new_width] = resize_linear(pixels, new_width, new_height)
    return canvas, new_height / height


def resize_linear(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(pixels, (width, height)) with INTER_LINEAR on uint8 (OpenCV 4's result, bit for bit).

    cv2's fixed-point arithmetic: each row is blended horizontally with weights in 1/2048 (integers),
    then two such rows vertically with its vector code's rounding: each product with the row (shifted
    right by 4) keeps its high 16 bits, and the sum is rounded off by 2 bits. Only the two source rows
    and columns each output pixel reads are gathered, so a huge source costs little."""
    top, bottom, top_weight, bottom_weight = _linear_taps(pixels.shape[0], height, edge_weights=False)
    left, right, left_weight, right_weight = _linear_taps(pixels.shape[1], width, edge_weights=True)

    def across(rows: np.ndarray) -> np.ndarray:
        return (
            pixels[np.ix_(rows, left)].astype(np.int32) * left_weight[None, :, None]
            + pixels[np.ix_(rows, right)].astype(np.int32) * right_weight[None, :, None]
        )

    upper = (top_weight[:, None, None] * (across(top) >> 4)) >> 16
    lower = (bottom_weight[:, None, None] * (across(bottom) >> 4)) >> 16
    return np.clip((upper + lower + 2) >> 2, 0, 255).astype(np.uint8)


def _linear_taps(
    source: int, target: int, *, edge_weights: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices cv2's INTER_LINEAR reads and their integer weights
    (summing to 2048), computed in float32 as cv2 does. Past either edge the edge pixel is read twice;
    horizontally (`edge_weights`) cv2 also gives it all the weight, vertically it keeps the fraction, so
    the two rounded halves of one pixel can come out a grey level lower."""
    position = ((np.arange(target) + 0.5) * (source / target) - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = position - first.astype(np.float32)
    if edge_weights:
        fraction[(first < 0) | (first >= source - 1)] = 0.0
    second = np.clip(first + 1, 0, source - 1)
    first = np.clip(first, 0, source - 1)
    steps = np.float32(RESIZE_WEIGHT_STEPS)
    first_weight = np.rint((np.float32(1.0) - fraction) * steps).astype(np.int32)
    second_weight = np.rint(fraction * steps).astype(np.int32)
    return first, second, first_weight, second_weight


def decode_detections(outputs: Sequence[np.ndarray], size: int, threshold: float) -> Detections:
    """SCRFD's outputs for a size x size input -> the candidates scoring >= threshold, in input pixels."""
    layout = DETECTOR_LAYOUTS.get(len(outputs))
    if layout is None:
        raise ModelError(f"the face detector gives {len(outputs)} outputs; an SCRFD detector gives 6, 9, 10 or 15")
    strides, anchors, has_landmarks = layout
    if not has_landmarks:
        raise ModelError(
            "the face detector has no landmark outputs, so it cannot align faces for an identity embedding; "
            "use one with keypoints (SCRFD ..._bnkps, such as buffalo_l's det_10g.onnx)"
        )
    levels = len(strides)
    boxes, scores, landmarks = [], [], []
    for level, stride in enumerate(strides):
        cells = size // stride
        count = cells * cells * anchors
        level_scores = _output(outputs[level], count, 1, "scores", stride).reshape(-1)
        distances = _output(outputs[level + levels], count, 4, "boxes", stride) * np.float32(stride)
        offsets = _output(outputs[level + 2 * levels], count, 2 * LANDMARKS, "landmarks", stride)
        centres = anchor_centres(cells, cells, stride, anchors)
        keep = level_scores >= threshold
        boxes.append(np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], 1)[keep])
        points = centres[:, None, :] + offsets.reshape(count, LANDMARKS, 2) * np.float32(stride)
        landmarks.append(points[keep])
        scores.append(level_scores[keep])
    return Detections(np.concatenate(boxes), np.concatenate(scores), np.concatenate(landmarks))


def anchor_centres(rows: int, columns: int, stride: int, anchors: int) -> np.ndarray:
    """(rows * columns * anchors, 2) float32 (x, y): row by row, each location's anchors consecutive."""
    ys, xs = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    centres = (np.stack([xs, ys], -1).reshape(-1, 2) * stride).astype(np.float32)
    return np.repeat(centres, anchors, axis=0)


def _output(value: np.ndarray, count: int, width: int, what: str, stride: int) -> np.ndarray:
    """One detector output as (count, width) float32, a leading batch dimension of 1 removed."""
    if value.ndim == 3 and value.shape[0] == 1:
        value = value[0]
    if value.ndim == 1 and width == 1:
        value = value[:, None]
    if value.shape != (count, width):
        raise ModelError(
            f"the face detector's stride-{stride} {what} have shape {tuple(value.shape)}, not ({count}, {width}) "
            "as an SCRFD detector gives for this input size"
        )
    return value.astype(np.float32, copy=False)


def nms(boxes: np.ndarray, threshold: float) -> list[int]:
    """insightface's greedy NMS over boxes already in score order: the kept indices, best first.

    Boxes are pixel-inclusive (width x1 - x0 + 1); a box is dropped when its overlap (intersection over
    union) with a kept box is above `threshold`."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    remaining = np.arange(len(boxes))
    kept: list[int] = []
    while len(remaining):
        best, others = remaining[0], remaining[1:]
        kept.append(int(best))
        width = np.maximum(0.0, np.minimum(x1[best], x1[others]) - np.maximum(x0[best], x0[others]) + 1)
        height = np.maximum(0.0, np.minimum(y1[best], y1[others]) - np.maximum(y0[best], y0[others]) + 1)
        overlap = width * height
        remaining = others[overlap / (areas[best] + areas[others] - overlap) <= threshold]
    return kept


def alignment_matrix(landmarks: Sequence[Sequence[float]], size: int) -> np.ndarray:
    """The 2 x 3 similarity map from the 5 landmarks to ArcFace's template at `size` px."""
    if size % ARCFACE_SIZE == 0:
        ratio, shift = size / ARCFACE_SIZE, 0.0
    elif size % 128 == 0:
        # insightface's rule for 128-multiples: the 112 template in a 128 frame, centred horizontally.
        ratio = size / 128
        shift = 8.0 * ratio
    else:
        raise InvalidRequest(f"a face crop must be a multiple of 112 or 128 pixels, not {size}")
    target = np.asarray(ARCFACE_TEMPLATE, dtype=np.float32) * np.float32(ratio)
    target[:, 0] += np.float32(shift)
    source = np.asarray(landmarks, dtype=np.float64)
    if source.shape != (LANDMARKS, 2) or not np.isfinite(source).all():
        raise InvalidRequest(f"a face needs 5 finite landmarks to be aligned, not {source.tolist()}")
    return similarity_transform(source, target.astype(np.float64))


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Umeyama's least-squares rotation + uniform scale + translation taking `source` to `target`.

    A reflection would fit a mirrored face better but is not a similarity: the singular value that
    would flip is negated instead, as skimage's SimilarityTransform.estimate does."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    centred_source, centred_target = source - source_mean, target - target_mean
    variance = (centred_source**2).sum() / len(source)
    if variance == 0.0:
        raise InvalidRequest("the face's landmarks are all at one point, so the face cannot be aligned")
    covariance = centred_target.T @ centred_source / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:
        signs[-1] = -1.0
    rank = np.linalg.matrix_rank(covariance)
    if rank == 0:
        raise InvalidRequest("the face's landmarks do not determine a rotation, so the face cannot be aligned")
    if rank == 2:
        rotation = u @ np.diag(signs) @ vt
    elif np.linalg.det(u) * np.linalg.det(vt) > 0:
        rotation = u @ vt  # collinear landmarks: the null direction's sign is free, keep a rotation
    else:
        rotation = u @ np.diag([1.0, -1.0]) @ vt
    scale = (singular * signs).sum() / variance
    if not scale > 0.0:
        raise InvalidRequest("the face's landmarks do not determine a scale, so the face cannot be aligned")
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = target_mean - scale * rotation @ source_mean
    return matrix


def align_face(pixels: np.ndarray, landmarks: Sequence[Sequence[float]], size: int) -> np.ndarray:
    """insightface's norm_crop: the face warped onto ArcFace's template, (size, size, 3) uint8."""
    return warp_affine(pixels, alignment_matrix(landmarks, size), size)


def warp_affine(pixels: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """cv2.warpAffine(pixels, matrix, (size, size)): bilinear, black outside the source, uint8.

    Each output pixel (x, y) reads the source at matrix^-1 (x, y), rounded to 1/32 pixel as cv2's
    fixed-point map is; pixel centres are at whole coordinates."""
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    xs = _fixed_point_map(inverse[0], size)
    ys = _fixed_point_map(inverse[1], size)
    left, top = xs // WARP_COORDINATE_STEPS, ys // WARP_COORDINATE_STEPS
    fx = (xs % WARP_COORDINATE_STEPS / WARP_COORDINATE_STEPS)[..., None]
    fy = (ys % WARP_COORDINATE_STEPS / WARP_COORDINATE_STEPS)[..., None]
    height, width = pixels.shape[:2]

    def tap(row: np.ndarray, column: np.ndarray) -> np.ndarray:
        inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
        values = pixels[np.clip(row, 0, height - 1), np.clip(column, 0, width - 1)].astype(np.float64)
        return values * inside[..., None]

    result = (tap(top, left) * (1 - fx) + tap(top, left + 1) * fx) * (1 - fy)
    result += (tap(top + 1, left) * (1 - fx) + tap(top + 1, left + 1) * fx) * fy
    return np.clip(np.floor(result + 0.5), 0, 255).astype(np.uint8)


def _fixed_point_map(row: np.ndarray, size: int) -> np.ndarray:
    """One source coordinate of every output pixel, in 1/32 pixel, as cv2's warpAffine computes it:
    per output row round((a1 * y + a2) * 1024) + 16, per column round(a0 * x * 1024), the sum >> 5."""
    steps = np.arange(size, dtype=np.float64)
    per_row = np.rint((row[1] * steps + row[2]) * WARP_MAP_STEPS) + WARP_MAP_STEPS // WARP_COORDINATE_STEPS // 2
    per_column = np.rint(row[0] * steps * WARP_MAP_STEPS)
    return (per_row[:, None] + per_column[None, :]).astype(np.int64) // (WARP_MAP_STEPS // WARP_COORDINATE_STEPS)


def _run(network: Network, pixels: np.ndarray, norm: tuple[float, float]) -> list[np.ndarray]:
    """The network on (pixels - mean) / std as a (1, 3, H, W) float32 tensor; its outputs as numpy."""
    import torch

    mean, std = norm
    blob = ((pixels.astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
    with torch.inference_mode():
        outputs = network(torch.from_numpy(np.ascontiguousarray(blob)))
    if isinstance(outputs, torch.Tensor):  # a module with one output, not a list: not its rows
        outputs = [outputs]
    return [output.detach().to("cpu", torch.float32).numpy() for output in outputs]


def _area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _image_name(image: Image.Image) -> str:
    name = getattr(image, "filename", "")
    return str(name) if name else "the reference image"
