"""OpenPose hands and faces (openpose_hand / openpose_face / openpose_full): the hand and face networks in
their published tensor layout (detected, imported from a .pth through the safe child, loaded strictly),
hand and face boxes from the body's keypoints, keypoints from the maps' peaks, and the drawing over the
body pose."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
from PIL import Image

from desktop.engine import pose_parts as parts
from desktop.engine.backends import annotators as ann
from desktop.engine.backends.control import _control_image
from desktop.engine.control_preprocess import preprocessor_from_module
from desktop.engine.errors import ModelError
from desktop.engine.library.annotator import FACE, HAND, inspect_annotator
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_annotators import _random, annotators_of, openpose_state, synthetic_maps
from tests.support.cli_runner import run_cli

# --------------------------------------------------------------------------------------------------
# A tiny hand / face network in the published layout


def part_state(maps: int = parts.HAND_MAPS, width: int = 4, stages: int = 6, seed: int = 0) -> dict:
    """hand_pose_model.pth's (maps=22) or facenet.pth's (maps=71) tensor names, `width` channels for 128/512."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name: str, inputs: int, out: int, k: int) -> None:
        state[f"{name}.weight"] = _random(g, out, inputs, k, k)
        state[f"{name}.bias"] = _random(g, out) * 0.1

    front = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4", "conv4_1",
             "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3_CPM"]  # fmt: skip
    for index, name in enumerate(front):
        conv(name, 3 if index == 0 else width, width, 3)
    conv("conv6_1_CPM", width, 2 * width, 1)
    conv("conv6_2_CPM", 2 * width, maps, 1)
    for stage in range(2, stages + 1):
        conv(f"Mconv1_stage{stage}", maps + width, width, 7)
        for i in (2, 3, 4, 5):
            conv(f"Mconv{i}_stage{stage}", width, width, 7)
        conv(f"Mconv6_stage{stage}", width, width, 1)
        conv(f"Mconv7_stage{stage}", width, maps, 1)
    return state


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Body, hand and face networks imported as a user would: the .pth files through the safe child."""
    from safetensors.torch import save_file

    tmp_path = tmp_path_factory.mktemp("pose")
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    save_file(openpose_state(), str(tmp_path / "body_pose_model.safetensors"))
    library.import_path(tmp_path / "body_pose_model.safetensors", "control")
    torch.save(part_state(), tmp_path / "hand_pose_model.pth")
    library.import_path(tmp_path / "hand_pose_model.pth", "control", convert_pickle=True)
    torch.save(part_state(parts.FACE_MAPS, seed=1), tmp_path / "facenet.pth")
    library.import_path(tmp_path / "facenet.pth", "control", convert_pickle=True)
    return paths


# --------------------------------------------------------------------------------------------------
# Detection, import, loading


def test_hand_and_face_networks_are_detected_and_imported_through_the_safe_child(library, tmp_path):
    for name, task in (("hand_pose_model", HAND), ("facenet", FACE)):
        info = inspect_annotator(read_safetensors_header(library.controls / f"{name}.safetensors"))
        assert (info.task, info.architecture) == (task, f"openpose-{task}")
    code, out, err = run_cli("controls", "list", "--home", str(library.models.parent))
    assert code == 0, err
    assert "OpenPose hand preprocessor" in out and "OpenPose face preprocessor" in out
    # A hand file imported with the command line, as the docs say.
    torch.save(part_state(seed=3), tmp_path / "hand_pose_model.pth")
    code, _, err = run_cli("controls", "import", str(tmp_path / "hand_pose_model.pth"), "--convert-pickle",
                           "--home", str(tmp_path / "h"))  # fmt: skip
    assert code == 0, err


def test_a_hand_network_is_the_cpm_and_wrong_files_are_refused_by_name(library, tmp_path):
    from safetensors.torch import load_file, save_file

    net = annotators_of(library).find(HAND).net
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        maps = net(x)
    assert tuple(maps.shape) == (1, 22, 8, 8)  # three 2x2 pools; the last stage's maps
    # The CPM written out with the file's tensors: ReLU everywhere but after each stage's maps; every later
    # stage reads the previous maps joined before the front's features.
    w = load_file(str(library.controls / "hand_pose_model.safetensors"))

    def conv(name, h, relu=True):
        k = w[f"{name}.weight"].shape[-1]
        h = torch.nn.functional.conv2d(h, w[f"{name}.weight"], w[f"{name}.bias"], padding=k // 2)
        return torch.relu(h) if relu else h

    h = x
    for group in (("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"), ("conv3_1", "conv3_2", "conv3_3", "conv3_4")):
        for name in group:
            h = conv(name, h)
        h = torch.nn.functional.max_pool2d(h, 2)
    for name in ("conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3_CPM"):
        h = conv(name, h)
    features = h
    out = conv("conv6_2_CPM", conv("conv6_1_CPM", features), relu=False)
    for stage in range(2, 7):
        h = torch.cat([out, features], 1)
        for i in range(1, 7):
            h = conv(f"Mconv{i}_stage{stage}", h)
        out = conv(f"Mconv7_stage{stage}", h, relu=False)
    assert torch.allclose(maps, out, atol=1e-5)
    # Neither a hand's 22 nor a face's 71 maps: refused naming what it is.
    save_file(part_state(maps=30), str(tmp_path / "odd.safetensors"))
    with pytest.raises(ModelError, match="OpenPose hand/face tensor names but 30 output maps"):
        inspect_annotator(read_safetensors_header(tmp_path / "odd.safetensors"))
    code, _, err = run_cli("controls", "import", str(tmp_path / "odd.safetensors"), "--home", str(tmp_path / "h"))
    assert code != 0 and "30 output maps" in err and "Traceback" not in err
    # The right names with a tensor missing: the strict load says which network failed.
    state = part_state()
    del state["Mconv3_stage4.bias"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelError, match="The hand preprocessor 'broken' could not be loaded"):
        ann.load_annotator(tmp_path / "broken.safetensors", "broken")


def test_without_the_hand_network_the_preprocessor_says_what_to_import(tmp_path):
    from safetensors.torch import save_file

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    save_file(openpose_state(), str(tmp_path / "body.safetensors"))
    Library(paths).import_path(tmp_path / "body.safetensors", "control")
    with pytest.raises(ModelError, match="OpenPose hand preprocessor needs its network.*hand_pose_model.pth"):
        annotators_of(paths).apply("openpose_hand", Image.new("RGB", (64, 48)))


def test_module_names_are_a1111s():
    for name in ("openpose_hand", "openpose_face", "openpose_full"):
        assert preprocessor_from_module(name) == name


# --------------------------------------------------------------------------------------------------
# Boxes, keypoints and drawing on synthetic maps

# One person with both arms and a head, in a 200 x 160 image (COCO part numbers).
PERSON = {0: (100, 20), 1: (100, 40), 2: (80, 42), 3: (70, 70), 4: (64, 100), 5: (120, 42), 6: (130, 70),
          7: (136, 100), 8: (90, 100), 11: (110, 100), 14: (95, 16), 15: (105, 16)}  # fmt: skip
SIZE = (200, 160)


def _expected_hand_box(shoulder, elbow, wrist) -> parts.Box:
    # OpenPose's rule, written out: a third of the forearm beyond the wrist, 1.5 x max(forearm, 0.9 upper arm).
    (sx, sy), (ex, ey), (wx, wy) = shoulder, elbow, wrist
    cx, cy = wx + (wx - ex) / 3, wy + (wy - ey) / 3
    side = 1.5 * max(math.dist((ex, ey), (wx, wy)), 0.9 * math.dist((sx, sy), (ex, ey)))
    return parts.Box(int(cx - side / 2), int(cy - side / 2), int(side))


def test_hand_boxes_follow_the_forearm_and_stay_in_the_image():
    person = tuple(PERSON.get(i) for i in range(18))
    left, right = parts.hand_boxes([person], SIZE)
    assert left == _expected_hand_box(PERSON[5], PERSON[6], PERSON[7])
    assert right == _expected_hand_box(PERSON[2], PERSON[3], PERSON[4])
    # Near the bottom right corner the square is clipped to the image; a tiny arm gives no box.
    corner = tuple({5: (160, 100), 6: (180, 130), 7: (190, 150)}.get(i) for i in range(18))
    (box,) = parts.hand_boxes([corner], SIZE)
    assert box.x + box.side <= SIZE[0] and box.y + box.side <= SIZE[1] and box.side >= parts.MIN_BOX
    tiny = tuple({5: (50, 50), 6: (52, 52), 7: (54, 54)}.get(i) for i in range(18))
    assert parts.hand_boxes([tiny], SIZE) == []
    (face,) = parts.face_boxes([person], SIZE)
    assert face == parts.Box(80, 0, 40)  # nose-neck 20 px x 2 wins over eyes 10 px x 3; clipped at the top


def gaussian_maps(points: dict[int, tuple[int, int]], count: int, side: int) -> np.ndarray:
    ys, xs = np.mgrid[0:side, 0:side]
    maps = np.zeros((count, side, side), np.float32)
    for index, (x, y) in points.items():
        maps[index] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0**2))
    maps[-1] = 1.0  # background: never a keypoint
    return maps


def test_keypoints_land_on_the_maps_peaks_in_image_coordinates():
    box = parts.Box(30, 50, 40)
    found = parts.keypoints(gaussian_maps({0: (5, 7), 8: (33, 21), 20: (39, 0)}, 22, 40), box, 0.05)
    assert len(found) == 21
    assert (found[0], found[8], found[20]) == ((35.0, 57.0), (63.0, 71.0), (69.0, 50.0))
    assert all(point is None for index, point in enumerate(found) if index not in (0, 8, 20))
    faint = gaussian_maps({3: (10, 10)}, 22, 40) * 0.04
    assert parts.keypoints(faint, box, 0.05)[3] is None


# The thumb's chain (wrist 0 to tip 4) in a hand box, 12+ px apart so bones show between the discs.
THUMB = {0: (4, 40), 1: (16, 34), 2: (28, 26), 3: (38, 16), 4: (44, 4)}


def test_openpose_hand_draws_the_hands_keypoints_over_the_body(library, monkeypatch):
    heat, paf = synthetic_maps([PERSON], SIZE)
    monkeypatch.setattr(ann, "pose_maps", lambda net, rgb: (heat, paf))
    monkeypatch.setattr(ann, "part_maps", lambda net, rgb, box: gaussian_maps(THUMB, 22, box.side))
    annotators = annotators_of(library)
    image = np.asarray(annotators.apply("openpose_hand", Image.new("RGB", SIZE)) * 255).round().astype(np.uint8)
    body = np.asarray(ann.draw_pose(ann.decode_pose(heat, paf), SIZE))
    boxes = parts.hand_boxes([tuple(PERSON.get(i) for i in range(18))], SIZE)
    assert len(boxes) == 2
    for box in boxes:
        for x, y in THUMB.values():
            assert tuple(image[box.y + y, box.x + x]) == (0, 0, 255)  # blue
        for index in range(4):  # bones 0-1 ... 3-4: their own rainbow colour halfway along
            (x0, y0), (x1, y1) = THUMB[index], THUMB[index + 1]
            colour = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(index / 20, 1.0, 1.0))
            assert tuple(image[box.y + round((y0 + y1) / 2), box.x + round((x0 + x1) / 2)]) == colour
    # Away from the hands (their boxes and the discs' radius) the picture is the body pose as openpose draws it.
    outside = np.ones(SIZE[::-1], bool)
    for box in boxes:
        outside[max(0, box.y - 5):box.y + box.side + 5, max(0, box.x - 5):box.x + box.side + 5] = False
    assert np.array_equal(image[outside], body[outside])
    # openpose_full adds the face (white discs) too; openpose_face alone no hands.
    face_image = np.asarray(annotators.apply("openpose_face", Image.new("RGB", SIZE)) * 255).round()
    (face,) = parts.face_boxes([tuple(PERSON.get(i) for i in range(18))], SIZE)
    assert tuple(face_image[face.y + 40, face.x + 4]) == (255, 255, 255)
    assert tuple(face_image[boxes[0].y + 40, boxes[0].x + 4]) != parts.HAND_JOINT_COLOUR
    full = np.asarray(annotators.apply("openpose_full", Image.new("RGB", SIZE)) * 255).round()
    assert tuple(full[face.y + 40, face.x + 4]) == parts.FACE_COLOUR
    assert tuple(full[boxes[0].y + 40, boxes[0].x + 4]) == parts.HAND_JOINT_COLOUR


def test_the_units_control_image_runs_the_real_networks(library, tmp_path, monkeypatch):
    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(picture)
    annotators = annotators_of(library)
    unit = ControlUnit(model="any", image=str(picture), preprocessor="openpose_full")
    tensor = _control_image(unit, None, (64, 48), annotators)
    by_hand = ann.annotate_pose(annotators.find("openpose"), annotators.find(HAND), annotators.find(FACE),
                                Image.open(picture).convert("RGB"))  # fmt: skip
    assert np.array_equal(tensor[0].numpy().transpose(1, 2, 0), by_hand)
    # A box's maps come from the hand network on the crop resized to 368 px, at the box's size.
    maps = ann.part_maps(annotators.find(HAND).net, Image.open(picture).convert("RGB"), parts.Box(4, 4, 40))
    assert maps.shape == (22, 40, 40) and np.isfinite(maps).all()
    # With a person found (synthetic body maps), the real hand network runs on each hand's box.
    heat, paf = synthetic_maps([PERSON], SIZE)
    monkeypatch.setattr(ann, "pose_maps", lambda net, rgb: (heat, paf))
    rgb = Image.new("RGB", SIZE, (90, 140, 60))
    people = ann.decode_pose(heat, paf)
    hand = annotators.find(HAND)
    expected = parts.draw_hands(ann.draw_pose(people, SIZE), [
        parts.keypoints(ann.part_maps(hand.net, rgb, box), box, parts.HAND_THRESHOLD)
        for box in parts.hand_boxes(people, SIZE)])  # fmt: skip
    got = annotators.apply("openpose_hand", rgb)
    assert np.array_equal(got, np.asarray(expected, np.float32) / 255.0)
