"""Learned control preprocessors (depth, lineart, OpenPose body) from the control library: detection and
import (a model folder, a .pth through the safe child), output format, the unit's control image, the
pose decoder on synthetic maps, and a malicious .pth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from desktop.engine.backends import annotators as ann
from desktop.engine.backends.control import _control_image, _read
from desktop.engine.control_preprocess import A1111_MODULES, preprocessor_from_module
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.library.lora import AdapterCatalog
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_library_index import _Payload
from tests.support.cli_runner import run_cli

# --------------------------------------------------------------------------------------------------
# Tiny networks in the published layouts


def depth_model(seed: int = 0) -> DepthAnythingForDepthEstimation:
    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
                            apply_layernorm=True)  # fmt: skip
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8)  # fmt: skip
    return DepthAnythingForDepthEstimation(config).eval()


def _random(generator: torch.Generator, *shape: int) -> torch.Tensor:
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return torch.randn(*shape, generator=generator) / math.sqrt(fan_in)


def lineart_state(width: int = 4, blocks: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """ControlNet 1.1 lineart generator tensors (sk_model.pth's names), `width` instead of 64."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model0.1": (width, 3, 7, 7), "model1.0": (2 * width, width, 3, 3), "model1.3": (4 * width, 2 * width, 3, 3),
        # Transposed convolutions store (in, out, k, k).
        "model3.0": (4 * width, 2 * width, 3, 3), "model3.3": (2 * width, width, 3, 3), "model4.1": (1, width, 7, 7),
    }  # fmt: skip
    for block in range(blocks):
        for layer in (1, 5):
            shapes[f"model2.{block}.conv_block.{layer}"] = (4 * width, 4 * width, 3, 3)
    state = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"] = _random(g, *shape)
        out = shape[1] if name.startswith("model3.") else shape[0]
        state[f"{name}.bias"] = _random(g, out) * 0.1
    return state


def openpose_state(width: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """OpenPose body_pose_model.pth's tensor names (VGG front, 6 stages x 2 branches), `width` channels."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name: str, inputs: int, out: int, k: int) -> None:
        state[f"{name}.weight"] = _random(g, out, inputs, k, k)
        state[f"{name}.bias"] = _random(g, out) * 0.1

    front = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4", "conv4_1",
             "conv4_2", "conv4_3_CPM", "conv4_4_CPM"]  # fmt: skip
    for index, name in enumerate(front):
        conv(name, 3 if index == 0 else width, width, 3)
    for branch, maps in (("L1", 38), ("L2", 19)):
        for i in (1, 2, 3):
            conv(f"conv5_{i}_CPM_{branch}", width, width, 3)
        conv(f"conv5_4_CPM_{branch}", width, width, 1)
        conv(f"conv5_5_CPM_{branch}", width, maps, 1)
        for stage in range(2, 7):
            conv(f"Mconv1_stage{stage}_{branch}", 38 + 19 + width, width, 7)
            for i in (2, 3, 4, 5):
                conv(f"Mconv{i}_stage{stage}_{branch}", width, width, 7)
            conv(f"Mconv6_stage{stage}_{branch}", width, width, 1)
            conv(f"Mconv7_stage{stage}_{branch}", width, maps, 1)
    return state


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("picture")
    image = Image.new("RGB", (64, 48), (40, 60, 200))
    ImageDraw.Draw(image).ellipse((10, 8, 40, 40), fill=(250, 240, 30))
    path = tmp_path / "picture.png"
    image.save(path)
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A control library with one annotator of each task, imported as a user would (tests only read it)."""
    tmp_path = tmp_path_factory.mktemp("annotators")
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    folder = tmp_path / "depth-anything-tiny"
    depth_model().save_pretrained(folder)
    library = Library(paths)
    library.import_path(folder, "control")
    torch.save({"state_dict": lineart_state()}, tmp_path / "sk_model.pth")
    library.import_path(tmp_path / "sk_model.pth", "control", convert_pickle=True)
    save_file(openpose_state(), str(tmp_path / "body_pose_model.safetensors"))
    library.import_path(tmp_path / "body_pose_model.safetensors", "control")
    return paths


def annotators_of(paths: AppPaths) -> ann.Annotators:
    return ann.Annotators(AdapterCatalog(paths.controls, "control model", "controls"))


# --------------------------------------------------------------------------------------------------
# Detection and the library


def test_annotators_are_detected_imported_and_listed(tmp_path):
    where = str(tmp_path / "home")
    folder = tmp_path / "depth-anything-tiny"
    depth_model().save_pretrained(folder)
    torch.save(lineart_state(), tmp_path / "sk_model.pth")
    save_file(openpose_state(), str(tmp_path / "body.safetensors"))
    for source, extra in ((folder, ()), (tmp_path / "sk_model.pth", ("--convert-pickle",)),
                          (tmp_path / "body.safetensors", ())):  # fmt: skip
        code, _, err = run_cli("controls", "import", str(source), *extra, "--home", where)
        assert code == 0, err
    code, out, _ = run_cli("controls", "list", "--home", where)
    assert code == 0
    assert "Depth preprocessor (Depth Anything)" in out and "Lineart preprocessor" in out
    assert "OpenPose body preprocessor" in out
    assert guess_kind(tmp_path / "body.safetensors") == "control"
    # The folder became one file holding its config; the model file alone is refused with what to do.
    with pytest.raises(ModelError, match="Import the model's folder"):
        inspect_control(read_safetensors_header(folder / "model.safetensors"))


def test_no_annotator_of_the_task_is_a_clear_error(paths):
    with pytest.raises(ModelError, match="The depth preprocessor needs its network, and the control library has none"):
        annotators_of(paths).find("depth")


def test_an_annotator_is_not_a_units_control_model(library):
    with pytest.raises(ModelError, match="is a Lineart preprocessor, not a control model"):
        _read("sk_model", library.controls / "sk_model.safetensors", None, {})


def test_a_malicious_pth_never_runs(paths, tmp_path):
    marker = tmp_path / "PWNED"
    source = tmp_path / "sk_model.pth"
    torch.save({**lineart_state(), "x": _Payload(marker)}, source)
    with pytest.raises(ModelError, match="was not converted: it needs more than plain tensors"):
        Library(paths).import_path(source, "control", convert_pickle=True)
    assert not marker.exists()
    assert [p for p in paths.controls.iterdir()] == []


def test_a1111_module_names():
    assert (A1111_MODULES["depth"], A1111_MODULES["lineart"], A1111_MODULES["openpose"]) == (
        "depth_anything", "lineart_realistic", "openpose",
    )  # fmt: skip
    modules = ("depth_midas", "depth_anything", "lineart_realistic", "openpose")
    assert [preprocessor_from_module(m) for m in modules] == ["depth", "depth", "lineart", "openpose"]


# --------------------------------------------------------------------------------------------------
# Outputs


def test_depth_is_the_models_normalised_inverse_depth_as_grey(library, picture):
    image = Image.open(picture).convert("RGB")
    out = annotators_of(library).apply("depth", image)
    assert out.shape == (48, 64, 3) and out.dtype == np.float32
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert out.min() == 0.0 and out.max() == 1.0
    # By hand with transformers on the original folder: lower-bound resize to 518 (multiple of 14).
    model = DepthAnythingForDepthEstimation.from_pretrained(library.models.parent.parent / "depth-anything-tiny").eval()
    size = (math.ceil(64 * 518 / 48 / 14) * 14, 518)
    array = np.asarray(image.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    array = (array - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    with torch.no_grad():
        depth = model(pixel_values=torch.tensor(array.transpose(2, 0, 1)[None], dtype=torch.float32)).predicted_depth
    depth = torch.nn.functional.interpolate(depth[:, None], (48, 64), mode="bilinear")[0, 0].numpy()
    expected = (depth - depth.min()) / (depth.max() - depth.min())
    # Near (the largest predicted value: inverse depth) is white.
    assert np.abs(out[..., 0] - expected).max() < 1e-4
    assert out[..., 0].flat[np.argmax(depth)] == 1.0


def test_lineart_is_white_lines_on_black(library, picture, tmp_path):
    image = Image.open(picture).convert("RGB")
    annotators = annotators_of(library)
    out = annotators.apply("lineart", image)
    assert out.shape == (48, 64, 3) and np.array_equal(out, annotators.apply("lineart", image))
    net = annotators.find("lineart").net
    with torch.no_grad():
        line = net(torch.tensor(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0))[0, 0].numpy()
    expected = (255 - (line * 255).clip(0, 255).astype(np.uint8)) / 255.0
    assert np.abs(out[..., 0] - expected).max() < 1e-6
    # A network that sees only background (its sigmoid saturated at 1, "white paper") draws nothing: black.
    state = lineart_state()
    state["model4.1.bias"] = torch.full((1,), 50.0)
    save_file(state, str(tmp_path / "blank.safetensors"))
    blank = ann.load_annotator(tmp_path / "blank.safetensors", "blank")
    assert ann.annotate(blank, image).max() == 0.0


def test_a_file_that_does_not_fit_the_layout_is_refused_by_name(tmp_path):
    state = lineart_state()
    state["model2.0.conv_block.1.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelError, match="The lineart preprocessor 'broken' could not be loaded"):
        ann.load_annotator(tmp_path / "broken.safetensors", "broken")


@pytest.mark.parametrize("task", ["depth", "lineart", "openpose"])
def test_the_units_control_image_is_the_annotator_applied_by_hand(library, picture, task):
    annotators = annotators_of(library)
    unit = ControlUnit(model="any", image=str(picture), preprocessor=task)
    tensor = _control_image(unit, None, (64, 48), annotators)
    assert tuple(tensor.shape) == (1, 3, 48, 64)
    by_hand = ann.annotate(annotators.find(task), Image.open(picture).convert("RGB"))
    assert np.array_equal(tensor[0].numpy().transpose(1, 2, 0), by_hand)


def test_openpose_runs_the_body_network(library, picture):
    annotators = annotators_of(library)
    image = Image.open(picture).convert("RGB")
    heat, paf = ann.pose_maps(annotators.find("openpose").net, image)
    assert heat.shape == (19, 48, 64) and paf.shape == (38, 48, 64)
    out = annotators.apply("openpose", image)
    assert out.shape == (48, 64, 3) and np.array_equal(out, annotators.apply("openpose", image))


# --------------------------------------------------------------------------------------------------
# The pose decoder on synthetic maps


def synthetic_maps(people: list[dict[int, tuple[int, int]]], size=(160, 120)) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps with a Gaussian at each given part and part-affinity fields pointing along each limb."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    heat = np.zeros((19, height, width), np.float32)
    paf = np.zeros((38, height, width), np.float32)
    for person in people:
        for part, (x, y) in person.items():
            heat[part] = np.maximum(heat[part], np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0**2)))
        for (a, b), (px, py) in zip(ann.LIMBS, ann.LIMB_PAFS, strict=True):
            if a in person and b in person:
                (x0, y0), (x1, y1) = person[a], person[b]
                length = math.hypot(x1 - x0, y1 - y0)
                ux, uy = (x1 - x0) / length, (y1 - y0) / length
                along = (xs - x0) * ux + (ys - y0) * uy
                across = np.abs((xs - x0) * uy - (ys - y0) * ux)
                on = (along >= 0) & (along <= length) & (across <= 2)
                paf[px][on], paf[py][on] = ux, uy
    return heat, paf


LEFT = {0: (40, 20), 1: (40, 40), 2: (28, 42), 3: (24, 62), 5: (52, 42), 6: (56, 62), 8: (34, 80), 11: (46, 80)}
RIGHT = {part: (x + 80, y + 10) for part, (x, y) in LEFT.items()}


def test_decoder_finds_each_person_at_the_peaks():
    heat, paf = synthetic_maps([LEFT, RIGHT])
    people = sorted(ann.decode_pose(heat, paf), key=lambda p: p[1][0])
    assert len(people) == 2
    for person, truth in zip(people, (LEFT, RIGHT), strict=True):
        assert {i for i, p in enumerate(person) if p is not None} == set(truth)
        for part, (x, y) in truth.items():
            assert person[part] == (x, y)


def test_limbs_are_drawn_in_openposes_colours_where_the_peaks_are():
    heat, paf = synthetic_maps([LEFT])
    image = np.asarray(ann.draw_pose(ann.decode_pose(heat, paf), (160, 120)))
    checked = 0
    for index, (a, b) in enumerate(ann.LIMBS[: ann.DRAWN_LIMBS]):
        if a in LEFT and b in LEFT:
            (x0, y0), (x1, y1) = LEFT[a], LEFT[b]
            # Halfway along: on the limb, clear of the joints' discs (radius 4) at its ends.
            x, y = round((x0 + x1) / 2), round((y0 + y1) / 2)
            if math.hypot(x1 - x0, y1 - y0) / 2 > 5:
                assert tuple(image[y, x]) == tuple(int(c * 0.6) for c in ann.COLOURS[index]), (a, b)
                checked += 1
    assert checked >= 7
    for part, (x, y) in LEFT.items():
        assert tuple(image[y, x]) == ann.COLOURS[part]
    assert tuple(image[110, 150]) == (0, 0, 0) and tuple(image[5, 100]) == (0, 0, 0)


def test_pose_maps_are_the_networks_on_openposes_input(library, picture):
    # By hand: height scaled to 184 (OpenPose's 368 box at scale 0.5), BGR, grey padding to a multiple of 8,
    # values /256 - 0.5; the maps upsampled 8x, the padding cut, then resized to the picture.
    net = annotators_of(library).find("openpose").net
    image = Image.open(picture).convert("RGB")
    small = image.resize((245, 184), Image.Resampling.BICUBIC)  # 64 x 48 -> 245.3 x 184
    bgr = np.full((184, 248, 3), 128.0, np.float32)
    bgr[:, :245] = np.asarray(small, np.float32)[:, :, ::-1]
    with torch.no_grad():
        _, heat = net(torch.tensor(bgr.transpose(2, 0, 1)[None] / 256.0 - 0.5))
    heat = torch.nn.functional.interpolate(heat, scale_factor=8, mode="bicubic")[:, :, :184, :245]
    heat = torch.nn.functional.interpolate(heat, (48, 64), mode="bicubic")[0].numpy()
    assert np.abs(ann.pose_maps(net, image)[0] - heat).max() < 1e-5


def test_a_depth_file_missing_a_tensor_is_refused(library, tmp_path):
    from safetensors.torch import load_file

    packed = library.controls / "depth-anything-tiny.safetensors"
    state = load_file(str(packed))
    del state["head.conv3.bias"]
    save_file(state, str(tmp_path / "short.safetensors"), metadata=dict(read_safetensors_header(packed).metadata))
    with pytest.raises(ModelError, match="The depth preprocessor 'short' could not be loaded"):
        ann.load_annotator(tmp_path / "short.safetensors", "short")


def test_each_peak_joins_one_limb_the_best_scoring():
    # A second, weaker nose further up, on a weaker stretch of the neck-nose field: both pairs pass, the
    # stronger (the true nose) must keep the limb instead of being replaced by the later, weaker one.
    heat, paf = synthetic_maps([LEFT])
    ys, xs = np.mgrid[0:120, 0:160]
    heat[0] = np.maximum(heat[0], 0.5 * np.exp(-((xs - 40) ** 2 + (ys - 8) ** 2) / 8.0))
    px, py = ann.LIMB_PAFS[ann.LIMBS.index((1, 0))]
    band = (np.abs(xs - 40) <= 2) & (ys >= 8) & (ys < 20)
    paf[px][band], paf[py][band] = 0.0, -0.5
    (person,) = ann.decode_pose(heat, paf)
    assert person[0] == LEFT[0]


def test_a_dpt_midas_folder_gives_depth_too(paths, tmp_path):
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                       fusion_hidden_size=16, head_hidden_size=8)  # fmt: skip
    DPTForDepthEstimation(config).save_pretrained(tmp_path / "dpt-tiny")
    record = Library(paths).import_path(tmp_path / "dpt-tiny", "control")
    assert record.architecture == "Depth preprocessor (DPT/MiDaS)"
    out = annotators_of(paths).apply("depth", Image.new("RGB", (64, 48), (90, 30, 200)))
    assert out.shape == (48, 64, 3) and out.min() == 0.0 and out.max() == 1.0


def test_a_network_that_fails_on_the_image_is_a_sentence(paths):
    state = lineart_state()
    state["model0.1.weight"] = torch.zeros(4, 4, 7, 7)  # reads 4 channels: loads, then fails on RGB
    paths.controls.mkdir(parents=True, exist_ok=True)
    save_file(state, str(paths.controls / "four.safetensors"))
    with pytest.raises(ModelError, match="The lineart preprocessor 'four' failed on this image"):
        annotators_of(paths).apply("lineart", Image.new("RGB", (16, 16)))
