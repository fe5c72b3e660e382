"""Flux.1 Redux units: a Redux file and a SigLIP encoder in the control library, detected from their tensors; a
Flux.1 job with a Redux unit (an image-prompt unit) is diffusers' FluxPriorReduxPipeline on the loaded Flux's
text encoders followed by the Flux pipeline with those embeddings -- pixel-identical to doing both by hand with
bare diffusers, the hires fix's second pass included. What it cannot run is refused by name."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import FluxFillPipeline, FluxImg2ImgPipeline, FluxPriorReduxPipeline
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from PIL import Image
from safetensors.torch import save_file
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from desktop.engine.backends.control import crop_and_resize
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import guess_kind
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_flux
from tests.support.edit_inputs import source_and_mask
from tests.support.offload_check import assert_mode_matches_full
from tests.support.tiny_dit import build_tiny_flux, save_pipeline, tiny_fill_transformer
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image

FLUX = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=3, seed=13)


def save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def redux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux-redux")
    pipe = build_tiny_flux()
    home = AppPaths.for_root(tmp / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    # SigLIP's shape at a tiny width: 28-pixel pictures in 14-pixel patches (4 positions, no class token).
    config = SiglipVisionConfig(hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=1,
                                image_size=28, patch_size=14)  # fmt: skip
    siglip = SiglipVisionModel(config).eval()
    embedder = ReduxImageEncoder(redux_dim=64, txt_in_features=pipe.transformer.config.joint_attention_dim).eval()
    with torch.no_grad():
        for parameter in embedder.parameters():
            parameter.mul_(8.0)  # tokens strong enough to move the tiny model's picture
    # Named as the published files name it (transformers 4's SiglipVisionModel: under `vision_model.`).
    state = {"vision_model." + k.removeprefix("vision_model."): v.contiguous() for k, v in siglip.state_dict().items()}
    save_file(state, str(home.controls / "sigclip_vision_patch14_384.safetensors"))
    save(embedder, home.controls / "flux1-redux-dev.safetensors")
    reference = tmp / "reference.png"
    canvas = np.zeros((40, 52, 3), dtype=np.uint8)
    canvas[4:30, 8:40] = (250, 120, 20)
    canvas[30:, :] = (20, 60, 200)
    Image.fromarray(canvas).save(reference)
    return {"folder": save_pipeline(pipe, tmp / "flux"), "home": home, "siglip": siglip, "embedder": embedder,
            "reference": reference}  # fmt: skip


def prior_embeds(redux, base, scale: float):
    processor = SiglipImageProcessor(size={"height": 28, "width": 28}, resample=3, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)  # fmt: skip
    prior = FluxPriorReduxPipeline(image_encoder=redux["siglip"], feature_extractor=processor,
                                   image_embedder=redux["embedder"], text_encoder=base.text_encoder,
                                   tokenizer=base.tokenizer, text_encoder_2=base.text_encoder_2,
                                   tokenizer_2=base.tokenizer_2)  # fmt: skip
    out = prior(image=Image.open(redux["reference"]).convert("RGB"), prompt="a red circle on a blue background",
                prompt_embeds_scale=scale)  # fmt: skip
    return {"prompt_embeds": out.prompt_embeds, "pooled_prompt_embeds": out.pooled_prompt_embeds}


def unit(redux, **changes) -> ControlUnit:
    values = dict(image=str(redux["reference"]), weight=0.9, preprocessor="ip-adapter") | changes
    return ControlUnit("flux1-redux-dev", **values)


def test_redux_and_its_siglip_encoder_are_detected(redux):
    info = inspect_control(read_safetensors_header(redux["home"].controls / "flux1-redux-dev.safetensors"))
    assert (info.kind, info.layout, info.family, info.label) == ("ip-adapter", "redux", "flux", "Flux.1 Redux")
    siglip = redux["home"].controls / "sigclip_vision_patch14_384.safetensors"
    encoder = inspect_control(read_safetensors_header(siglip))
    assert (encoder.kind, encoder.layout) == ("image-encoder", "SigLIP 64 wide")
    assert guess_kind(redux["home"].controls / "flux1-redux-dev.safetensors") == "control"


def test_a_redux_unit_is_the_prior_then_flux_by_hand(redux):
    backend = make_backend(redux["home"])
    batch, _ = run(backend, request_for(redux["folder"], controls=(unit(redux),), **FLUX))
    base = bare_flux(redux["folder"])
    with torch.inference_mode():
        embeds = prior_embeds(redux, base, 0.9)
        expected = base(num_inference_steps=3, width=64, height=64, guidance_scale=3.5,
                        generator=torch.Generator("cpu").manual_seed(13), **embeds).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    assert [c.name for c in batch.controls] == ["flux1-redux-dev"]
    # The picture counts, and so does the weight.
    plain, _ = run(backend, request_for(redux["folder"], **FLUX))
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))
    weaker, _ = run(backend, request_for(redux["folder"], controls=(unit(redux, weight=0.5),), **FLUX))
    assert not np.array_equal(pixels(weaker.images[0]), pixels(batch.images[0]))


def test_the_hires_fix_gives_both_passes_the_redux_picture(redux):
    hires = dict(hires_fix=True, hires_scale=2.0, hires_denoise=0.5, hires_steps=4, hires_upscaler="Lanczos")
    batch, _ = run(make_backend(redux["home"]), request_for(redux["folder"], controls=(unit(redux),), **FLUX, **hires))
    base = bare_flux(redux["folder"])
    second = FluxImg2ImgPipeline(**{k: v for k, v in base.components.items() if k not in ("image_encoder",
                                                                                        "feature_extractor")})
    second.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        embeds = prior_embeds(redux, base, 0.9)
        first = base(num_inference_steps=3, width=64, height=64, guidance_scale=3.5,
                     generator=torch.Generator("cpu").manual_seed(13), **embeds).images[0]  # fmt: skip
        expected = second(image=first.resize((128, 128), Image.Resampling.LANCZOS), strength=0.5,
                          num_inference_steps=4, width=128, height=128, guidance_scale=3.5,
                          generator=[torch.Generator("cpu").manual_seed(13)], **embeds).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


def test_what_redux_cannot_run_is_refused_by_name(redux, tmp_path):
    backend = make_backend(redux["home"])
    two = (unit(redux), unit(redux, weight=0.5))
    with pytest.raises(InvalidRequest, match="one Redux unit a job"):
        run(backend, request_for(redux["folder"], controls=two, **FLUX))
    with pytest.raises(InvalidRequest, match="acts at every step"):
        run(backend, request_for(redux["folder"], controls=(unit(redux, end=0.5),), **FLUX))
    more = unit(redux, more_images=(str(redux["reference"]),))
    with pytest.raises(InvalidRequest, match="A Redux unit reads one picture \\(2 are on it\\)"):
        run(backend, request_for(redux["folder"], controls=(more,), **FLUX))
    # h94's IP-Adapter layout with Flux.
    save_file({"image_proj.proj.weight": torch.zeros(8, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(8, 768)},
              str(redux["home"].controls / "ip-adapter_sd15.safetensors"))  # fmt: skip
    sd_unit = ControlUnit("ip-adapter_sd15", str(redux["reference"]), preprocessor="ip-adapter")
    with pytest.raises(InvalidRequest, match="'ip-adapter_sd15' is not a Flux.1 Redux model"):
        run(backend, request_for(redux["folder"], controls=(sd_unit,), **FLUX))
    # No SigLIP encoder in the library: said with what to import.
    bare_home = AppPaths.for_root(tmp_path / "home").ensure()
    bare_home.controls.mkdir(parents=True, exist_ok=True)
    save(redux["embedder"], bare_home.controls / "flux1-redux-dev.safetensors")
    with pytest.raises(ModelError, match="64-wide SigLIP encoder, and the control library has none"):
        run(make_backend(bare_home), request_for(redux["folder"], controls=(unit(redux),), **FLUX))
    # Another family: no Redux.
    qwen = tmp_path / "qwen"
    build_tiny_qwen_image().save_pretrained(str(qwen), safe_serialization=True)
    with pytest.raises(InvalidRequest, match="Flux.1 with a Flux.1 Redux model; Qwen-Image has none"):
        run(backend, request_for(qwen, controls=(unit(redux),), negative_prompt="", cfg_scale=4.0, steps=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
@pytest.mark.parametrize("mode", ["offload", "group", "sequential", "fp8"])
def test_a_redux_unit_runs_in_each_offload_mode_on_cuda(redux, mode):
    # SigLIP and Redux sit on the GPU whole in the compute dtype; the text encoders' hooks are the base's.
    assert_mode_matches_full(make_backend(redux["home"]), redux["folder"], mode, controls=(unit(redux),), **FLUX)


def test_flux_fill_inpaints_with_a_redux_unit_as_by_hand(redux, tmp_path):
    # Fill + Redux (a reference object painted into the mask) runs like any Flux.1 job with Redux.
    base = bare_flux(redux["folder"])
    transformer = tiny_fill_transformer()
    accepted = inspect.signature(FluxFillPipeline.__init__).parameters
    fill = FluxFillPipeline(transformer=transformer,
                            **{k: v for k, v in base.components.items() if k in accepted and k != "transformer"})
    folder = save_pipeline(fill, tmp_path / "fill")
    source_path, mask_path, source, mask = source_and_mask(tmp_path, (16, 12, 48, 44), seed=2)
    request = request_for(folder, controls=(unit(redux),), init_image=str(source_path), mask=str(mask_path),
                          strength=1.0, mask_blur=0, **FLUX)  # fmt: skip
    batch, _ = run(make_backend(redux["home"]), request)
    fill.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        out = fill(image=source, mask_image=Image.open(mask_path).convert("L"), strength=1.0, num_inference_steps=3,
                   width=64, height=64, guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(13),
                   **prior_embeds(redux, base, 0.9)).images[0]  # fmt: skip
    expected = np.where(mask[..., None] == 255, pixels(out), pixels(source))  # Marble keeps the source outside
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_a_redux_unit_with_a_stable_diffusion_model_is_refused_by_name(redux, tiny_sd15_dir):
    with pytest.raises(InvalidRequest, match="'flux1-redux-dev' is a Flux.1 Redux model: it works with Flux.1"):
        run(make_backend(redux["home"]), request_for(tiny_sd15_dir, controls=(unit(redux),)))


def test_a_redux_unit_and_a_controlnet_unit_run_together(redux, tmp_path):
    # The ControlNet pipeline takes Redux's embeddings; the metadata lists the units in the job's order.
    from diffusers import FluxControlNetPipeline

    from tests.engine.test_dit_controlnets import tiny_flux_controlnet

    base = bare_flux(redux["folder"])
    controlnet = tiny_flux_controlnet(base.transformer, 1)
    save(controlnet, redux["home"].controls / "edges.safetensors")
    edges = ControlUnit("edges", str(redux["reference"]), weight=0.7)
    batch, _ = run(make_backend(redux["home"]), request_for(redux["folder"], controls=(edges, unit(redux)), **FLUX))
    assert [c.name for c in batch.controls] == ["edges", "flux1-redux-dev"]
    accepted = inspect.signature(FluxControlNetPipeline.__init__).parameters
    pipe = FluxControlNetPipeline(**{k: v for k, v in base.components.items() if k in accepted}, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    control = crop_and_resize(Image.open(redux["reference"]).convert("RGB"), (64, 64))  # A1111's fit, as a unit's
    with torch.inference_mode():
        expected = pipe(num_inference_steps=3, width=64, height=64, guidance_scale=3.5, control_image=control,
                        controlnet_conditioning_scale=0.7, generator=torch.Generator("cpu").manual_seed(13),
                        **prior_embeds(redux, base, 0.9)).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


def test_a_redux_unit_joins_a_canny_dev_models_built_in_unit(redux, tmp_path):
    # FluxControlPipeline takes Redux's embeddings too; the metadata lists the units in the job's order.
    from diffusers import FluxControlPipeline

    from desktop.engine.library.control import BUILT_IN

    base = bare_flux(redux["folder"])
    accepted = inspect.signature(FluxControlPipeline.__init__).parameters
    pipe = FluxControlPipeline(transformer=tiny_fill_transformer(seed=9, in_channels=32),
                               **{k: v for k, v in base.components.items() if k in accepted and k != "transformer"})
    folder = save_pipeline(pipe, tmp_path / "flux-canny-dev")
    edges = ControlUnit(BUILT_IN, str(redux["reference"]))
    batch, _ = run(make_backend(redux["home"]), request_for(folder, controls=(unit(redux), edges), **FLUX))
    assert [c.name for c in batch.controls] == ["flux1-redux-dev", BUILT_IN]
    pipe.set_progress_bar_config(disable=True)
    control = crop_and_resize(Image.open(redux["reference"]).convert("RGB"), (64, 64))
    with torch.inference_mode():
        expected = pipe(num_inference_steps=3, width=64, height=64, guidance_scale=3.5, control_image=control,
                        generator=torch.Generator("cpu").manual_seed(13), **prior_embeds(redux, base, 0.9)).images[0]
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


def test_the_redux_prompt_is_made_once_for_the_same_prompt_and_picture(redux, monkeypatch, tmp_path):
    # SigLIP and the text encoders run once for a job's batches and for the next job with the same prompt,
    # picture and weight; anything that changes the embeddings makes them again.
    import os
    from dataclasses import replace
    from shutil import copyfile

    calls = []
    real = FluxPriorReduxPipeline.__call__

    def counting(self, *args, **kwargs):
        calls.append(kwargs["prompt"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FluxPriorReduxPipeline, "__call__", counting)
    picture = copyfile(redux["reference"], tmp_path / "picture.png")
    backend = make_backend(redux["home"])
    request = request_for(redux["folder"], controls=(unit(redux, image=str(picture)),), **FLUX)
    first, _ = run(backend, request)
    second_batch = backend.generate(request, 1, lambda step: None, CancelToken())
    again, _ = run(backend, request)
    assert len(calls) == 1 and np.array_equal(pixels(again.images[0]), pixels(first.images[0]))
    assert second_batch.seeds != first.seeds
    run(backend, replace(request, controls=(unit(redux, image=str(picture), weight=0.5),)))
    run(backend, replace(request, prompt="a green square"))
    run(backend, request)
    assert len(calls) == 4
    # Another picture saved over the same file.
    Image.new("RGB", (40, 52), (0, 200, 0)).save(picture)
    stat = os.stat(picture)
    os.utime(picture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed, _ = run(backend, request)
    assert len(calls) == 5 and not np.array_equal(pixels(changed.images[0]), pixels(first.images[0]))
