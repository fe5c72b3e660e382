"""Control-LoRA files: the ControlNet they stand for is rebuilt exactly on the loaded UNet, generates
pixel-identically to bare diffusers with that ControlNet, and wrong or damaged files are refused with a
sentence. The files are made here from the tiny models (tests/support/tiny_controls.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline
from PIL import Image, ImageDraw

from desktop.engine.backends.control_lora import build_control_lora
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.metadata import read_text_chunks
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit, GenerationRequest, LoraRef
from desktop.engine.resources import Resources
from tests.support import tiny_controls, tiny_loras, tiny_models
from tests.support.cli_runner import run_cli

STEPS = 3


@pytest.fixture(scope="module")
def sd15():
    return tiny_models.build_tiny_sd15()


@pytest.fixture(scope="module")
def sdxl():
    return tiny_models.build_tiny_sdxl()


@pytest.fixture(scope="module")
def sd15_lora(sd15):
    return tiny_controls.build_tiny_control_lora(sd15.unet, seed=11)


@pytest.fixture(scope="module")
def sdxl_lora(sdxl):
    return tiny_controls.build_tiny_control_lora(sdxl.unet, seed=12)


@pytest.fixture(scope="module")
def control_image(tmp_path_factory):
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((8, 12, 35, 47), fill="white")  # off centre: a flip would show
    path = tmp_path_factory.mktemp("control-lora-image") / "square.png"
    image.save(path)
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory, sd15_lora, sdxl_lora) -> AppPaths:
    """A library with both Control-LoRAs imported the way users import them (`marble controls import`)."""
    root = tmp_path_factory.mktemp("control-lora-home")
    sources = tmp_path_factory.mktemp("control-lora-sources")
    for name, (_, tensors) in (("sd15-lora", sd15_lora), ("xl-lora", sdxl_lora)):
        source = tiny_controls.save_tensors(tensors, sources / f"{name}.safetensors")
        code, _, err = run_cli("controls", "import", str(source), "--home", str(root))
        assert code == 0, err
    return AppPaths.for_root(root)


@pytest.fixture(scope="module")
def backend(home) -> DiffusersBackend:
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)


def request_for(model, **changes) -> GenerationRequest:
    values = dict(prompt="a red circle on a blue background", model=str(model), steps=STEPS, cfg_scale=7.0,
                  seed=7, width=64, height=64, device="cpu")  # fmt: skip
    return GenerationRequest(**(values | changes)).validate()


def image_of(backend: DiffusersBackend, request: GenerationRequest) -> np.ndarray:
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    return np.asarray(batch.images[0].convert("RGB")).astype(np.int16)


def bare(cls, folder, controlnet, request, control_image) -> np.ndarray:
    pipe = cls.from_pretrained(str(folder), local_files_only=True, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                 generator=torch.Generator("cpu").manual_seed(request.seed), width=64, height=64,
                 image=Image.open(control_image).convert("RGB")).images[0]  # fmt: skip
    return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_controlnet_is_rebuilt_exactly(request, tmp_path, family):
    pipe = request.getfixturevalue(family)
    expected, tensors = request.getfixturevalue(f"{family}_lora")
    path = tiny_controls.save_tensors(tensors, tmp_path / "cl.safetensors")
    info = inspect_control(read_safetensors_header(path))
    assert info.kind == "control-lora" and info.family == ("sdxl" if family == "sdxl" else None)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    model = build_control_lora(dict(tensors), info, pipe.unet, "cl")
    ours, theirs = model.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert dict(model.config) == dict(expected.config)
    # The UNet lent its weights but was not changed by the deltas.
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    # The file's layout as diffusers' own reader of Stability's files sees it (an independent check of the
    # test's exporter): LoRA pairs as lora_B (up) / lora_A (down) on the UNet's weights, the rest in full.
    from diffusers.utils import convert_sai_sd_control_lora_state_dict_to_peft

    peft = convert_sai_sd_control_lora_state_dict_to_peft(dict(tensors))
    unet_weights = pipe.unet.state_dict()
    for key, value in peft.items():
        if ".lora_B." in key:
            weight = key.replace(".lora_B.weight", ".weight")
            down = peft[key.replace(".lora_B.", ".lora_A.")]
            change = (value.flatten(1) @ down.flatten(1)).reshape(theirs[weight].shape)
            assert torch.allclose(theirs[weight], unet_weights[weight] + change, atol=1e-6)
        elif ".lora_A." not in key:
            assert torch.equal(theirs[key], value)
    assert len(peft) == len(tensors) - 1  # every tensor but the marker has a place


def test_sd15_control_lora_equals_bare_diffusers_and_weight_zero_is_no_control(
    backend, home, tiny_sd15_dir, sd15_lora, control_image
):
    assert "Control-LoRA" in run_cli("controls", "list", "--home", str(home.models.parent))[1]
    request = request_for(tiny_sd15_dir, controls=(ControlUnit("sd15-lora", str(control_image)),))
    ours = image_of(backend, request)
    expected = bare(StableDiffusionControlNetPipeline, tiny_sd15_dir, sd15_lora[0], request, control_image)
    assert np.array_equal(ours, expected)
    without = image_of(backend, request_for(tiny_sd15_dir))
    assert np.abs(ours - without).mean() > 1.0  # the control counts
    zero = request_for(tiny_sd15_dir, controls=(ControlUnit("sd15-lora", str(control_image), weight=0.0),))
    assert np.array_equal(image_of(backend, zero), without)


def test_sdxl_control_lora_equals_bare_diffusers(backend, tiny_sdxl_dir, sdxl_lora, control_image):
    request = request_for(tiny_sdxl_dir, controls=(ControlUnit("xl-lora", str(control_image)),))
    ours = image_of(backend, request)
    expected = bare(StableDiffusionXLControlNetPipeline, tiny_sdxl_dir, sdxl_lora[0], request, control_image)
    assert np.array_equal(ours, expected)
    assert np.abs(ours - image_of(backend, request_for(tiny_sdxl_dir))).mean() > 1.0


def test_a_control_lora_for_another_family_is_refused_clearly(backend, tiny_sd15_dir, tiny_sdxl_dir, control_image):
    on_xl = request_for(tiny_sdxl_dir, controls=(ControlUnit("sd15-lora", str(control_image)),))
    with pytest.raises(ModelError, match=r"'sd15-lora' is made for SD 1.x/2.x models; the loaded model is SDXL"):
        image_of(backend, on_xl)
    on_sd15 = request_for(tiny_sd15_dir, controls=(ControlUnit("xl-lora", str(control_image)),))
    with pytest.raises(ModelError, match=r"'xl-lora' is made for SDXL models; the loaded model is SD 1.x/2.x"):
        image_of(backend, on_sd15)


def test_incomplete_or_damaged_files_are_refused_clearly(home, backend, tiny_sd15_dir, sd15_lora, control_image):
    _, tensors = sd15_lora
    broken = {
        "no-zero-conv": (
            {k: v for k, v in tensors.items() if k != "zero_convs.1.0.weight"},
            "'no-zero-conv' is incomplete: it has no zero_convs.1.0.weight",
        ),
        "no-down": (
            {k: v for k, v in tensors.items() if k != "input_blocks.1.0.in_layers.2.down"},
            "input_blocks.1.0.in_layers.2.up has no matching input_blocks.1.0.in_layers.2.down",
        ),
        "bad-rank": (
            {**tensors, "input_blocks.1.0.in_layers.2.down": tensors["input_blocks.1.0.in_layers.2.down"][:1]},
            "broken pair at input_blocks.1.0.in_layers.2",
        ),
        "wide-hint": (
            {**tensors, "zero_convs.0.0.weight": torch.zeros(5, 5, 1, 1)},
            r"zero_convs.0.0.weight is \[5, 5, 1, 1\], the model needs",
        ),
    }
    for name, (state, _) in broken.items():
        tiny_controls.save_tensors(state, home.controls / f"{name}.safetensors")
    whole = tiny_controls.save_tensors(tensors, home.controls / "cut.safetensors")
    whole.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a download cut short
    broken["cut"] = ({}, "cut is truncated")
    for name, (_, message) in broken.items():
        request = request_for(tiny_sd15_dir, controls=(ControlUnit(name, str(control_image)),))
        with pytest.raises(ModelError, match=message):
            image_of(backend, request)


def test_generate_with_a_control_lora_on_the_command_line(home, tiny_sd15_dir, control_image, tmp_path):
    out = tmp_path / "out.png"
    code, _, err = run_cli("generate", "--model", str(tiny_sd15_dir), "--prompt", "a cat", "--steps", "2",
                           "--seed", "3", "--width", "64", "--height", "64", "--device", "cpu", "--no-preview",
                           "--home", str(home.models.parent), "--control", f"sd15-lora:{control_image}:0.7",
                           "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert "Model: sd15-lora [" in read_text_chunks(out)["parameters"]


def test_a_control_lora_is_built_on_the_models_own_weights_not_a_merged_lycoris(
    home, tiny_sd15_dir, sd15, sd15_lora, control_image
):
    # A full-diff LyCORIS file on the encoder layers the ControlNet copies, merged into the UNet in place.
    generator = torch.Generator().manual_seed(21)
    tensors = {
        "lora_unet_" + name.replace(".", "_") + ".diff": torch.randn(layer.weight.shape, generator=generator)
        for name, layer in tiny_loras._linear_modules(sd15.unet, tiny_loras.UNET_TARGETS)
        if name.startswith(("down_blocks.", "mid_block."))
    }
    assert tensors
    tiny_loras.save_lora(tensors, home.loras / "encoder-diff.safetensors")
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)
    unit = ControlUnit("sd15-lora", str(control_image))
    image_of(backend, request_for(tiny_sd15_dir, controls=(unit,), loras=(LoraRef("encoder-diff"),)))
    assert backend._loras.own_weights()  # the file is merged into the UNet's weights while the ControlNet is built
    (model,) = [model for model, info, _ in backend._controls._loaded.values() if info.kind == "control-lora"]
    ours, expected = model.state_dict(), sd15_lora[0].state_dict()
    assert [k for k in expected if not torch.equal(ours[k], expected[k])] == []
    request = request_for(tiny_sd15_dir, controls=(unit,))
    alone = image_of(backend, request)  # the ControlNet built above, reused
    assert np.array_equal(alone, bare(StableDiffusionControlNetPipeline, tiny_sd15_dir, sd15_lora[0], request,
                                      control_image))  # fmt: skip


def test_a_control_lora_and_a_full_controlnet_in_one_job(backend, home, tiny_sd15_dir, sd15, sd15_lora, control_image):
    full = tiny_controls.build_tiny_controlnet(sd15.unet, seed=13)
    tiny_controls.save_controlnet(full, home.controls / "full-edges.safetensors", "ldm")
    units = (ControlUnit("sd15-lora", str(control_image), 0.7), ControlUnit("full-edges", str(control_image), 1.2))
    request = request_for(tiny_sd15_dir, controls=units)
    ours = image_of(backend, request)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(str(tiny_sd15_dir), local_files_only=True,
                                                             controlnet=[sd15_lora[0], full])  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(control_image).convert("RGB")
    expected = pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                    generator=torch.Generator("cpu").manual_seed(request.seed), width=64, height=64,
                    image=[image, image], controlnet_conditioning_scale=[0.7, 1.2]).images[0]  # fmt: skip
    assert np.array_equal(ours, np.asarray(expected.convert("RGB")).astype(np.int16))
