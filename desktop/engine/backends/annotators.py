"""Learned control preprocessors: depth, lineart and OpenPose body networks from the control library.

Loaded only by the diffusers backend during a job (torch and transformers are imported inside functions;
the import-linter contract lists this module). Weights are never downloaded: a unit whose preprocessor is
"depth", "lineart" or "openpose" uses the control library's first annotator of that task (by name; the
library's header check says which task a file does, desktop/engine/library/annotator.py), loaded
strictly, on the CPU in float32 so a control image does not depend on the GPU or the pipeline's dtype.

What each one returns (float32 (H, W, 3) in [0, 1], as desktop/engine/control_preprocess.py does):
- depth: the model's relative inverse depth, min-max normalised, as grey (near = white), which is what
  A1111's depth_anything / depth_midas modules give. Depth Anything sees the image resized so both sides
  are at least 518 px and multiples of 14 (ImageNet mean/std); DPT/MiDaS at 384 x 384 (transformers'
  DPT reads square patch grids only; mean/std 0.5). The prediction is resized back bilinearly.
- lineart: ControlNet 1.1's lineart generator (ResNet-style: 7x7 stem, two stride-2 convolutions,
  residual blocks with instance norm, two transposed convolutions, 7x7 head with a sigmoid) on the RGB
  image in [0, 1]; its output is dark lines on white, so the control image is 255 - output (white lines
  on black), quantised to 8 bits as A1111's lineart_realistic does. The image is edge-padded to a
  multiple of 8 for the network and cropped back.
- openpose: the OpenPose body model (CPM: a VGG front, six stages each with a part-affinity branch (L1,
  38 maps) and a heatmap branch (L2, 18 parts + background)) on the BGR image scaled so its height is
  184 px (OpenPose's 368 box at scale 0.5), padded with grey 128 to a multiple of 8, values /256 - 0.5.
  The maps are resized back to the image; each part's peaks are the local maxima (4-neighbourhood) of the
  map blurred with a Gaussian of sigma 3 above 0.1. People are assembled from the peaks with the part
  affinity fields (`decode_pose`), and drawn with OpenPose's limb colours on black (`draw_pose`).
- openpose_hand / openpose_face / openpose_full: the body pose as above, then OpenPose's hand and/or face
  network (`hand` / `face` annotators: one CPM, a VGG front and six stages, each stage after the first
  reading the previous stage's maps joined before the front's features) on a square box per hand / face
  found from the body's keypoints (desktop/engine/pose_parts.py). The box is resized to 368 px (one
  scale), BGR, values /256 - 0.5; the last stage's maps are upsampled 8x and resized back to the box,
  and each keypoint is its map's maximum. Drawn over the body pose in ControlNet 1.1's colours.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from desktop.engine.errors import ModelError
from desktop.engine.library.annotator import CONFIG_KEY, DEPTH, FACE, HAND, LINEART, OPENPOSE
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
from desktop.engine.library.control import ANNOTATOR, inspect_control
from desktop.engine.library.lora import AdapterCatalog
from desktop.engine.pose_parts import (
    FACE_THRESHOLD,
    HAND_THRESHOLD,
    Box,
    draw_faces,
    draw_hands,
    face_boxes,
    hand_boxes,
    keypoints,
)

# OpenPose's 18 body parts (COCO order): nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist,
# right hip/knee/ankle, left hip/knee/ankle, right eye, left eye, right ear, left ear.
POSE_PARTS = 18
# Limbs as (part, part), 0-based, in OpenPose's order; the first 17 are drawn (the last two, shoulder to
# ear, only help grouping).
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)  # fmt: skip
# The part-affinity channels (x, y) of each limb, in LIMBS' order.
LIMB_PAFS = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
    (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)  # fmt: skip
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
DRAWN_LIMBS = 17
STICK_WIDTH = 4
LIMB_SHADE = 0.6  # OpenPose darkens the limbs (not the joints) to 60 %
PEAK_THRESHOLD = 0.1
PAF_THRESHOLD = 0.05
POSE_BOX = 368 * 0.5
POSE_STRIDE = 8
PART_BOX = 368  # the side a hand or face box is resized to for its network
# The pose preprocessors that add hands and / or a face to the body (A1111's module names), and the
# networks each needs beyond the body's.
POSE_EXTRAS = {"openpose_hand": (HAND,), "openpose_face": (FACE,), "openpose_full": (HAND, FACE)}

Point = tuple[float, float]


@dataclass(frozen=True)
class Annotator:
    """A loaded annotator network."""

    name: str
    task: str
    architecture: str
    net: Any


@dataclass(frozen=True)
class _Identity:
    path: str
    size: int
    mtime_ns: int


class Annotators:
    """The control library's annotators, loaded once and kept until the backend forgets them."""

    def __init__(self, catalog: AdapterCatalog) -> None:
        self._catalog = catalog
        self._loaded: dict[_Identity, Annotator] = {}

    def forget(self) -> None:
        self._loaded.clear()

    def find(self, task: str) -> Annotator:
        """The first annotator of `task` in the library (by name), loaded; ModelError when there is none."""
        for entry in self._catalog.entries():
            if sniff_file_type(entry.path) != "safetensors":
                continue
            try:
                info = inspect_control(read_safetensors_header(entry.path, name=entry.name), entry.name)
            except ModelError:
                continue
            if info.kind == ANNOTATOR and info.layout == task:
                stat = entry.path.stat()
                identity = _Identity(str(entry.path.resolve()), stat.st_size, stat.st_mtime_ns)
                if identity not in self._loaded:
                    self._loaded[identity] = load_annotator(entry.path, entry.name)
                return self._loaded[identity]
        what = {HAND: "OpenPose hand", FACE: "OpenPose face"}.get(task, task)
        raise ModelError(
            f"The {what} preprocessor needs its network, and the control library has none: import one "
            f"(marble controls import FILE_OR_FOLDER; {_WHAT[task]})."
        )

    def apply(self, task: str, image: Image.Image) -> np.ndarray:
        """The control image of preprocessor `task` (a learned one, or a POSE_EXTRAS one) for `image`."""
        if task in POSE_EXTRAS:
            body = self.find(OPENPOSE)
            extras = {part: self.find(part) for part in POSE_EXTRAS[task]}
            try:
                return annotate_pose(body, extras.get(HAND), extras.get(FACE), image)
            except (RuntimeError, ValueError) as error:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
                raise ModelError(f"The {task} preprocessor failed on this image: {first}.") from None
        annotator = self.find(task)
        try:
            return annotate(annotator, image)
        except (RuntimeError, ValueError) as error:  # a network whose shapes its config does not match
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise ModelError(f"The {task} preprocessor {annotator.name!r} failed on this image: {first}.") from None


_WHAT = {
    DEPTH: "a Depth Anything or DPT model folder with config.json and model.safetensors",
    LINEART: "ControlNet 1.1's lineart annotator, sk_model.pth, with --convert-pickle",
    OPENPOSE: "OpenPose's body_pose_model.pth, with --convert-pickle",
    HAND: "OpenPose's hand_pose_model.pth, with --convert-pickle",
    FACE: "OpenPose's facenet.pth, with --convert-pickle",
}


# ------------------------------------------------------------------------------------------ loading


def load_annotator(path: Path, name: str) -> Annotator:
    """Build the network a control-library annotator file describes and load its tensors strictly."""
    header = read_safetensors_header(path, name=name)
    info = inspect_control(header, name)
    if info.kind != ANNOTATOR:
        raise ModelError(f"{name!r} is a {info.label}, not a preprocessor's network.")
    from safetensors.torch import load_file

    state = load_file(str(path))
    try:
        if info.layout == DEPTH:
            architecture = "dpt" if any(k.startswith("dpt.") for k in state) else "depth-anything"
            net = _depth_net(state, json.loads(header.metadata[CONFIG_KEY]), architecture)
        elif info.layout == LINEART:
            architecture, net = "lineart-generator", _lineart_net(state)
        elif info.layout in (HAND, FACE):
            architecture, net = f"openpose-{info.layout}", _part_net(state)
        else:
            architecture, net = "openpose-body", _openpose_net(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ModelError(f"The {info.layout} preprocessor {name!r} could not be loaded: {first}.") from None
    return Annotator(name, info.layout, architecture, net.float().eval())


def _depth_net(state: dict[str, Any], config: dict[str, Any], architecture: str) -> Any:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTConfig, DPTForDepthEstimation

    if architecture == "dpt":
        config_class, model_class = DPTConfig, DPTForDepthEstimation
    else:
        config_class, model_class = DepthAnythingConfig, DepthAnythingForDepthEstimation
    # from_pretrained, not load_state_dict: transformers renames published tensor names to its modules'.
    model, report = model_class.from_pretrained(
        None, config=config_class.from_dict(config), state_dict=state, output_loading_info=True
    )
    problems = [f"{what}: {', '.join(sorted(map(str, keys))[:3])}" for what, keys in report.items() if keys]
    if problems:  # a strict load: no tensor left random, none ignored
        raise ValueError("; ".join(problems))
    return model


def _lineart_net(state: dict[str, Any]) -> Any:
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width), nn.ReLU(inplace=True),
                nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width),
            )  # fmt: skip

        def forward(self, x: Any) -> Any:
            return x + self.conv_block(x)

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            out0, inputs = state["model0.1.weight"].shape[:2]
            down1, down2 = state["model1.0.weight"].shape[0], state["model1.3.weight"].shape[0]
            up1, up2 = state["model3.0.weight"].shape[1], state["model3.3.weight"].shape[1]
            outputs = state["model4.1.weight"].shape[0]
            blocks = len({k.split(".")[1] for k in state if k.startswith("model2.")})
            self.model0 = nn.Sequential(
                nn.ReflectionPad2d(3), nn.Conv2d(inputs, out0, 7), nn.InstanceNorm2d(out0), nn.ReLU(inplace=True)
            )
            self.model1 = nn.Sequential(
                nn.Conv2d(out0, down1, 3, stride=2, padding=1), nn.InstanceNorm2d(down1), nn.ReLU(inplace=True),
                nn.Conv2d(down1, down2, 3, stride=2, padding=1), nn.InstanceNorm2d(down2), nn.ReLU(inplace=True),
            )  # fmt: skip
            self.model2 = nn.Sequential(*(Residual(down2) for _ in range(blocks)))
            self.model3 = nn.Sequential(
                nn.ConvTranspose2d(down2, up1, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(up1),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(up1, up2, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(up2),
                nn.ReLU(inplace=True),
            )  # fmt: skip
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(up2, outputs, 7), nn.Sigmoid())

        def forward(self, x: Any) -> Any:
            return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    net = Generator()
    net.load_state_dict(state, strict=True)
    return net


def openpose_layers(stages: int = 6) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """OpenPose body model's layer names: the front (with "pool" marking a 2x2 max pool) and each branch
    (`"1_L1"`: stage 1's part-affinity branch, `"3_L2"`: stage 3's heatmap branch)."""
    front = (
        "conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
        "pool", "conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM",
    )  # fmt: skip
    branches: dict[str, tuple[str, ...]] = {}
    for branch in ("L1", "L2"):
        branches[f"1_{branch}"] = tuple(f"conv5_{i}_CPM_{branch}" for i in range(1, 6))
        for stage in range(2, stages + 1):
            branches[f"{stage}_{branch}"] = tuple(f"Mconv{i}_stage{stage}_{branch}" for i in range(1, 8))
    return front, branches


def _openpose_net(state: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    stages = max(int(k.split("_stage")[1].split("_")[0]) for k in state if k.startswith("Mconv7_stage"))
    front, branches = openpose_layers(stages)

    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            names = [n for n in front if n != "pool"] + [n for layers in branches.values() for n in layers]
            for name in names:  # attributes named as OpenPose names its tensors (conv1_1.weight, ...)
                out, inputs, k, _ = state[f"{name}.weight"].shape
                self.add_module(name, nn.Conv2d(inputs, out, k, padding=k // 2))

        def _run(self, names: tuple[str, ...], x: Any, last_plain: bool) -> Any:
            for index, name in enumerate(names):
                if name == "pool":
                    x = torch.nn.functional.max_pool2d(x, 2, 2)
                    continue
                x = getattr(self, name)(x)
                if not (last_plain and index == len(names) - 1):  # the branches' last layers have no ReLU
                    x = torch.relu(x)
            return x

        def forward(self, x: Any) -> tuple[Any, Any]:
            features = self._run(front, x, last_plain=False)
            paf = self._run(branches["1_L1"], features, True)
            heat = self._run(branches["1_L2"], features, True)
            for stage in range(2, stages + 1):
                joined = torch.cat([paf, heat, features], 1)
                paf = self._run(branches[f"{stage}_L1"], joined, True)
                heat = self._run(branches[f"{stage}_L2"], joined, True)
            return paf, heat

    net = Body()
    net.load_state_dict(state, strict=True)
    return net


def _part_net(state: dict[str, Any]) -> Any:
    """OpenPose's hand / face CPM, its widths and kernel sizes read from the tensors."""
    import torch
    from torch import nn

    stages = max(int(k.split("_stage")[1].split(".")[0]) for k in state if k.startswith("Mconv7_stage"))
    front = (
        "conv1_1", "conv1_2", "pool", "conv2_1", "conv2_2", "pool", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
        "pool", "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3_CPM",
    )  # fmt: skip
    first = ("conv6_1_CPM", "conv6_2_CPM")
    later = {stage: tuple(f"Mconv{i}_stage{stage}" for i in range(1, 8)) for stage in range(2, stages + 1)}

    class Parts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            names = [n for n in front if n != "pool"] + list(first) + [n for ns in later.values() for n in ns]
            for name in names:  # attributes named as the file names its tensors (conv1_1.weight, ...)
                out, inputs, k, _ = state[f"{name}.weight"].shape
                self.add_module(name, nn.Conv2d(inputs, out, k, padding=k // 2))

        def _run(self, names: tuple[str, ...], x: Any, last_plain: bool) -> Any:
            for index, name in enumerate(names):
                if name == "pool":
                    x = torch.nn.functional.max_pool2d(x, 2, 2)
                    continue
                x = getattr(self, name)(x)
                if not (last_plain and index == len(names) - 1):  # each stage's maps come without a ReLU
                    x = torch.relu(x)
            return x

        def forward(self, x: Any) -> Any:
            features = self._run(front, x, last_plain=False)
            maps = self._run(first, features, True)
            for stage in range(2, stages + 1):
                maps = self._run(later[stage], torch.cat([maps, features], 1), True)
            return maps

    net = Parts()
    net.load_state_dict(state, strict=True)
    return net


# ------------------------------------------------------------------------------------------ running


def annotate(annotator: Annotator, image: Image.Image) -> np.ndarray:
    """The control image `annotator` makes of `image` (RGB): float32 (H, W, 3) in [0, 1]."""
    import torch

    rgb = image.convert("RGB")
    with torch.inference_mode():
        if annotator.task == DEPTH:
            return _gray3(_depth(annotator, rgb))
        if annotator.task == LINEART:
            return _gray3(_lineart(annotator.net, rgb))
        heat, paf = pose_maps(annotator.net, rgb)
        return np.asarray(draw_pose(decode_pose(heat, paf), rgb.size), dtype=np.float32) / 255.0


def annotate_pose(body: Annotator, hand: Annotator | None, face: Annotator | None, image: Image.Image) -> np.ndarray:
    """The body pose of `image` with each person's hands (`hand`'s network) and / or face drawn over it."""
    rgb = image.convert("RGB")
    heat, paf = pose_maps(body.net, rgb)
    people = decode_pose(heat, paf)
    canvas = draw_pose(people, rgb.size)
    if hand is not None:
        found = [keypoints(part_maps(hand.net, rgb, box), box, HAND_THRESHOLD) for box in hand_boxes(people, rgb.size)]
        draw_hands(canvas, found)
    if face is not None:
        found = [keypoints(part_maps(face.net, rgb, box), box, FACE_THRESHOLD) for box in face_boxes(people, rgb.size)]
        draw_faces(canvas, found)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def part_maps(net: Any, rgb: Image.Image, box: Box) -> np.ndarray:
    """A hand / face network's last-stage maps for the square `box` of `rgb`, at the box's size."""
    import torch

    crop = rgb.crop((box.x, box.y, box.x + box.side, box.y + box.side)).resize((PART_BOX, PART_BOX),
                                                                               Image.Resampling.BICUBIC)  # fmt: skip
    bgr = np.asarray(crop, dtype=np.float32)[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None] / 256.0 - 0.5
    with torch.inference_mode():
        maps = net(x)
        maps = torch.nn.functional.interpolate(maps, scale_factor=POSE_STRIDE, mode="bicubic", align_corners=False)
        maps = torch.nn.functional.interpolate(maps, (box.side, box.side), mode="bicubic", align_corners=False)
    return maps[0].numpy().astype(np.float32)


def _depth(annotator: Annotator, rgb: Image.Image) -> np.ndarray:
    import torch

    dpt = annotator.architecture == "dpt"
    side, multiple = (384, 32) if dpt else (518, 14)
    mean, std = ((0.5,) * 3, (0.5,) * 3) if dpt else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # "lower bound": the smallest multiple-of-`multiple` size with both sides >= `side`, aspect kept.
    # transformers' DPT reads a square grid of patches only, so it gets the square its processor makes.
    scale = max(side / rgb.width, side / rgb.height)
    size = (math.ceil(rgb.width * scale / multiple) * multiple, math.ceil(rgb.height * scale / multiple) * multiple)
    if dpt:
        size = (side, side)
    array = np.asarray(rgb.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    array = (array - np.array(mean, np.float32)) / np.array(std, np.float32)
    pixels = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
    depth = annotator.net(pixel_values=pixels).predicted_depth[:, None]
    depth = torch.nn.functional.interpolate(depth, (rgb.height, rgb.width), mode="bilinear", align_corners=False)
    depth = depth[0, 0].numpy().astype(np.float32)
    low, high = float(depth.min()), float(depth.max())
    return (depth - low) / (high - low) if high > low else np.zeros_like(depth)


def _lineart(net: Any, rgb: Image.Image) -> np.ndarray:
    import torch

    array = np.asarray(rgb, dtype=np.float32) / 255.0
    height, width = array.shape[:2]
    padded = np.pad(array, ((0, -height % 8), (0, -width % 8), (0, 0)), mode="edge")
    line = net(torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None])[0, 0].numpy()
    line = (line[:height, :width] * 255.0).clip(0, 255).astype(np.uint8)
    return (255 - line).astype(np.float32) / 255.0


def pose_maps(net: Any, rgb: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """OpenPose's heatmaps (19, H, W) and part-affinity fields (38, H, W) for `rgb`, at its size."""
    import torch

    scale = POSE_BOX / rgb.height
    small = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BICUBIC)
    bgr = np.asarray(small, dtype=np.float32)[:, :, ::-1]
    h, w = bgr.shape[:2]
    padded = np.pad(bgr, ((0, -h % POSE_STRIDE), (0, -w % POSE_STRIDE), (0, 0)), constant_values=128.0)
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None] / 256.0 - 0.5
    with torch.inference_mode():
        paf, heat = net(x)

    def back(maps: Any) -> np.ndarray:
        big = torch.nn.functional.interpolate(maps, scale_factor=POSE_STRIDE, mode="bicubic", align_corners=False)
        big = big[:, :, :h, :w]
        full = torch.nn.functional.interpolate(big, (rgb.height, rgb.width), mode="bicubic", align_corners=False)
        return full[0].numpy().astype(np.float32)

    return back(heat), back(paf)


# ------------------------------------------------------------------------------------- pose decoding


@dataclass(frozen=True)
class Peak:
    x: int
    y: int
    score: float


def find_peaks(heat: np.ndarray) -> list[list[Peak]]:
    """Each body part's peaks: local maxima of its heatmap blurred (sigma 3), above PEAK_THRESHOLD."""
    from scipy.ndimage import gaussian_filter

    parts = []
    for part in range(POSE_PARTS):
        original = heat[part]
        blurred = gaussian_filter(original, sigma=3)
        padded = np.pad(blurred, 1)
        centre = padded[1:-1, 1:-1]
        is_peak = (
            (centre >= padded[1:-1, :-2]) & (centre >= padded[1:-1, 2:])
            & (centre >= padded[:-2, 1:-1]) & (centre >= padded[2:, 1:-1]) & (centre > PEAK_THRESHOLD)
        )  # fmt: skip
        ys, xs = np.nonzero(is_peak)
        parts.append([Peak(int(x), int(y), float(original[y, x])) for x, y in zip(xs, ys, strict=True)])
    return parts


def decode_pose(heat: np.ndarray, paf: np.ndarray) -> list[tuple[Point | None, ...]]:
    """People (18 optional (x, y) points each) from heatmaps and part-affinity fields.

    OpenPose's greedy grouping: a candidate limb between two peaks scores the mean of its part-affinity
    field along the segment (10 samples) projected on the segment's direction, plus a penalty when the
    segment is longer than half the image height; it counts when over 80 % of the samples pass
    PAF_THRESHOLD. Each limb keeps the best-scoring pairs with no peak used twice; pairs sharing a peak
    join into one person. People with fewer than 4 parts or a mean score under 0.4 are dropped."""
    peaks = find_peaks(heat)
    height = heat.shape[1]
    # Peaks numbered across parts: id -> (part, peak).
    ids: dict[tuple[int, int], int] = {}
    flat: list[tuple[int, Peak]] = []
    for part, found in enumerate(peaks):
        for index, peak in enumerate(found):
            ids[(part, index)] = len(flat)
            flat.append((part, peak))
    people: list[dict[str, Any]] = []  # {"parts": [id or -1] * 18, "score": float, "count": int}
    for index, ((a, b), (px, py)) in enumerate(zip(LIMBS, LIMB_PAFS, strict=True)):
        pairs = []
        for i, start in enumerate(peaks[a]):
            for j, end in enumerate(peaks[b]):
                score = _limb_score(start, end, paf[px], paf[py], height)
                if score is not None:
                    pairs.append((score, i, j, start.score + end.score))
        pairs.sort(reverse=True)
        used_a: set[int] = set()
        used_b: set[int] = set()
        for score, i, j, peak_scores in pairs:
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            id_a, id_b = ids[(a, i)], ids[(b, j)]
            owners = [p for p in people if p["parts"][a] == id_a or p["parts"][b] == id_b]
            if len(owners) == 1:
                person = owners[0]
                if person["parts"][b] != id_b:
                    person["parts"][b] = id_b
                    person["count"] += 1
                    person["score"] += flat[id_b][1].score + score
            elif len(owners) == 2:
                first, second = owners
                if all(x == -1 or y == -1 for x, y in zip(first["parts"], second["parts"], strict=True)):
                    first["parts"] = [x if x != -1 else y for x, y in zip(first["parts"], second["parts"], strict=True)]
                    first["count"] += second["count"]
                    first["score"] += second["score"] + score
                    people.remove(second)
                else:
                    first["parts"][b] = id_b
                    first["count"] += 1
                    first["score"] += flat[id_b][1].score + score
            elif not owners and index < DRAWN_LIMBS:  # the last two limbs (shoulder-ear) never start a person
                parts = [-1] * POSE_PARTS
                parts[a], parts[b] = id_a, id_b
                people.append({"parts": parts, "score": peak_scores + score, "count": 2})
    kept = [p for p in people if p["count"] >= 4 and p["score"] / p["count"] >= 0.4]
    return [
        tuple((float(flat[i][1].x), float(flat[i][1].y)) if i != -1 else None for i in person["parts"])
        for person in kept
    ]


def _limb_score(start: Peak, end: Peak, paf_x: np.ndarray, paf_y: np.ndarray, height: int) -> float | None:
    dx, dy = end.x - start.x, end.y - start.y
    norm = math.hypot(dx, dy)
    if norm == 0:
        return None
    ux, uy = dx / norm, dy / norm
    xs = np.rint(np.linspace(start.x, end.x, 10)).astype(int)
    ys = np.rint(np.linspace(start.y, end.y, 10)).astype(int)
    along = paf_x[ys, xs] * ux + paf_y[ys, xs] * uy
    score = float(along.mean()) + min(0.5 * height / norm - 1.0, 0.0)
    if np.count_nonzero(along > PAF_THRESHOLD) > 0.8 * len(along) and score > 0:
        return score
    return None


def draw_pose(people: list[tuple[Point | None, ...]], size: tuple[int, int]) -> Image.Image:
    """The people's skeletons on black as OpenPose draws them: each limb an ellipse (half-width
    STICK_WIDTH) in its colour darkened to LIMB_SHADE, then each part a 4 px disc in its own colour."""
    limbs = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(limbs)
    for index in range(DRAWN_LIMBS):
        a, b = LIMBS[index]
        shade = tuple(int(c * LIMB_SHADE) for c in COLOURS[index])
        for person in people:
            if person[a] is None or person[b] is None:
                continue
            draw.polygon(_limb_polygon(person[a], person[b]), fill=shade)  # type: ignore[arg-type]
    for part in range(POSE_PARTS):
        for person in people:
            point = person[part]
            if point is not None:
                x, y = int(point[0]), int(point[1])
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=COLOURS[part])
    return limbs


def _limb_polygon(a: Point, b: Point) -> list[tuple[float, float]]:
    centre_x, centre_y = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    half = math.hypot(b[0] - a[0], b[1] - a[1]) / 2
    angle = math.atan2(b[1] - a[1], b[0] - a[0])
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for degree in range(0, 360, 10):
        t = math.radians(degree)
        ex, ey = half * math.cos(t), STICK_WIDTH * math.sin(t)
        points.append((centre_x + ex * cos - ey * sin, centre_y + ex * sin + ey * cos))
    return points


def _gray3(plane: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(plane[..., None].astype(np.float32), 3, axis=2))
