"""LoRAs on Flux.1 and SD3: detected with their family from their tensors, applied through the DiT path
with `<lora:name:w>` tags, pixel-identical to bare diffusers loading the same file; refused on the
wrong family with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.lora import inspect_lora
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import build_tiny_flux, build_tiny_sd3, save_pipeline
from tests.support.tiny_dit_loras import flux_kohya_lora, flux_xlabs_lora, peft_lora
from tests.support.tiny_loras import save_lora


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dit-loras")
    flux = build_tiny_flux()
    sd3 = build_tiny_sd3()
    return {
        "flux": save_pipeline(flux, tmp / "flux"),
        "sd3": save_pipeline(sd3, tmp / "sd3"),
        "flux_peft": peft_lora(flux.transformer, seed=1),
        "flux_kohya": flux_kohya_lora(flux.transformer, seed=2),
        "flux_xlabs": flux_xlabs_lora(flux.transformer, seed=3),
        "sd3_peft": peft_lora(sd3.transformer, seed=4),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare(cls, folder, family):
    pipe = cls.from_pretrained(
        str(folder), local_files_only=True, **shipped_tokenizers(Resources.default(), folder, family)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_with_lora(cls, folder, family, tensors, weight, request, **extra):
    pipe = bare(cls, folder, family)
    pipe.load_lora_weights({k: v.clone() for k, v in tensors.items()}, adapter_name="x")
    pipe.set_adapters(["x"], [weight])
    image = pipe(
        prompt="a red circle", num_inference_steps=request.steps, width=request.width, height=request.height,
        generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
    ).images[0]  # fmt: skip
    return pixels(image)


@pytest.mark.parametrize(("kind", "fmt"), [("flux_peft", "peft"), ("flux_kohya", "kohya"), ("flux_xlabs", "xlabs")])
def test_flux_lora_formats_are_detected_with_their_family(dit, tmp_path, kind, fmt):
    info = inspect_lora(read_safetensors_header(save_lora(dit[kind], tmp_path / "l.safetensors")), "l")
    assert (info.family, info.format, info.transformer_width, info.label) == ("flux", fmt, 32, "Flux.1")


def test_a_flux_lora_with_text_encoder_layers_takes_its_width_from_the_transformers(dit, tmp_path):
    """CLIP-L's `self_attn_q_proj` (768 wide in the real model, 16 here) sorts before the transformer's layers and is
    not an attention input of the transformer (FLUX.3's `q_proj` marks are read for FLUX.3 LoRAs only)."""
    clip = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    tensors = dict(dit["flux_kohya"]) | {f"{clip}.lora_down.weight": torch.zeros(4, 16),
                                         f"{clip}.lora_up.weight": torch.zeros(16, 4)}  # fmt: skip
    info = inspect_lora(read_safetensors_header(save_lora(tensors, tmp_path / "l.safetensors")), "l")
    assert (info.family, info.transformer_width, info.text_width) == ("flux", 32, 16)


def test_sd3_peft_lora_is_detected_as_sd3(dit, tmp_path):
    info = inspect_lora(read_safetensors_header(save_lora(dit["sd3_peft"], tmp_path / "l.safetensors")), "l")
    assert (info.family, info.format, info.transformer_width) == ("sd3", "peft", 32)


@pytest.mark.parametrize("kind", ["flux_peft", "flux_kohya"])
def test_flux_lora_tag_changes_the_image_and_matches_bare_diffusers(dit, paths, kind):
    save_lora(dit[kind], paths.loras / "style.safetensors")
    backend = make_backend(paths)
    plain_request = request_for(dit["flux"], prompt="a red circle", negative_prompt="", distilled_cfg_scale=3.5)
    plain, _ = run(backend, plain_request)
    request = request_for(
        dit["flux"], prompt="a red circle <lora:style:0.8>", negative_prompt="", distilled_cfg_scale=3.5
    )
    batch, _ = run(backend, request)
    assert [h.name for h in batch.loras] == ["style"]
    assert not np.array_equal(pixels(batch.images[0]), pixels(plain.images[0]))
    expected = bare_with_lora(
        FluxPipeline, dit["flux"], "flux", dit[kind], 0.8, request, guidance_scale=3.5, max_sequence_length=512
    )
    assert np.array_equal(pixels(batch.images[0]), expected)
    # Without the tag the adapter is switched off: the bare model's image again.
    again, _ = run(backend, plain_request)
    assert np.array_equal(pixels(again.images[0]), pixels(plain.images[0]))


def test_sd3_lora_matches_bare_diffusers(dit, paths):
    save_lora(dit["sd3_peft"], paths.loras / "sd3style.safetensors")
    request = request_for(dit["sd3"], prompt="a red circle <lora:sd3style:1>", negative_prompt="", cfg_scale=5.0)
    batch, _ = run(make_backend(paths), request)
    expected = bare_with_lora(
        StableDiffusion3Pipeline, dit["sd3"], "sd3", dit["sd3_peft"], 1.0, request, guidance_scale=5.0
    )
    assert np.array_equal(pixels(batch.images[0]), expected)
    plain = bare(StableDiffusion3Pipeline, dit["sd3"], "sd3")(
        prompt="a red circle", num_inference_steps=4, width=64, height=64, guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0]  # fmt: skip
    assert not np.array_equal(expected, pixels(plain))


def test_a_flux_lora_on_an_sd15_model_is_refused_clearly(dit, paths, tiny_sd15_dir):
    save_lora(dit["flux_kohya"], paths.loras / "fluxstyle.safetensors")
    with pytest.raises(ModelError, match=r"'fluxstyle' does not fit .*it is a LoRA for Flux\.1 models"):
        run(make_backend(paths), request_for(tiny_sd15_dir, prompt="x <lora:fluxstyle:1>"))


def test_an_sd3_lora_on_flux_is_refused_clearly(dit, paths):
    save_lora(dit["sd3_peft"], paths.loras / "sd3style.safetensors")
    request = request_for(dit["flux"], prompt="x <lora:sd3style:1>", negative_prompt="")
    with pytest.raises(ModelError, match=r"it is a LoRA for SD3/SD3\.5 models"):
        run(make_backend(paths), request)
