"""ComfyUI's scaled-fp8 transformers (`scaled_fp8` marker, per-layer `scale_weight`, sometimes `scale_input`):
detected ("fp8 e4m3fn scaled" in the library row) and dequantised at load (weight times scale), so the image
is bare diffusers' with the dequantised weights, pixel for pixel. Before Marble knew the format, a scaled
Flux file failed with "unexpected tensor 'scaled_fp8'" and a scaled SD3 file loaded its fp8 weights without
their scales: the image was noise, silently."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from desktop.engine.backends.families import convert_flux_bfl, shipped_tokenizers
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_flux, bare_image
from tests.support.tiny_dit import build_tiny_flux, build_tiny_sd3, config_folder, flux_to_bfl, save_pipeline

E4M3 = torch.float8_e4m3fn


def scaled_fp8(state, *, prefix="", input_scales=True, mixed=None):
    """(the file's tensors, the dequantised weights, the weights with the scales ignored), as ComfyUI writes
    them: each 2-D weight divided by max|w|/448 and stored in e4m3fn with that scale beside it (a float32
    scalar), the first layers also with an input scale; the rest as it was; a `scaled_fp8` marker.

    `mixed`: ComfyUI's newer mixed-precision layout instead: only the weights whose names start with `mixed`
    quantised, their scales named `weight_scale` / `input_scale` beside a `comfy_quant` JSON tensor; no marker."""
    file, exact, unscaled = {}, {}, {}
    names = ("weight_scale", "input_scale") if mixed else ("scale_weight", "scale_input")
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight") and key.startswith(mixed or ""):
            scale = value.abs().max().float() / torch.finfo(E4M3).max
            stored = (value.float() / scale).to(E4M3)
            layer = prefix + key.removesuffix("weight")
            file[prefix + key] = stored
            file[layer + names[0]] = scale.reshape(())
            if input_scales and len(file) < 12:
                file[layer + names[1]] = torch.tensor(0.01)
            if mixed:
                file[layer + "comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
            exact[key] = stored.float() * scale
            unscaled[key] = stored.float()
        else:
            file[prefix + key] = exact[key] = unscaled[key] = value.contiguous()
    if not mixed:
        file[prefix + "scaled_fp8"] = torch.empty(0, dtype=E4M3)
    return file, exact, unscaled


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scaled")
    pipe = build_tiny_flux()
    return {"pipe": pipe, "folder": save_pipeline(pipe, tmp / "flux"), "config": config_folder(pipe, tmp / "config")}


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def with_weights(transformer, state):
    copied = copy.deepcopy(transformer)
    copied.load_state_dict(state, strict=True)
    return copied


def test_scaled_fp8_flux_matches_diffusers_on_the_dequantised_weights(flux, paths, tmp_path):
    pipe = flux["pipe"]
    file, exact, unscaled = scaled_fp8(flux_to_bfl(pipe.transformer.state_dict()), prefix="model.diffusion_model.")
    path = tmp_path / "flux1-dev-fp8.safetensors"
    save_file(file, str(path))
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.dtype) == ("flux", "bfl", "F8_E4M3_SCALED")
    assert arch.dit.scaled_fp8
    assert arch.dit.fp8_storage is None  # dequantised at load, not cast up without its scales
    assert arch.dit.parameters == sum(v.numel() for v in pipe.transformer.state_dict().values())
    record = Library(AppPaths.for_root(tmp_path / "lib").ensure()).import_path(path, "model", name="scaled")
    assert record.shown_architecture.endswith(", fp8 e4m3fn scaled"), record.shown_architecture

    request = request_for(path, negative_prompt="", distilled_cfg_scale=3.5, model_config=str(flux["config"]),
                          text_encoders=str(flux["folder"]))  # fmt: skip
    got = pixels(run(make_backend(paths), request)[0].images[0])
    extra = {"guidance_scale": 3.5, "max_sequence_length": 512}
    # Marble's BFL name conversion (pixel-checked against diffusers in test_model_families) names the reference.
    expected = bare_image(bare_flux(flux["folder"], with_weights(pipe.transformer, convert_flux_bfl(exact))), request,
                          **extra)  # fmt: skip
    assert np.array_equal(got, expected)
    ignored = bare_image(
        bare_flux(flux["folder"], with_weights(pipe.transformer, convert_flux_bfl(unscaled))), request, **extra
    )
    assert np.abs(ignored.astype(float) - got.astype(float)).mean() > 20  # what ignoring the scales would give


def test_scaled_fp8_sd3_matches_diffusers_on_the_dequantised_weights(paths, tmp_path):
    pipe = build_tiny_sd3()
    folder = save_pipeline(pipe, tmp_path / "sd3")
    file, exact, unscaled = scaled_fp8(dict(pipe.transformer.state_dict()))
    path = tmp_path / "sd3.5_medium_fp8_scaled.safetensors"
    save_file(file, str(path))
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.dtype) == ("sd3.5", "diffusers", "F8_E4M3_SCALED")

    request = request_for(path, cfg_scale=5.0, model_config=str(config_folder(pipe, tmp_path / "cfg")),
                          text_encoders=str(folder))  # fmt: skip
    got = pixels(run(make_backend(paths), request)[0].images[0])
    bare = type(pipe).from_pretrained(
        str(folder), local_files_only=True, transformer=with_weights(pipe.transformer, exact),
        **shipped_tokenizers(Resources.default(), folder, "sd3"),
    )  # fmt: skip
    bare.set_progress_bar_config(disable=True)
    expected = bare_image(bare, request, negative_prompt=request.negative_prompt, guidance_scale=5.0)
    assert np.array_equal(got, expected)
    bare.transformer = with_weights(pipe.transformer, unscaled)
    ignored = bare_image(bare, request, negative_prompt=request.negative_prompt, guidance_scale=5.0)
    assert np.abs(ignored.astype(float) - got.astype(float)).mean() > 20


def test_scaled_fp8_chroma_matches_diffusers_on_the_dequantised_weights(paths, tmp_path):
    from tests.engine.test_chroma import bare_image as chroma_image
    from tests.support.tiny_chroma import build_tiny_chroma

    pipe = build_tiny_chroma()
    folder = save_pipeline(pipe, tmp_path / "chroma")
    file, exact, _ = scaled_fp8(dict(pipe.transformer.state_dict()), input_scales=False)
    path = tmp_path / "chroma-fp8-scaled.safetensors"
    save_file(file, str(path))
    assert detect_model(path).dit.scaled_fp8
    config = config_folder(pipe, tmp_path / "cfg")
    request = request_for(path, negative_prompt="blurry", cfg_scale=4.0, model_config=str(config),
                          text_encoders=str(folder))  # fmt: skip
    got = pixels(run(make_backend(paths), request)[0].images[0])
    bare = type(pipe).from_pretrained(
        str(folder), local_files_only=True, transformer=with_weights(pipe.transformer, exact),
        **shipped_tokenizers(Resources.default(), folder, "chroma"),
    )  # fmt: skip
    bare.set_progress_bar_config(disable=True)
    assert np.array_equal(got, chroma_image(bare, request))


def test_a_scale_without_its_weight_names_the_file(flux, paths, tmp_path):
    file, _, _ = scaled_fp8(flux_to_bfl(flux["pipe"].transformer.state_dict()))
    file["double_blocks.0.img_attn.gone.scale_weight"] = torch.tensor(1.0)
    path = tmp_path / "damaged.safetensors"
    save_file(file, str(path))
    request = request_for(path, negative_prompt="", model_config=str(flux["config"]), text_encoders=str(flux["folder"]))
    with pytest.raises(ModelError, match=r"damaged\.safetensors: double_blocks\.0\.img_attn\.gone\.scale_weight"):
        run(make_backend(paths), request)


def test_a_scaled_fp8_sdxl_checkpoint_is_refused_clearly_not_loaded_without_its_scales(tiny_sdxl_single, tmp_path):
    from safetensors.torch import load_file

    file, _, _ = scaled_fp8(load_file(str(tiny_sdxl_single[0])), prefix="")
    path = tmp_path / "sdxl_fp8_scaled.safetensors"
    save_file(file, str(path))
    with pytest.raises(ModelError, match=r"sdxl_fp8_scaled\.safetensors is an SD/SDXL checkpoint stored as scaled fp8"):
        detect_model(path)


def test_an_all_in_one_file_with_a_scaled_fp8_t5_takes_its_text_encoders_from_a_folder(flux, paths, tmp_path):
    from tests.support.tiny_dit import save_all_in_one

    whole = tmp_path / "aio.safetensors"
    save_all_in_one(flux["pipe"], whole)
    from safetensors.torch import load_file

    state = load_file(str(whole))
    t5 = {k.removeprefix("text_encoders.t5xxl."): v for k, v in state.items() if k.startswith("text_encoders.t5xxl.")}
    scaled_t5, _, _ = scaled_fp8(t5, prefix="text_encoders.t5xxl.")
    rest = {k: v for k, v in state.items() if not k.startswith("text_encoders.t5xxl.")}
    path = tmp_path / "aio-scaled-t5.safetensors"
    save_file(rest | scaled_t5, str(path))
    arch = detect_model(path)
    assert arch.dit.components == ("transformer", "clip_l", "vae") and arch.dit.needs_components
    with pytest.raises(ModelError, match="holds the Flux.1 dev transformer only"):
        run(make_backend(paths), request_for(path, negative_prompt="", model_config=str(flux["config"])))


def test_an_sd3_all_in_one_file_with_a_scaled_t5_needs_a_text_encoder_folder():
    # SD3 needs only CLIP-L and a VAE inside to load by itself; a scaled T5 beside them would load unscaled.
    from desktop.engine.library.dit import TensorShape, detect_dit

    tensors = {
        "model.diffusion_model.x_embedder.proj.weight": TensorShape("F16", (64, 16, 2, 2)),
        "model.diffusion_model.context_embedder.weight": TensorShape("F16", (64, 32)),
        "model.diffusion_model.final_layer.linear.weight": TensorShape("F16", (64, 64)),
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": TensorShape("F16", (192, 64)),
        "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": TensorShape("F16", (32,)),
        "vae.decoder.conv_in.weight": TensorShape("F16", (8, 4, 3, 3)),
    }
    assert not detect_dit(tensors, name="sd3").needs_components
    q = "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q."
    t5 = {
        q + "weight": TensorShape("F8_E4M3", (8, 8)), q + "scale_weight": TensorShape("F32", ()),
        "text_encoders.t5xxl.transformer.scaled_fp8": TensorShape("F8_E4M3", (0,)),
    }
    info = detect_dit(tensors | t5, name="sd3")
    assert info.needs_components and info.scaled_encoders and "t5xxl" not in info.components


def test_comfyui_mixed_precision_fp8_layers_are_dequantised_too(flux, paths, tmp_path):
    # ComfyUI's newer layout ("fp8mixed"): weight_scale / input_scale / comfy_quant, no marker, fp8 layers in
    # the minority: still scaled, never loaded as plain fp32 beside unscaled fp8.
    pipe = flux["pipe"]
    state = flux_to_bfl(pipe.transformer.state_dict())
    file, exact, _ = scaled_fp8(state, prefix="model.diffusion_model.", mixed="double_blocks.0.")
    path = tmp_path / "flux-fp8mixed.safetensors"
    save_file(file, str(path))
    arch = detect_model(path)
    assert (arch.dit.dtype, arch.dit.scaled_fp8) == ("MIXED_SCALED", True)
    record = Library(AppPaths.for_root(tmp_path / "lib").ensure()).import_path(path, "model", name="mixed")
    assert record.shown_architecture.endswith(", fp8 scaled (mixed precision)"), record.shown_architecture
    request = request_for(path, negative_prompt="", distilled_cfg_scale=3.5, model_config=str(flux["config"]),
                          text_encoders=str(flux["folder"]))  # fmt: skip
    got = pixels(run(make_backend(paths), request)[0].images[0])
    expected = bare_image(bare_flux(flux["folder"], with_weights(pipe.transformer, convert_flux_bfl(exact))), request,
                          guidance_scale=3.5, max_sequence_length=512)  # fmt: skip
    assert np.array_equal(got, expected)


def test_a_block_scaled_nvfp4_file_is_refused_by_name(flux, tmp_path):
    state = {"model.diffusion_model." + k: v for k, v in flux_to_bfl(flux["pipe"].transformer.state_dict()).items()}
    layer = "model.diffusion_model.double_blocks.0.img_attn.proj."
    state[layer + "weight_scale"] = torch.ones((32, 2), dtype=E4M3)
    state[layer + "weight_scale_2"] = torch.tensor(1.0)
    path = tmp_path / "flux-nvfp4.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"flux-nvfp4\.safetensors: its weights use a block-scaled quantisation "
                                         r"\(double_blocks\.0\.img_attn\.proj\.weight_scale"):  # fmt: skip
        detect_model(path)


def test_scaled_fp8_qwen_image_matches_diffusers_on_the_dequantised_weights(paths, tmp_path):
    # Comfy-Org ships Qwen-Image as `qwen_image_fp8_e4m3fn_scaled`: diffusers' names under ComfyUI's prefix.
    from tests.engine.test_qwen_zimage import qwen_expected
    from tests.support.tiny_qwen_zimage import build_tiny_qwen_image

    pipe = build_tiny_qwen_image()
    folder = tmp_path / "qwen"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    file, exact, _ = scaled_fp8(dict(pipe.transformer.state_dict()), prefix="model.diffusion_model.")
    path = tmp_path / "qwen_image_fp8_e4m3fn_scaled.safetensors"
    save_file(file, str(path))
    arch = detect_model(path)
    assert (arch.family, arch.dit.dtype) == ("qwen-image", "F8_E4M3_SCALED")
    request = request_for(path, steps=2, cfg_scale=4.0, negative_prompt="", model_config=str(folder),
                          text_encoders=str(folder))  # fmt: skip
    got = pixels(run(make_backend(paths), request)[0].images[0])
    assert np.array_equal(got, qwen_expected(folder, request, with_weights(pipe.transformer, exact)))
