"""Flux.1 Control-LoRAs (BFL's Canny / Depth dev LoRAs) in control units: detected from their headers, kept in the
control library (refused as plain LoRAs), loaded on a Flux.1 dev model for the jobs that ask -- FluxControlPipeline
with the unit's picture, pixel-identical to diffusers' load_lora_weights by hand; kept while the next jobs ask for
it -- and taken off by the first job that does not, which is the plain model's picture again. What it cannot run
is refused before any step."""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import FluxControlImg2ImgPipeline, FluxControlPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import guess_kind
from desktop.engine.library.lora import inspect_lora
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit, LoraRef
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_flux_control_input import bare_pipe, control_call
from tests.support import tiny_dit_loras
from tests.support.tiny_dit import build_tiny_flux, save_pipeline

FLUX = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=3, seed=5, prompt="a house by a lake")
RANK = 4


def control_lora(transformer, seed: int) -> dict[str, torch.Tensor]:
    """A Control-LoRA for the tiny Flux in diffusers' names: the input layer read twice as wide (the control
    picture's latents), LoRA halves for it and one attention layer, whole query / key norm weights."""
    generator = torch.Generator().manual_seed(seed)
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.3

    return {
        "transformer.x_embedder.lora_A.weight": noise(RANK, 2 * config.in_channels),
        "transformer.x_embedder.lora_B.weight": noise(width, RANK),
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": noise(RANK, width),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": noise(width, RANK),
        "transformer.transformer_blocks.0.attn.norm_q.weight": 1.0 + noise(config.attention_head_dim),
        "transformer.transformer_blocks.0.attn.norm_k.weight": 1.0 + noise(config.attention_head_dim),
    }


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux-control-lora")
    pipe = build_tiny_flux()
    home = AppPaths.for_root(tmp / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    save_file(control_lora(pipe.transformer, 3), str(home.controls / "flux1-canny-dev-lora.safetensors"))
    edges = np.zeros((64, 64, 3), np.uint8)
    edges[20:22, 8:56] = edges[8:56, 30:32] = 255
    Image.fromarray(edges).save(tmp / "edges.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp / "source.png")
    return {"folder": save_pipeline(pipe, tmp / "flux"), "home": home, "tmp": tmp, "pipe": pipe}


def unit(flux, **changes) -> ControlUnit:
    return ControlUnit(**({"model": "flux1-canny-dev-lora", "image": str(flux["tmp"] / "edges.png"),
                           "weight": 0.8} | changes))  # fmt: skip


def bare(flux, cls, request, **extra):
    pipe = bare_pipe(cls, flux["folder"])
    pipe.load_lora_weights(str(flux["home"].controls / "flux1-canny-dev-lora.safetensors"), adapter_name="c")
    # The job's LoRAs on top of it, each at its weight; the unit's weight is the Control-LoRA's scale.
    for lora in request.loras:
        pipe.load_lora_weights(str(flux["home"].loras / f"{lora.name}.safetensors"), adapter_name=lora.name)
    pipe.set_adapters(["c", *(lora.name for lora in request.loras)],
                      [request.controls[0].weight, *(lora.weight for lora in request.loras)])  # fmt: skip
    return control_call(pipe, request, **extra)


def assert_image_to_image_as_by_hand(flux, backend, request) -> None:
    """`request` as image to image of the fixture's source at strength 0.5: the picture of diffusers' image-to-image
    control pipeline with the same adapters loaded by hand."""
    edit = replace(request, init_image=str(flux["tmp"] / "source.png"), strength=0.5)
    batch, _ = run(backend, edit)
    source = Image.open(flux["tmp"] / "source.png").convert("RGB")
    expected = bare(flux, FluxControlImg2ImgPipeline, edit, image=source, strength=0.5)
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_a_control_lora_is_detected_and_kept_out_of_the_lora_library(flux):
    path = flux["home"].controls / "flux1-canny-dev-lora.safetensors"
    header = read_safetensors_header(path)
    info = inspect_control(header)
    assert (info.kind, info.layout, info.family, info.label) == ("control-lora", "diffusers", "flux",
                                                                 "Flux.1 Control-LoRA")  # fmt: skip
    assert guess_kind(path) == "control"
    with pytest.raises(ModelError, match="is a Flux.1 Control-LoRA .* import it as a control model"):
        inspect_lora(header, path.name)


def test_a_job_with_a_control_lora_is_load_lora_weights_by_hand_and_the_model_comes_back(flux):
    backend = make_backend(flux["home"])
    plain_request = request_for(flux["folder"], **FLUX)
    before, _ = run(backend, plain_request)
    request = request_for(flux["folder"], controls=(unit(flux),), **FLUX)
    batch, steps = run(backend, request)
    assert len(steps) == 3 and [c.name for c in batch.controls] == ["flux1-canny-dev-lora"]
    assert np.array_equal(pixels(batch.images[0]), bare(flux, FluxControlPipeline, request))
    # Kept for the next job that asks for it (loaded once), at that job's weight.
    transformer = backend._pipe.transformer
    assert transformer.x_embedder.in_features == 32
    weaker = request_for(flux["folder"], controls=(unit(flux, weight=0.6),), **FLUX)
    with mock.patch.object(type(backend._pipe), "load_lora_weights", side_effect=AssertionError("loaded again")):
        kept, _ = run(backend, weaker)
    assert np.array_equal(pixels(kept.images[0]), bare(flux, FluxControlPipeline, weaker))
    # The first job without it puts the model back: its input layer and norms as they were, the plain picture.
    after, _ = run(backend, plain_request)
    assert (transformer.config.in_channels, transformer.x_embedder.in_features) == (16, 16)
    assert np.array_equal(pixels(after.images[0]), pixels(before.images[0]))
    # Image to image: its sibling pipeline, the same LoRA.
    assert_image_to_image_as_by_hand(flux, backend, request)


def test_a_plain_lora_still_works_after_a_control_lora_job(flux, tmp_path):
    # The LoRA manager's adapters are unloaded for a Control-LoRA to load and load again when asked.
    home = flux["home"]
    state = tiny_dit_loras.peft_lora(flux["pipe"].transformer, seed=6)
    save_file(state, str(home.loras / "detail.safetensors"))
    backend = make_backend(home)
    with_lora = request_for(flux["folder"], loras=(LoraRef("detail", 1.0),), **FLUX)
    first, _ = run(backend, with_lora)
    run(backend, request_for(flux["folder"], controls=(unit(flux),), **FLUX))
    again, _ = run(backend, with_lora)
    assert np.array_equal(pixels(again.images[0]), pixels(first.images[0]))


def assert_within_a_level(picture: np.ndarray, expected: np.ndarray) -> None:
    """The same picture but for float rounding: three adapters on one layer add up in another order than diffusers'
    by-hand set (one value of 12,288 was a level off with this session's packages); a LoRA missing or at another
    weight moves most of them by tens of levels."""
    differ = np.abs(picture.astype(int) - expected.astype(int))
    assert differ.max() <= 1 and (differ > 0).mean() < 0.001, (differ.max(), int((differ > 0).sum()))


def test_loras_run_beside_a_control_lora_as_diffusers_runs_them(flux):
    """A Control-LoRA with the job's LoRAs (a style LoRA with BFL's Canny LoRA, as creators run them): the
    Control-LoRA on the plain layers first, the LoRAs on top, all switched on at their weights: the picture of
    diffusers' load_lora_weights and set_adapters by hand. Kept for the next job, whose LoRA weights may change."""
    home = flux["home"]
    transformer = flux["pipe"].transformer
    for name, seed in (("ink", 8), ("glow", 9)):
        state = tiny_dit_loras.peft_lora(transformer, seed=seed)
        save_file(state, str(home.loras / f"{name}.safetensors"))
    # One LoRA also on the input layer (ai-toolkit's LoRAs may train it), at its plain width: diffusers pads it to
    # the widened layer when it loads on top of the Control-LoRA, and cannot widen a layer a LoRA already wraps.
    generator = torch.Generator().manual_seed(10)
    ink = load_file(str(home.loras / "ink.safetensors"))
    ink["transformer.x_embedder.lora_A.weight"] = torch.randn(RANK, transformer.config.in_channels, generator=generator)
    ink["transformer.x_embedder.lora_B.weight"] = torch.randn(transformer.x_embedder.out_features, RANK,
                                                              generator=generator) * 0.3  # fmt: skip
    save_file(ink, str(home.loras / "ink.safetensors"))
    backend = make_backend(home)
    run(backend, request_for(flux["folder"], loras=(LoraRef("ink", 1.0),), **FLUX))  # its adapter wraps the layer
    alone, _ = run(backend, request_for(flux["folder"], controls=(unit(flux),), **FLUX))
    request = request_for(flux["folder"], controls=(unit(flux),), loras=(LoraRef("ink", 0.9),), **FLUX)
    batch, _ = run(backend, request)
    assert [lora.name for lora in batch.loras] == ["ink"]
    assert [control.name for control in batch.controls] == ["flux1-canny-dev-lora"]
    expected = bare(flux, FluxControlPipeline, request)
    assert_within_a_level(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, pixels(alone.images[0]))  # the LoRA shows
    # The next job: the Control-LoRA kept (not loaded again), another LoRA beside the first, other weights.
    two = replace(request, loras=(LoraRef("ink", 0.5), LoraRef("glow", 1.0)), controls=(unit(flux, weight=0.6),))
    with mock.patch("desktop.engine.backends.flux_control_lora.FluxControlLoras.release",
                    side_effect=AssertionError("taken off")):  # fmt: skip
        batch, _ = run(backend, two)
    assert_within_a_level(pixels(batch.images[0]), bare(flux, FluxControlPipeline, two))
    # A LoRA at weight 0 leaves the Control-LoRA on: the Control-LoRA's picture alone.
    zero, _ = run(backend, replace(request, loras=(LoraRef("ink", 0.0),)))
    assert np.array_equal(pixels(zero.images[0]), pixels(alone.images[0]))
    # Image to image: the same adapters on its sibling pipeline.
    assert_image_to_image_as_by_hand(flux, backend, request)


def test_what_a_control_lora_cannot_run_is_refused(flux):
    backend = make_backend(flux["home"])
    with pytest.raises(InvalidRequest, match="set its range to 0-1"):
        run(backend, request_for(flux["folder"], controls=(unit(flux, end=0.5),), **FLUX))
    with pytest.raises(InvalidRequest, match="runs alone"):
        run(backend, request_for(flux["folder"], controls=(unit(flux), unit(flux)), **FLUX))
    schnell = save_pipeline(build_tiny_flux("schnell"), flux["tmp"] / "schnell")
    with pytest.raises(InvalidRequest, match="made for Flux.1 dev; Flux.1 schnell is not one"):
        run(backend, request_for(schnell, controls=(unit(flux),), **(FLUX | {"steps": 2})))


def test_the_hires_pass_and_a_variation_seed_run_with_the_control_lora(flux, monkeypatch):
    seen = []
    call = FluxControlImg2ImgPipeline.__call__

    def recording(self, *args, **kwargs):
        seen.append((tuple(kwargs["control_image"].shape), self.transformer.x_embedder.in_features))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(FluxControlImg2ImgPipeline, "__call__", recording)
    backend = make_backend(flux["home"])
    hires = dict(hires_fix=True, hires_scale=2.0, hires_upscaler="Lanczos", hires_denoise=0.5, hires_steps=2)
    batch, _ = run(backend, request_for(flux["folder"], controls=(unit(flux),), **FLUX, **hires))
    # The second pass reads the picture at its size, the LoRA still on (the input layer twice as wide).
    assert batch.images[0].size == (128, 128) and seen == [((1, 3, 128, 128), 32)]
    # A variation seed's noise has the noise's channels (half of what the widened input layer reads).
    request = request_for(flux["folder"], controls=(unit(flux),), subseed=77, subseed_strength=1.0, **FLUX)
    varied, _ = run(backend, request)
    pipe = bare_pipe(FluxControlPipeline, flux["folder"])
    noise, _ = pipe.prepare_latents(1, 4, 64, 64, torch.float32, "cpu", torch.Generator("cpu").manual_seed(77))
    assert np.array_equal(pixels(varied.images[0]), bare(flux, FluxControlPipeline, request, latents=noise))


def test_bfls_own_layout_is_detected(tmp_path):
    # BFL's file names its layers as the original Flux code does; diffusers converts them when it loads it.
    path = tmp_path / "flux1-depth-dev-lora.safetensors"
    save_file({"img_in.lora_A.weight": torch.zeros(RANK, 128), "img_in.lora_B.weight": torch.zeros(3072, RANK),
               "double_blocks.0.img_attn.norm.query_norm.scale": torch.ones(128)}, str(path))  # fmt: skip
    info = inspect_control(read_safetensors_header(path))
    assert (info.kind, info.layout, info.family) == ("control-lora", "bfl", "flux")
    assert guess_kind(path) == "control"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
def test_a_control_lora_runs_under_model_offload_and_refuses_group_offload_on_cuda(flux):
    from tests.support.offload_check import assert_mode_matches_full

    backend = make_backend(flux["home"])
    assert_mode_matches_full(backend, flux["folder"], "offload", controls=(unit(flux),), **FLUX)
    with pytest.raises(InvalidRequest, match="memory modes full and offload, not group"):
        run(backend, request_for(flux["folder"], controls=(unit(flux),), memory_mode="group", device="cuda", **FLUX))


def test_a_memory_mode_change_takes_a_kept_control_lora_off_first(flux):
    # fp8 casts the model's layers (it runs on a CPU too): the kept Control-LoRA comes off before, the job that
    # wants it there is refused, and the next plain fp8 job is a fresh fp8 model's picture.
    backend = make_backend(flux["home"])
    run(backend, request_for(flux["folder"], controls=(unit(flux),), **FLUX))
    with pytest.raises(InvalidRequest, match="memory modes full and offload, not fp8"):
        run(backend, request_for(flux["folder"], controls=(unit(flux),), memory_mode="fp8", **FLUX))
    after, _ = run(backend, request_for(flux["folder"], memory_mode="fp8", **FLUX))
    fresh, _ = run(make_backend(flux["home"]), request_for(flux["folder"], memory_mode="fp8", **FLUX))
    assert np.array_equal(pixels(after.images[0]), pixels(fresh.images[0]))


def test_a_lora_job_after_control_jobs_with_loras_is_a_fresh_models_picture(flux):
    # A Control-LoRA job with a LoRA leaves both on the model; the next job without the Control-LoRA puts the model
    # back (every adapter off, the input layer narrow again) and loads its LoRA again: the same picture as fresh.
    home = flux["home"]
    save_file(tiny_dit_loras.peft_lora(flux["pipe"].transformer, seed=7), str(home.loras / "style.safetensors"))
    with_lora = request_for(flux["folder"], loras=(LoraRef("style", 1.0),), **FLUX)
    backend = make_backend(home)
    run(backend, request_for(flux["folder"], controls=(unit(flux),), **FLUX))
    run(backend, replace(with_lora, controls=(unit(flux),)))
    after, _ = run(backend, with_lora)
    assert backend._pipe.transformer.x_embedder.in_features == 16
    fresh, _ = run(make_backend(home), with_lora)
    assert np.array_equal(pixels(after.images[0]), pixels(fresh.images[0]))
