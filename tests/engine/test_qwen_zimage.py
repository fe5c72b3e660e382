"""Qwen-Image and Z-Image: tiny random models in each layout, detected from their tensors and run offline
through Marble, pixel-identical to bare diffusers with the same seed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import (
    GGUFQuantizationConfig,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import save_gguf
from tests.support.tiny_qwen_zimage import (
    build_tiny_qwen_image,
    build_tiny_z_image,
    save_transformer_file,
    z_image_to_original,
)

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwen")
    pipe = build_tiny_qwen_image()
    folder = tmp / "qwen"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": folder,
        # ComfyUI's split file, under a name that says nothing true.
        "comfy": save_transformer_file(state, tmp / "flux-dev.safetensors", prefix=PREFIX),
        "gguf": save_gguf(state, tmp / "qwen-Q8_0.gguf", arch="qwen_image"),
        "tmp": tmp,
    }


@pytest.fixture(scope="module")
def zimage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zimage")
    pipe = build_tiny_z_image()
    folder = tmp / "zimage"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": folder,
        "original": save_transformer_file(z_image_to_original(state), tmp / "z.safetensors", prefix=PREFIX),
        "diffusers": save_transformer_file(state, tmp / "z-diffusers.safetensors"),
        "tmp": tmp,
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_image(cls, folder, request, transformer=None, **extra):
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = cls.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=request.prompt, num_inference_steps=request.steps, width=request.width, height=request.height,
        generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
    ).images[0]  # fmt: skip
    return pixels(image)


def qwen_expected(folder, request, transformer=None):
    return bare_image(
        QwenImagePipeline, folder, request, transformer, negative_prompt=request.negative_prompt or " ",
        true_cfg_scale=request.cfg_scale,
    )  # fmt: skip


def test_qwen_image_folder_is_detected_and_matches_bare_diffusers(paths, qwen):
    arch = detect_model(qwen["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.label) == (
        "qwen-image", "diffusers", "qwen-image", "Qwen-Image"
    )  # fmt: skip
    request = request_for(qwen["folder"], steps=2, cfg_scale=4.0)
    batch, steps = run(make_backend(paths), request)
    expected = qwen_expected(qwen["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == 2
    # True CFG runs against the negative prompt: another negative, another image.
    other, _ = run(make_backend(paths), request_for(qwen["folder"], steps=2, cfg_scale=4.0, negative_prompt="x"))
    assert not np.array_equal(pixels(other.images[0]), expected)


def test_qwen_image_comfyui_file_with_text_encoders_from_its_folder_matches(paths, qwen):
    arch = detect_model(qwen["comfy"])
    assert (arch.family, arch.dit.layout, arch.dit.components, arch.dit.blocks) == (
        "qwen-image", "diffusers", ("transformer",), (2, 0)
    )  # fmt: skip
    request = request_for(
        qwen["comfy"], steps=2, cfg_scale=4.0, negative_prompt="", model_config=str(qwen["folder"]),
        text_encoders=str(qwen["folder"]),
    )  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), qwen_expected(qwen["folder"], request))


def test_qwen_image_gguf_matches_diffusers_gguf_loading(paths, qwen):
    arch = detect_model(qwen["gguf"])
    assert (arch.family, arch.dit.quantization) == ("qwen-image", "Q8_0")
    request = request_for(
        qwen["gguf"], steps=2, cfg_scale=4.0, model_config=str(qwen["folder"]), text_encoders=str(qwen["folder"])
    )
    batch, _ = run(make_backend(paths), request)
    transformer = QwenImageTransformer2DModel.from_single_file(
        str(qwen["gguf"]), config=str(qwen["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    expected = qwen_expected(qwen["folder"], request, transformer)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, qwen_expected(qwen["folder"], request))  # Q8_0 really was used


def test_a_transformer_file_without_text_encoders_is_refused_naming_what_to_supply(paths, qwen, zimage, tmp_path):
    with pytest.raises(ModelError, match=r"flux-dev\.safetensors holds the Qwen-Image transformer only.*Qwen2\.5-VL"):
        run(make_backend(paths), request_for(qwen["comfy"], model_config=str(qwen["folder"])))
    # A folder without a tokenizer: what is missing is named.
    partial = tmp_path / "encoders"
    for part in ("text_encoder", "vae"):
        shutil.copytree(zimage["folder"] / part, partial / part)
    with pytest.raises(ModelError, match=r"encoders cannot serve z\.safetensors: it has no tokenizer/"):
        run(make_backend(paths), request_for(
            zimage["original"], model_config=str(zimage["folder"]), text_encoders=str(partial)
        ))  # fmt: skip


def test_z_image_folder_is_detected_and_matches_bare_diffusers(paths, zimage):
    arch = detect_model(zimage["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.dit.blocks) == (
        "z-image", "diffusers", "z-image", (2, 0)
    )  # fmt: skip
    request = request_for(zimage["folder"], steps=2, cfg_scale=4.0)
    batch, _ = run(make_backend(paths), request)
    expected = bare_image(
        ZImagePipeline, zimage["folder"], request, negative_prompt=request.negative_prompt, guidance_scale=4.0
    )
    assert np.array_equal(pixels(batch.images[0]), expected)
    # Its own CFG reaches the pipeline: CFG 1 (off, as for Turbo) gives another image.
    other, _ = run(make_backend(paths), request_for(zimage["folder"], steps=2, cfg_scale=1.0))
    assert not np.array_equal(pixels(other.images[0]), expected)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_z_image_single_files_in_both_layouts_match(paths, zimage, layout):
    arch = detect_model(zimage[layout])
    assert (arch.family, arch.dit.layout, arch.dit.blocks) == ("z-image", layout, (2, 1))
    request = request_for(
        zimage[layout], steps=2, cfg_scale=4.0, model_config=str(zimage["folder"]),
        text_encoders=str(zimage["folder"]),
    )  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    expected = bare_image(
        ZImagePipeline, zimage["folder"], request, negative_prompt=request.negative_prompt, guidance_scale=4.0
    )
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_files_with_a_missing_block_name_the_file(paths, qwen, zimage, tmp_path):
    state = z_image_to_original(dict(zimage["pipe"].transformer.state_dict()))
    middle = save_transformer_file(state, tmp_path / "my-z.safetensors", prefix=PREFIX, drop="layers.0")
    with pytest.raises(ModelError, match=r"my-z\.safetensors looks like Z-Image but layers\.0 is missing"):
        detect_model(middle)
    last = save_transformer_file(state, tmp_path / "short-z.safetensors", drop="layers.1")
    with pytest.raises(ModelError, match=r"short-z\.safetensors has 1 main blocks but the Z-Image configuration has 2"):
        run(make_backend(paths), request_for(
            last, model_config=str(zimage["folder"]), text_encoders=str(zimage["folder"])
        ))  # fmt: skip
    qwen_state = dict(qwen["pipe"].transformer.state_dict())
    broken = save_transformer_file(qwen_state, tmp_path / "q.safetensors", drop="transformer_blocks.0")
    with pytest.raises(ModelError, match=r"q\.safetensors looks like Qwen-Image but transformer_blocks\.0 is missing"):
        detect_model(broken)
    headless = save_transformer_file({k: v for k, v in qwen_state.items() if not k.startswith("img_in.")},
                                     tmp_path / "q2.safetensors")  # fmt: skip
    with pytest.raises(ModelError, match=r"q2\.safetensors looks like Qwen-Image but img_in\.weight is missing"):
        detect_model(headless)


def test_z_image_gguf_in_original_names_matches_diffusers_gguf_loading(paths, zimage, tmp_path):
    state = z_image_to_original(dict(zimage["pipe"].transformer.state_dict()))
    # As ComfyUI-GGUF's converter does, the pad tokens stay floats.
    path = save_gguf(state, tmp_path / "z-Q8_0.gguf", arch="lumina2", keep=("x_pad_token", "cap_pad_token"))
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.quantization) == ("z-image", "original", "Q8_0")
    request = request_for(
        path, steps=2, cfg_scale=4.0, model_config=str(zimage["folder"]), text_encoders=str(zimage["folder"])
    )
    batch, _ = run(make_backend(paths), request)
    transformer = ZImageTransformer2DModel.from_single_file(
        str(path), config=str(zimage["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    extra = {"negative_prompt": request.negative_prompt, "guidance_scale": 4.0}
    expected = bare_image(ZImagePipeline, zimage["folder"], request, transformer, **extra)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(ZImagePipeline, zimage["folder"], request, **extra))


def test_a_z_image_gguf_with_quantised_pad_tokens_names_the_file_and_tensor(zimage, tmp_path):
    state = z_image_to_original(dict(zimage["pipe"].transformer.state_dict()))
    path = save_gguf(state, tmp_path / "odd-z.gguf", arch="lumina2")
    with pytest.raises(ModelError, match=r"odd-z\.gguf: its x_pad_token is stored as Q8_0"):
        detect_model(path)


@pytest.mark.parametrize(
    ("name", "parameters"),
    # Qwen-Image's 20B and Z-Image's 6B transformers, counted from the shipped configs on the meta device.
    [("qwen-image", 20_430_401_088), ("z-image", 6_154_908_736)],
)
def test_shipped_transformer_configs_have_the_published_sizes(name, parameters):
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.resources import Resources

    cls = transformer_class(name)
    with init_empty_weights():
        model = cls.from_config(cls.load_config(str(Resources.default().config_folder(name)), subfolder="transformer"))
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_a_single_file_without_a_config_folder_is_checked_against_the_shipped_config(paths, qwen):
    request = request_for(qwen["comfy"], text_encoders=str(qwen["folder"]))
    with pytest.raises(ModelError, match=r"has 2 main blocks but the Qwen-Image configuration has 60"):
        run(make_backend(paths), request)


def _source(tmp_path):
    from PIL import Image

    gradient = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
    image = Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 90)], axis=-1))
    path = tmp_path / "source.png"
    image.save(path)
    return image, path


@pytest.mark.parametrize("family", ["qwen", "zimage"])
def test_image_to_image_matches_bare_diffusers(paths, qwen, zimage, tmp_path, family):
    from diffusers import QwenImageImg2ImgPipeline, ZImageImg2ImgPipeline

    model = qwen if family == "qwen" else zimage
    image, path = _source(tmp_path)
    request = request_for(model["folder"], steps=4, cfg_scale=4.0, init_image=str(path), strength=0.8)
    assert request.mode == "img2img"
    batch, _ = run(make_backend(paths), request)
    if family == "qwen":
        cls, extra = QwenImageImg2ImgPipeline, {"negative_prompt": request.negative_prompt, "true_cfg_scale": 4.0}
    else:
        cls, extra = ZImageImg2ImgPipeline, {"negative_prompt": request.negative_prompt, "guidance_scale": 4.0}
    expected = bare_image(cls, model["folder"], request, image=image, strength=0.8, **extra)
    assert np.array_equal(pixels(batch.images[0]), expected)
    text_only = run(make_backend(paths), request_for(model["folder"], steps=2, cfg_scale=4.0))[0]
    assert not np.array_equal(pixels(text_only.images[0]), expected)  # the source was used


def test_z_image_inpainting_keeps_the_pixels_outside_the_mask(paths, zimage, tmp_path):
    from PIL import Image

    image, path = _source(tmp_path)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    request = request_for(
        zimage["folder"], steps=2, cfg_scale=4.0, init_image=str(path), mask=str(tmp_path / "mask.png"), strength=1.0,
        mask_blur=0,
    )  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    result = pixels(batch.images[0])
    outside = mask == 0
    assert np.array_equal(result[outside], pixels(image)[outside])
    assert not np.array_equal(result[~outside], pixels(image)[~outside])


def test_edits_are_refused_clearly_for_a_family_without_edit_pipelines():
    # Flux, SD3, Qwen-Image, Z-Image and Chroma edit through their own pipelines (test_dit_edit.py, above,
    # test_chroma.py), Flux.2 dev through Marble's own since 2026-12-07 (test_flux2.py), Sana Sprint's inpainting too
    # (test_sana.py; refused before); a family without edits is refused by name before anything loads.
    from types import SimpleNamespace

    from desktop.engine.backends import families
    from desktop.engine.backends.diffusers_backend import _refuse_dit_edit
    from desktop.engine.library.dit import DIT_LABELS

    assert [families.edits(f) for f in ("flux", "sd3.5", "qwen-image", "z-image", "chroma")] == [True] * 5
    assert families.edits("flux2", "dev") and families.edits("flux2", "dev", "inpaint")
    assert families.edits("sana", "sprint") and families.edits("sana", "sprint", "inpaint")
    assert all(families.edits(family, "", mode) for family in DIT_LABELS for mode in ("img2img", "inpaint"))
    sprint = SimpleNamespace(family="sana", variant="sprint", label="Sana Sprint")
    _refuse_dit_edit("f.safetensors", sprint, "inpaint")
    _refuse_dit_edit("f.safetensors", sprint, "img2img")
    unknown = SimpleNamespace(family="cogview4", variant="", label="CogView4")
    with pytest.raises(ModelError, match=r"CogView4 model; Marble runs it for text-to-image only so far"):
        _refuse_dit_edit("f.safetensors", unknown, "inpaint")
    _refuse_dit_edit("f.safetensors", unknown, "txt2img")


def test_library_rows_and_family_defaults(qwen, zimage, tmp_path):
    from desktop.engine.library.index import Library
    from desktop.engine.library.native_size import family_defaults, model_family

    library = Library(AppPaths.for_root(tmp_path / "lib").ensure())
    record = library.import_path(zimage["original"], "model", name="z")
    assert (record.family, record.layout, record.architecture, record.dtype) == (
        "z-image", "original", "Z-Image", "F32"
    )  # fmt: skip
    assert record.parameters == sum(p.numel() for p in zimage["pipe"].transformer.parameters())
    gguf = library.import_path(qwen["gguf"], "model", name="q")
    assert (gguf.family, gguf.dtype, gguf.format) == ("qwen-image", "Q8_0", "gguf")
    assert gguf.shown_architecture.startswith("Qwen-Image (Q8_0), ")
    assert (model_family(qwen["folder"]), model_family(zimage["diffusers"])) == ("qwen-image", "z-image")
    assert family_defaults("qwen-image") == {"cfg_scale": 4.0}


def test_a_folder_of_bare_components_serves_a_z_image_file(paths, zimage, tmp_path):
    # Not a diffusers folder (no model_index.json, no scheduler): text encoder, tokenizer and VAE only.
    parts = tmp_path / "parts"
    for part in ("text_encoder", "tokenizer", "vae"):
        shutil.copytree(zimage["folder"] / part, parts / part)
    request = request_for(
        zimage["original"], steps=2, cfg_scale=4.0, model_config=str(zimage["folder"]), text_encoders=str(parts)
    )
    batch, _ = run(make_backend(paths), request)
    expected = bare_image(
        ZImagePipeline, zimage["folder"], request, negative_prompt=request.negative_prompt, guidance_scale=4.0
    )
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_an_edit_at_strength_zero_returns_the_source(paths, zimage, tmp_path):
    image, path = _source(tmp_path)
    batch, _ = run(make_backend(paths), request_for(zimage["folder"], steps=2, init_image=str(path), strength=0.0))
    assert np.array_equal(pixels(batch.images[0]), pixels(image))


def test_a_folder_of_the_other_family_is_refused_by_its_configs(paths, qwen, zimage):
    request = request_for(qwen["comfy"], model_config=str(qwen["folder"]), text_encoders=str(zimage["folder"]))
    with pytest.raises(ModelError, match=r"text encoder and VAE are qwen3 and AutoencoderKL, but Qwen-Image needs"):
        run(make_backend(paths), request)
