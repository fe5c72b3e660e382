"""The tiny test models are what every other test trusts: check they load back exactly, offline."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from desktop.engine.library.checkpoint import ArchitectureInfo, detect_architecture, read_safetensors_header
from tests.support.tiny_models import (
    CONFIGS,
    build_full_sd15_single_file,
    build_tiny_sd15,
    build_tiny_sd15_inpaint,
    build_tiny_sdxl,
    iter_ldm_mismatches,
)

CASES = {
    "sd15": (build_tiny_sd15, StableDiffusionPipeline, "tiny_sd15_single"),
    "sd15-inpaint": (build_tiny_sd15_inpaint, StableDiffusionInpaintPipeline, "tiny_sd15_inpaint_single"),
    "sdxl": (build_tiny_sdxl, StableDiffusionXLPipeline, "tiny_sdxl_single"),
}
MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat", as CLIP tokenizes it


@pytest.fixture
def no_network(monkeypatch):
    """Loading must never reach for the hub: fail loudly if anything opens a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def public_config(obj) -> dict:
    # "_use_default_values", "_diffusers_version": bookkeeping that differs after a save/load.
    return {k: v for k, v in obj.config.items() if not k.startswith("_")}


def assert_same_weights(a, b) -> None:
    for name in MODULES:
        left, right = getattr(a, name, None), getattr(b, name, None)
        assert (left is None) == (right is None), name
        if left is None:
            continue
        sa, sb = left.state_dict(), right.state_dict()
        assert sa.keys() == sb.keys(), name
        different = [k for k in sa if sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])]
        assert not different, f"{name}: {different[:5]}"


@pytest.mark.parametrize("kind", list(CASES))
def test_single_file_loads_back_exactly(kind, request, no_network):
    builder, pipeline_cls, fixture = CASES[kind]
    single, config = request.getfixturevalue(fixture)
    original = builder(0)

    loaded = pipeline_cls.from_single_file(str(single), config=str(config), local_files_only=True)

    assert type(loaded) is pipeline_cls
    assert_same_weights(original, loaded)
    assert type(loaded.scheduler) is type(original.scheduler)
    assert public_config(loaded.scheduler) == public_config(original.scheduler)
    assert loaded.tokenizer("a photo of a cat").input_ids == CAT_IDS
    if kind == "sdxl":
        assert loaded.tokenizer_2.pad_token_id == 0  # SDXL's OpenCLIP tokenizer pads with "!"
    assert list(iter_ldm_mismatches(loaded, single)) == []


@pytest.mark.parametrize(
    ("fixture", "pipeline_cls", "builder"),
    [
        ("tiny_sd15_dir", StableDiffusionPipeline, build_tiny_sd15),
        ("tiny_sd15_inpaint_dir", StableDiffusionInpaintPipeline, build_tiny_sd15_inpaint),
        ("tiny_sdxl_dir", StableDiffusionXLPipeline, build_tiny_sdxl),
    ],
)
def test_diffusers_folder_loads_back_exactly(fixture, pipeline_cls, builder, request, no_network):
    loaded = pipeline_cls.from_pretrained(request.getfixturevalue(fixture), local_files_only=True)
    assert type(loaded) is pipeline_cls
    assert_same_weights(builder(0), loaded)


@pytest.mark.parametrize("builder", [build_tiny_sd15, build_tiny_sd15_inpaint, build_tiny_sdxl])
def test_builders_are_deterministic(builder):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, again, other = builder(0), builder(0), builder(1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    assert_same_weights(first, again)
    w0 = first.unet.conv_in.weight
    assert not torch.equal(w0, other.unet.conv_in.weight)


def _generate(pipe, seed: int, **kwargs) -> np.ndarray:
    return pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    ).images


@pytest.mark.parametrize("builder", [build_tiny_sd15, build_tiny_sdxl])
def test_tiny_pipelines_generate_64x64(builder):
    pipe = builder(0)
    image = _generate(pipe, seed=7)
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0.01
    assert np.array_equal(image, _generate(pipe, seed=7))
    assert not np.array_equal(image, _generate(pipe, seed=8))


def test_tiny_inpaint_pipeline_runs():
    pipe = build_tiny_sd15_inpaint(0)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    image = _generate(pipe, seed=3, image=Image.new("RGB", (64, 64), (200, 30, 30)), mask_image=mask)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


@pytest.mark.slow
def test_full_size_sd15_single_file(tmp_path, no_network):
    """The converter on the real SD 1.5 architecture (1,130 tensors, ~2 GB fp16), loaded with the shipped
    configs. Weight-for-weight comparison instead of a generation: it is the loading that is under test."""
    path = tmp_path / "sd15-random.safetensors"
    try:
        build_full_sd15_single_file(path)
        header = read_safetensors_header(path)
        assert len(header.tensors) == 1130
        assert detect_architecture(header, name=path.name) == ArchitectureInfo("sd1", False, "sd15")

        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(CONFIGS / "sd15"), local_files_only=True, torch_dtype=torch.float16
        )
        assert list(pipe.unet.config.block_out_channels) == [320, 640, 1280, 1280]
        assert list(iter_ldm_mismatches(pipe, path)) == []
        del pipe
    finally:
        path.unlink(missing_ok=True)  # pytest keeps old tmp dirs around: don't leave 2 GB behind
