"""Face analysis for FaceID (desktop/engine/backends/face_analysis.py) against insightface's published rules:
SCRFD decoding checked against a plain loop-by-loop reimplementation on random network outputs, a planted
face, NMS's pixel-inclusive areas, the detector input against cv2.resize, the ArcFace alignment against a
linear least-squares fit and cv2.warpAffine (OpenCV 4, the reference insightface installs use), the 224 and
256 crops, the normalised embedding of a random convolutional recognizer, and the refusals."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from desktop.engine.backends import face_analysis as fa
from desktop.engine.errors import InvalidRequest, ModelError

# ArcFace's published 112 px template (insightface's arcface_dst), written out here rather than read from
# the module under test; insightface keeps it in float32, so the targets are those float32 values.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
).astype(np.float64)


# --------------------------------------------------------------------------------------------------
# Tiny networks


class OutputsDetector(torch.nn.Module):
    """An SCRFD-shaped detector whose outputs are given; it records the input it was shown."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        super().__init__()
        self.outputs = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in outputs]
        self.seen: torch.Tensor | None = None

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        self.seen = image.clone()
        return list(self.outputs)


class ListOutputs(torch.nn.Sequential):
    """A network that returns its one output in a list, as the ONNX runner returns a graph's outputs."""

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [super().forward(image)]


def conv_recognizer(seed: int = 0, width: int = 512) -> torch.nn.Module:
    """A random ArcFace-shaped recognizer: (1, 3, 112, 112) -> [(1, width)]."""
    torch.manual_seed(seed)
    return ListOutputs(
        torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.PReLU(4), torch.nn.Conv2d(4, 8, 3, stride=3),
        torch.nn.Flatten(), torch.nn.Linear(8 * 9 * 9, width),
    ).eval()  # fmt: skip


def no_recognizer(image: torch.Tensor) -> list[torch.Tensor]:
    raise AssertionError("detection must not run the recognizer")


def random_outputs(rng: np.random.Generator, size: int, strides=(8, 16, 32), anchors=2, batch=False):
    """Random SCRFD outputs in insightface's order: scores per stride, boxes per stride, keypoints per stride."""
    counts = [(size // s) ** 2 * anchors for s in strides]
    scores = [rng.random((n, 1)) for n in counts]
    boxes = [rng.uniform(0.3, 4.0, (n, 4)) for n in counts]
    points = [rng.uniform(-3.0, 3.0, (n, 10)) for n in counts]
    outputs = scores + boxes + points
    return [o[None] for o in outputs] if batch else outputs


def smooth_image(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    wave = np.sin(x / 9.0 + y / 13.0)[..., None] * np.array([100.0, 60.0, -80.0])
    return np.clip(127 + wave + 20 * np.cos(y / 5.0)[..., None], 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# The reference: insightface's rules written out one anchor at a time


def reference_faces(outputs, size, image_height, image_width, threshold, nms_threshold, strides=(8, 16, 32), anchors=2):
    """(box, landmarks, score) per face, largest box first, decoded the slow obvious way."""
    outputs = [np.asarray(o, dtype=np.float64).reshape(np.asarray(o).shape[-2:]) for o in outputs]
    if image_height / image_width > 1:
        new_height = size
    else:
        new_height = int(size * image_height / image_width)
    scale = new_height / image_height
    levels = len(strides)
    candidates = []
    for level, stride in enumerate(strides):
        scores, distances, offsets = outputs[level], outputs[levels + level], outputs[2 * levels + level]
        n = 0
        for row in range(size // stride):
            for column in range(size // stride):
                for _ in range(anchors):
                    if scores[n, 0] >= threshold:
                        cx, cy = column * stride, row * stride
                        d = distances[n] * stride
                        box = [(cx - d[0]) / scale, (cy - d[1]) / scale, (cx + d[2]) / scale, (cy + d[3]) / scale]
                        xs = [cx + offsets[n, 2 * k] * stride for k in range(5)]
                        ys = [cy + offsets[n, 2 * k + 1] * stride for k in range(5)]
                        points = [(x / scale, y / scale) for x, y in zip(xs, ys, strict=True)]
                        candidates.append((box, points, scores[n, 0]))
                    n += 1
    candidates.sort(key=lambda c: -c[2])
    kept = []
    for candidate in candidates:
        if all(overlap_plus_one(candidate[0], k[0]) <= nms_threshold for k in kept):
            kept.append(candidate)
    return sorted(kept, key=lambda c: -(c[0][2] - c[0][0]) * (c[0][3] - c[0][1]))


def overlap_plus_one(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = w * h
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def assert_faces_match(faces, expected) -> None:
    assert len(faces) == len(expected)
    for face, (box, points, score) in zip(faces, expected, strict=True):
        np.testing.assert_allclose(face.box, box, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(face.landmarks, points, rtol=1e-5, atol=1e-3)
        assert face.score == pytest.approx(score, abs=1e-6)


def least_squares_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The similarity x' = a x - b y + tx, y' = b x + a y + ty minimising squared error: linear in (a, b, tx, ty)."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        values += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def similarity(angle_degrees: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_degrees)) * scale, math.sin(math.radians(angle_degrees)) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def face_at(landmarks: np.ndarray, box=(0.0, 0.0, 1.0, 1.0), score: float = 0.9) -> fa.DetectedFace:
    return fa.DetectedFace(box=box, landmarks=tuple(map(tuple, landmarks.tolist())), score=score)


# --------------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize(("height", "width"), [(150, 200), (260, 130), (128, 128)])
def test_decoding_matches_the_reference_on_random_outputs(batch, height, width):
    rng = np.random.default_rng(height + width + batch)
    outputs = random_outputs(rng, 128, batch=batch)
    analyser = fa.FaceAnalyser(OutputsDetector(outputs), no_recognizer, detector_size=128, threshold=0.93)
    faces = analyser.detect(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
    expected = reference_faces(outputs, 128, height, width, 0.93, 0.4)
    assert len(expected) >= 5  # enough candidates, some overlapping, for order and NMS to matter
    assert_faces_match(faces, expected)


def test_five_stride_detectors_decode_with_one_anchor():
    rng = np.random.default_rng(5)
    strides = (8, 16, 32, 64, 128)
    outputs = random_outputs(rng, 128, strides=strides, anchors=1)
    analyser = fa.FaceAnalyser(OutputsDetector(outputs), no_recognizer, detector_size=128, threshold=0.9)
    faces = analyser.detect(Image.new("RGB", (128, 96)))
    assert_faces_match(faces, reference_faces(outputs, 128, 96, 128, 0.9, 0.4, strides=strides, anchors=1))


def planted_outputs(size: int, plants: list[tuple[int, int, int, int, np.ndarray, np.ndarray, float]]):
    """Outputs scoring 0 everywhere but at (stride, row, column, anchor), with the given box and landmarks
    (detector-input pixels) encoded as SCRFD distances from that anchor's centre."""
    strides = (8, 16, 32)
    scores = [np.zeros(((size // s) ** 2 * 2, 1)) for s in strides]
    boxes = [np.zeros(((size // s) ** 2 * 2, 4)) for s in strides]
    points = [np.zeros(((size // s) ** 2 * 2, 10)) for s in strides]
    for stride, row, column, anchor, box, landmarks, score in plants:
        level = strides.index(stride)
        index = (row * (size // stride) + column) * 2 + anchor
        centre = np.array([column * stride, row * stride], dtype=float)
        scores[level][index] = score
        boxes[level][index] = np.concatenate([centre - box[:2], box[2:] - centre]) / stride
        points[level][index] = ((landmarks - centre) / stride).reshape(-1)
    return scores + boxes + points


def test_a_planted_face_comes_out_in_source_pixels_and_the_largest_face_first():
    # A 400 x 300 picture into a 160 px input: scale 0.4. Face A (large, lower score) and face B (small,
    # higher score), plus a duplicate of A at the next anchor that NMS must remove.
    scale = 0.4
    big_box = np.array([60.0, 50.0, 260.0, 290.0])
    big_points = apply(similarity(10, 2.0, 100, 30), TEMPLATE)
    small_box = np.array([300.0, 40.0, 380.0, 130.0])
    small_points = apply(similarity(-5, 0.7, 300, 40), TEMPLATE)
    plants = [
        (16, 4, 4, 1, big_box * scale, big_points * scale, 0.7),
        (16, 4, 5, 0, (big_box + [4, 2, 6, 0]) * scale, big_points * scale, 0.6),
        (8, 3, 17, 0, small_box * scale, small_points * scale, 0.95),
    ]
    detector = OutputsDetector(planted_outputs(160, plants))
    faces = fa.FaceAnalyser(detector, no_recognizer, detector_size=160).detect(Image.new("RGB", (400, 300)))
    assert len(faces) == 2
    np.testing.assert_allclose(faces[0].box, big_box, atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks, big_points, atol=1e-3)
    assert faces[0].score == pytest.approx(0.7)
    np.testing.assert_allclose(faces[1].box, small_box, atol=1e-3)
    np.testing.assert_allclose(faces[1].landmarks, small_points, atol=1e-3)


def test_scores_at_the_threshold_are_kept():
    box, points = np.array([20.0, 20.0, 60.0, 70.0]), apply(similarity(0, 0.4, 20, 20), TEMPLATE)
    for score, found in ((0.5, 1), (np.nextafter(np.float32(0.5), np.float32(0)), 0)):
        detector = OutputsDetector(planted_outputs(96, [(16, 2, 2, 0, box, points, score)]))
        analyser = fa.FaceAnalyser(detector, no_recognizer, detector_size=96, threshold=0.5)
        if found:
            assert len(analyser.detect(Image.new("RGB", (96, 96)))) == 1
        else:
            with pytest.raises(InvalidRequest, match="no face found"):
                analyser.detect(Image.new("RGB", (96, 96)))


def test_nms_counts_boxes_pixel_inclusive():
    # Two 10 x 10 pixel boxes sharing 5 columns: overlap 50 / 150 = 0.333 with the +1 (0.286 without).
    boxes = np.array([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]], dtype=np.float32)
    assert fa.nms(boxes, 0.3) == [0]
    assert fa.nms(boxes, 0.34) == [0, 1]
    # Boxes one pixel apart still touch: x 0..9 and 10..19 do not, 0..9 and 9..18 share a column.
    assert fa.nms(np.array([[0, 0, 9, 9], [9, 0, 18, 9]], dtype=np.float32), 0.0) == [0]
    assert fa.nms(np.array([[0, 0, 9, 9], [10, 0, 19, 9]], dtype=np.float32), 0.0) == [0, 1]


def test_anchor_centres_run_along_rows_with_each_locations_anchors_together():
    centres = fa.anchor_centres(2, 3, 16, 2)
    columns_then_rows = [(x, y) for y in (0, 16) for x in (0, 16, 32) for _ in range(2)]
    assert [tuple(c) for c in centres.tolist()] == columns_then_rows


@pytest.mark.parametrize(("height", "width"), [(300, 400), (500, 230), (64, 64), (37, 1000), (3, 2)])
def test_the_detector_sees_the_image_resized_like_cv2_on_a_black_square(height, width):
    pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    detector = OutputsDetector(random_outputs(np.random.default_rng(0), 128))
    with pytest.raises(InvalidRequest):  # scores below the threshold: no face, but the input was seen
        fa.FaceAnalyser(detector, no_recognizer, detector_size=128, threshold=2.0).detect(Image.fromarray(pixels))
    if height / width > 1:
        new_height, new_width = 128, int(128 / (height / width))
    else:
        new_width, new_height = 128, int(128 * (height / width))
    expected = np.zeros((128, 128, 3), dtype=np.float32)
    expected[:new_height, :new_width] = cv2.resize(pixels, (new_width, new_height))
    expected = ((expected - 127.5) / 128.0).transpose(2, 0, 1)[None]
    assert detector.seen is not None and detector.seen.dtype == torch.float32
    assert np.array_equal(detector.seen.numpy(), expected)


def test_grey_palette_and_rgba_images_are_converted_to_rgb():
    rgb = Image.fromarray(smooth_image(90, 120))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    seen = []
    for image in (rgb, rgb.convert("L"), rgb.convert("P"), rgba):
        detector = OutputsDetector(random_outputs(np.random.default_rng(0), 64))
        with pytest.raises(InvalidRequest):
            fa.FaceAnalyser(detector, no_recognizer, detector_size=64, threshold=2.0).detect(image)
        seen.append(detector.seen)
        converted = np.asarray(image.convert("RGB"))
        expected = (cv2.resize(converted, (64, 48)).astype(np.float32) - 127.5) / 128.0
        assert np.array_equal(seen[-1][0, :, :48].permute(1, 2, 0).numpy(), expected)
    assert torch.equal(seen[0], seen[3])  # the alpha channel is dropped, not composited
    assert torch.equal(seen[1][0, 0], seen[1][0, 1])  # grey stays grey


def test_a_face_in_a_huge_image_comes_back_in_its_pixels():
    width, height = 6000, 4000  # 640 / 6000 scale: boxes are divided by new_height / height = 426 / 4000
    scale = 426 / 4000
    box = np.array([1000.0, 800.0, 2600.0, 2900.0])
    points = apply(similarity(3, 14.0, 1200, 900), TEMPLATE)
    detector = OutputsDetector(planted_outputs(640, [(32, 5, 5, 0, box * scale, points * scale, 0.8)]))
    faces = fa.FaceAnalyser(detector, no_recognizer).detect(Image.new("RGB", (width, height), (200, 150, 100)))
    np.testing.assert_allclose(faces[0].box, box, rtol=1e-5)
    np.testing.assert_allclose(faces[0].landmarks, points, rtol=1e-5)
    seen = detector.seen[0].permute(1, 2, 0).numpy() * 128 + 127.5
    assert np.allclose(seen[:426, :640], [200, 150, 100]) and np.allclose(seen[426:], 0)


# --------------------------------------------------------------------------------------------------
# Alignment


@pytest.mark.parametrize(("angle", "scale", "tx", "ty"), [(0, 1, 0, 0), (25, 2.3, 140, -30), (-170, 0.6, 10, 400)])
def test_a_face_placed_by_a_similarity_maps_back_onto_the_template(angle, scale, tx, ty):
    placement = similarity(angle, scale, tx, ty)
    landmarks = apply(placement, TEMPLATE)
    matrix = fa.alignment_matrix(landmarks, 112)
    assert np.abs(apply(matrix, landmarks) - TEMPLATE).max() < 1e-3
    np.testing.assert_allclose(np.vstack([matrix, [0, 0, 1]]) @ np.vstack([placement, [0, 0, 1]]), np.eye(3), atol=1e-6)


@pytest.mark.parametrize("mirrored", [False, True])
def test_noisy_and_mirrored_landmarks_get_the_least_squares_similarity_never_a_reflection(mirrored):
    rng = np.random.default_rng(3)
    landmarks = apply(similarity(15, 1.8, 50, 60), TEMPLATE) + rng.normal(0, 2.0, (5, 2))
    if mirrored:  # a mirrored face: the best fit would be a reflection, which a similarity cannot be
        landmarks[:, 0] = 300 - landmarks[:, 0]
    matrix = fa.alignment_matrix(landmarks, 112)
    np.testing.assert_allclose(matrix, least_squares_similarity(landmarks, TEMPLATE), atol=1e-9)
    assert np.linalg.det(matrix[:, :2]) > 0


@pytest.mark.parametrize("size", [112, 224, 256, 336])
def test_crops_scale_the_template_and_shift_128_multiples(size):
    landmarks = apply(similarity(-12, 1.5, 80, 70), TEMPLATE)
    matrix = fa.alignment_matrix(landmarks, size)
    if size % 112 == 0:
        target = TEMPLATE * size / 112
    else:
        target = TEMPLATE * size / 128 + [8 * size / 128, 0]
    assert np.abs(apply(matrix, landmarks) - target).max() < 1e-3


def test_the_warp_equals_cv2_warp_affine_with_a_black_border():
    rng = np.random.default_rng(7)
    for pixels in (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), smooth_image(240, 320)):
        landmarks = apply(similarity(20, 1.3, 120, 60), TEMPLATE) + rng.normal(0, 1.5, (5, 2))
        for size in (112, 224, 256):
            matrix = fa.alignment_matrix(landmarks, size)
            ours = fa.warp_affine(pixels, matrix, size)
            assert np.array_equal(ours, cv2.warpAffine(pixels, matrix, (size, size), borderValue=0.0))
    # Partly outside the source: black where it reads nothing.
    pixels = smooth_image(60, 60)
    matrix = similarity(30, 1.7, -20, 10)
    assert np.array_equal(
        fa.warp_affine(pixels, matrix, 112), cv2.warpAffine(pixels, matrix, (112, 112), borderValue=0.0)
    )


def test_resize_and_warp_equal_cv2_at_random_sizes_and_maps():
    rng = np.random.default_rng(11)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(1, 120, 2))
        new_width, new_height = (int(v) for v in rng.integers(1, 300, 2))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        resized = fa.resize_linear(pixels, new_width, new_height)
        assert np.array_equal(resized, cv2.resize(pixels, (new_width, new_height))), (
            height,
            width,
            new_width,
            new_height,
        )
        matrix = np.hstack([rng.uniform(-3, 3, (2, 2)), rng.uniform(-60, 60, (2, 1))])
        size = int(rng.integers(1, 150))
        warped = fa.warp_affine(pixels, matrix, size)
        assert np.array_equal(warped, cv2.warpAffine(pixels, matrix, (size, size), borderValue=0.0)), matrix


def test_a_warped_pattern_lands_where_the_transform_sends_it():
    # A bright 3 x 3 dot at (x 40, y 25): a pure shift sends it to whole pixels exactly; a similarity
    # moves its centre of mass to matrix @ (40, 25); everything read from outside the source is black.
    pixels = np.zeros((50, 80, 3), dtype=np.uint8)
    pixels[24:27, 39:42] = 255
    shifted = fa.warp_affine(pixels, np.array([[1.0, 0, 30], [0, 1.0, 50]]), 112)
    assert np.array_equal(np.argwhere(shifted[..., 0] == 255).min(0), [74, 69])
    assert shifted.sum() == 9 * 3 * 255
    matrix = similarity(37, 1.6, 12, 20)
    warped = fa.warp_affine(pixels, matrix, 112)[..., 0].astype(float)
    ys, xs = np.mgrid[:112, :112]
    centre = [(xs * warped).sum() / warped.sum(), (ys * warped).sum() / warped.sum()]
    np.testing.assert_allclose(centre, apply(matrix, np.array([[40.0, 25.0]]))[0], atol=0.05)
    outside = apply(matrix, np.array([[0.0, 0.0], [80.0, 0.0], [80.0, 50.0], [0.0, 50.0]]))
    assert warped[int(outside[:, 1].max()) + 2 :].sum() == 0


def test_the_224_crop_is_the_112_alignment_at_twice_the_scale():
    rng = np.random.default_rng(1)
    landmarks = apply(similarity(8, 1.2, 90, 40), TEMPLATE) + rng.normal(0, 1.0, (5, 2))
    np.testing.assert_allclose(fa.alignment_matrix(landmarks, 224), 2 * fa.alignment_matrix(landmarks, 112), atol=1e-9)
    image = Image.fromarray(smooth_image(260, 300))
    analyser = fa.FaceAnalyser(no_recognizer, no_recognizer)
    small = np.asarray(analyser.crop(image, face_at(landmarks), 112)).astype(float)
    large = analyser.crop(image, face_at(landmarks), 224)
    assert large.size == (224, 224) and large.mode == "RGB"
    # Pixel (2x, 2y) of the 224 crop reads the source where pixel (x, y) of the 112 crop does.
    assert np.abs(np.asarray(large)[::2, ::2] - small).max() <= 1


# --------------------------------------------------------------------------------------------------
# Identity


@pytest.mark.parametrize(("mean", "std"), [(127.5, 127.5), (0.0, 1.0)])
def test_the_embedding_is_the_recognizers_output_on_the_aligned_face_normalised(mean, std):
    rng = np.random.default_rng(2)
    pixels = smooth_image(200, 240)
    landmarks = apply(similarity(-7, 1.1, 70, 30), TEMPLATE) + rng.normal(0, 1.0, (5, 2))
    recognizer = conv_recognizer()
    analyser = fa.FaceAnalyser(no_recognizer, recognizer, recognizer_mean=mean, recognizer_std=std)
    embedding = analyser.identity(Image.fromarray(pixels), face_at(landmarks))
    assert embedding.shape == (512,) and embedding.dtype == torch.float32
    assert float(embedding.norm()) == pytest.approx(1.0, abs=1e-5)
    aligned = cv2.warpAffine(pixels, least_squares_similarity(landmarks, TEMPLATE), (112, 112), borderValue=0.0)
    blob = torch.from_numpy(((aligned.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        raw = recognizer(blob)[0][0]
    torch.testing.assert_close(embedding, raw / raw.norm(), atol=1e-4, rtol=1e-4)
    # A network returning its one tensor (here unbatched, (512,)) rather than a list gives the same embedding.
    bare = fa.FaceAnalyser(
        no_recognizer, lambda image: recognizer(image)[0][0], recognizer_mean=mean, recognizer_std=std
    )
    assert torch.equal(bare.identity(Image.fromarray(pixels), face_at(landmarks)), embedding)


def test_the_embedding_follows_the_face_not_the_frame():
    # The same face moved and turned in a bigger picture gives the same embedding (up to resampling).
    face = smooth_image(112, 112)
    recognizer = conv_recognizer(1)
    analyser = fa.FaceAnalyser(no_recognizer, recognizer)
    placement = similarity(0, 2.0, 30, 50)
    big = cv2.warpAffine(face, placement, (300, 300), flags=cv2.INTER_CUBIC)
    moved = analyser.identity(Image.fromarray(big), face_at(apply(placement, TEMPLATE)))
    direct = analyser.identity(Image.fromarray(face), face_at(TEMPLATE))
    assert float(moved @ direct) > 0.999
    other = analyser.identity(Image.fromarray(face[::-1].copy()), face_at(TEMPLATE))
    assert float(other @ direct) < 0.99


# --------------------------------------------------------------------------------------------------
# Refusals


def test_no_face_names_the_image():
    detector = OutputsDetector(random_outputs(np.random.default_rng(0), 64))
    analyser = fa.FaceAnalyser(detector, no_recognizer, detector_size=64, threshold=1.5)
    with pytest.raises(InvalidRequest, match="no face found in the reference image"):
        analyser.detect(Image.new("RGB", (50, 50)))


def test_no_face_names_the_file(tmp_path):
    path = tmp_path / "portrait.png"
    Image.new("RGB", (40, 30)).save(path)
    detector = OutputsDetector(random_outputs(np.random.default_rng(0), 64))
    analyser = fa.FaceAnalyser(detector, no_recognizer, detector_size=64, threshold=1.5)
    with Image.open(path) as image, pytest.raises(InvalidRequest, match="portrait.png"):
        analyser.detect(image)


def test_a_detector_without_landmarks_cannot_align():
    outputs = random_outputs(np.random.default_rng(0), 64)[:6]
    with pytest.raises(ModelError, match="no landmark outputs"):
        fa.FaceAnalyser(OutputsDetector(outputs), no_recognizer, detector_size=64).detect(Image.new("RGB", (64, 64)))


def test_detectors_of_another_shape_are_refused():
    outputs = random_outputs(np.random.default_rng(0), 64)
    with pytest.raises(ModelError, match="7 outputs"):
        fa.FaceAnalyser(OutputsDetector(outputs[:7]), no_recognizer, detector_size=64).detect(Image.new("RGB", (9, 9)))
    # Built for 64 px, asked at 128: its maps do not cover the input.
    with pytest.raises(ModelError, match=r"stride-8 scores have shape \(128, 1\), not \(512, 1\)"):
        fa.FaceAnalyser(OutputsDetector(outputs), no_recognizer, detector_size=128).detect(Image.new("RGB", (9, 9)))
    with pytest.raises(ModelError, match="multiple of 32"):
        fa.FaceAnalyser(OutputsDetector(outputs), no_recognizer, detector_size=100)


def test_images_without_room_for_a_face_are_refused():
    analyser = fa.FaceAnalyser(
        OutputsDetector(random_outputs(np.random.default_rng(0), 64)), no_recognizer, detector_size=64
    )
    with pytest.raises(InvalidRequest, match="2000 x 1 pixels is too narrow"):
        analyser.detect(Image.new("RGB", (2000, 1)))
    with pytest.raises(InvalidRequest, match="empty"):
        analyser.detect(Image.new("RGB", (0, 0)))
    with pytest.raises(InvalidRequest, match=r"cannot be read as an RGB picture \(La\)"):
        analyser.detect(Image.new("La", (64, 64)))


def test_bad_crop_sizes_and_landmarks_are_refused():
    analyser = fa.FaceAnalyser(no_recognizer, conv_recognizer())
    image = Image.new("RGB", (100, 100))
    with pytest.raises(InvalidRequest, match="multiple of 112 or 128 pixels, not 100"):
        analyser.crop(image, face_at(TEMPLATE), 100)
    with pytest.raises(InvalidRequest, match="all at one point"):
        analyser.identity(image, face_at(np.full((5, 2), 40.0)))
    with pytest.raises(InvalidRequest, match="5 finite landmarks"):
        analyser.crop(image, face_at(TEMPLATE[:4]), 112)


def test_a_recognizer_giving_a_zero_vector_is_refused():
    analyser = fa.FaceAnalyser(no_recognizer, lambda image: [torch.zeros(1, 512)])
    with pytest.raises(ModelError, match="zero or non-finite"):
        analyser.identity(Image.new("RGB", (112, 112)), face_at(TEMPLATE))


class CloseUpDetector(torch.nn.Module):
    """Finds its one planted face only at input sizes up to `finds_at` (as SCRFD misses a face that fills a
    close-up at 640 px and finds it smaller); records every size it was shown."""

    def __init__(self, finds_at: int, box: np.ndarray, landmarks: np.ndarray, picture_side: int) -> None:
        super().__init__()
        self.finds_at, self.box, self.landmarks, self.side = finds_at, box, landmarks, picture_side
        self.sizes: list[int] = []

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        size = int(image.shape[-1])
        self.sizes.append(size)
        scale = size / self.side
        plants = [(32, 4, 4, 0, self.box * scale, self.landmarks * scale, 0.9)] if size <= self.finds_at else []
        return [torch.from_numpy(o.astype(np.float32)) for o in planted_outputs(size, plants)]


def test_no_face_at_640_retries_64_px_smaller_down_to_320_as_comfyui_does():
    box, points = np.array([100.0, 80.0, 700.0, 760.0]), apply(similarity(0, 5.0, 150, 120), TEMPLATE)
    picture = Image.new("RGB", (800, 800))
    detector = CloseUpDetector(512, box, points, 800)
    faces = fa.FaceAnalyser(detector, no_recognizer, retry_smaller=True).detect(picture)
    assert detector.sizes == [640, 576, 512]
    np.testing.assert_allclose(faces[0].box, box, atol=1e-2)  # in the picture's pixels, whatever the size
    np.testing.assert_allclose(faces[0].landmarks, points, atol=1e-2)
    # Nowhere: every size down to 320 is tried, then the error.
    nowhere = CloseUpDetector(0, box, points, 800)
    with pytest.raises(InvalidRequest, match="no face found"):
        fa.FaceAnalyser(nowhere, no_recognizer, retry_smaller=True).detect(picture)
    assert nowhere.sizes == [640, 576, 512, 448, 384, 320]
    # A detector whose graph fixes its size is shown that size only.
    fixed = CloseUpDetector(512, box, points, 800)
    with pytest.raises(InvalidRequest, match="no face found"):
        fa.FaceAnalyser(fixed, no_recognizer).detect(picture)
    assert fixed.sizes == [640]
