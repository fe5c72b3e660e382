"""BFL's Flux.1 Canny / Depth dev: a Flux.1 transformer that reads a control picture's latents beside the noise
(twice the channels it writes). Detected from its tensors, loaded from a diffusers folder or BFL's transformer-only
file, and run through diffusers' FluxControlPipeline (and its image-to-image / inpainting siblings) with the
picture of a control unit whose model is "built-in" -- pixel-identical to bare diffusers. What it cannot run is
refused before any step."""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import FluxControlImg2ImgPipeline, FluxControlInpaintPipeline, FluxControlPipeline
from PIL import Image

from desktop.engine.backends.base import ControlHash
from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.errors import InvalidRequest
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.control import BUILT_IN
from desktop.engine.library.dit import reference_image_limit
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.offload_check import assert_mode_matches_full
from tests.support.tiny_dit import build_tiny_flux, config_folder, save_bfl_file, save_pipeline, tiny_fill_transformer

FLUX = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=3, seed=21, prompt="a house by a lake")
MASK_BOX = (16, 16, 48, 40)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux-control-input")
    flux = build_tiny_flux()
    accepted = inspect.signature(FluxControlPipeline.__init__).parameters
    parts = {k: v for k, v in flux.components.items() if k in accepted and k != "transformer"}
    # 32 channels in for 16 out: the noise's packed latents and the control picture's.
    control = FluxControlPipeline(transformer=tiny_fill_transformer(seed=9, blocks=2, in_channels=32), **parts)
    rng = np.random.default_rng(4)
    edges = np.zeros((64, 64, 3), np.uint8)
    edges[20:22, 8:56] = edges[8:56, 30:32] = 255  # a cross, as a canny map draws
    Image.fromarray(edges).save(tmp / "edges.png")
    Image.fromarray(np.ascontiguousarray(edges[::-1])).save(tmp / "other-edges.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp / "source.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[MASK_BOX[1] : MASK_BOX[3], MASK_BOX[0] : MASK_BOX[2]] = 255
    Image.fromarray(mask, "L").save(tmp / "mask.png")
    return {
        "tmp": tmp,
        "folder": save_pipeline(control, tmp / "flux-canny-dev"),
        "flux": save_pipeline(flux, tmp / "flux"),
        "config": config_folder(flux, tmp / "config"),
        "bfl": save_bfl_file(control, tmp / "flux1-canny-dev.safetensors"),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def unit(models, picture="edges.png", **changes):
    return ControlUnit(**({"model": BUILT_IN, "image": str(models["tmp"] / picture)} | changes))


def job(models, model="folder", **changes):
    return request_for(models[model], **(FLUX | {"controls": (unit(models),)} | changes))


def bare_pipe(cls, folder):
    pipe = cls.from_pretrained(str(folder), local_files_only=True,
                               **shipped_tokenizers(Resources.default(), folder, "flux"))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare(cls, models, request, **extra):
    return control_call(bare_pipe(cls, models["folder"]), request, **extra)


def control_call(pipe, request, **extra):
    """`pipe` (a FluxControlPipeline or sibling) run by hand as the job `request` asks, its first unit's picture
    as the control image."""
    control = Image.open(request.controls[0].image).convert("RGB")
    return pixels(
        pipe(prompt=request.prompt, control_image=control, width=64, height=64, guidance_scale=3.5,
             num_inference_steps=request.steps, max_sequence_length=512,
             generator=torch.Generator("cpu").manual_seed(request.seed), **extra).images[0]
    )  # fmt: skip


def test_canny_and_depth_dev_are_detected_in_both_layouts(models):
    for key in ("folder", "bfl"):
        arch = detect_model(models[key])
        assert (arch.family, arch.dit.control_input, arch.dit.fill, arch.inpaint) == ("flux", True, False, False)
        assert arch.label == "Flux.1 dev Canny/Depth"
        assert reference_image_limit(arch.dit) == 0  # not Kontext: its input is taken
    assert not detect_model(models["flux"]).dit.control_input


def test_text_to_image_reads_the_built_in_unit_like_bare_diffusers(models, paths):
    backend = make_backend(paths)
    request = job(models)
    batch, steps = run(backend, request)
    assert len(steps) == 3 and batch.controls == (ControlHash(BUILT_IN, ""),)
    assert np.array_equal(pixels(batch.images[0]), bare(FluxControlPipeline, models, request))
    other, _ = run(backend, replace(request, controls=(unit(models, "other-edges.png"),)))
    assert not np.array_equal(pixels(other.images[0]), pixels(batch.images[0]))


def test_bfl_file_with_flux_dev_config_matches_the_folder(models, paths):
    request = job(models, "bfl", model_config=str(models["config"]), text_encoders=str(models["flux"]))
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare(FluxControlPipeline, models, request))


def test_image_to_image_and_inpainting_use_the_control_siblings(models, paths):
    backend = make_backend(paths)
    source = Image.open(models["tmp"] / "source.png").convert("RGB")
    request = job(models, init_image=str(models["tmp"] / "source.png"), strength=0.5, mask_blur=0)
    batch, steps = run(backend, request)
    assert len(steps) == 2  # the last 3 x 0.5 of the schedule, as diffusers rounds it
    expected = bare(FluxControlImg2ImgPipeline, models, request, image=source, strength=0.5)
    assert np.array_equal(pixels(batch.images[0]), expected)
    masked = replace(request, mask=str(models["tmp"] / "mask.png"))
    batch, _ = run(backend, masked)
    mask = Image.open(models["tmp"] / "mask.png").convert("L")
    out = bare(FluxControlInpaintPipeline, models, masked, image=source, mask_image=mask, strength=0.5)
    inside = np.asarray(mask)[..., None] == 255  # Marble pastes the source back outside the mask
    assert np.array_equal(pixels(batch.images[0]), np.where(inside, out, pixels(source)))


def test_the_hires_pass_reads_the_control_picture_at_its_size(models, paths, monkeypatch):
    seen = []
    call = FluxControlImg2ImgPipeline.__call__

    def recording(self, *args, **kwargs):
        seen.append(tuple(kwargs["control_image"].shape))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(FluxControlImg2ImgPipeline, "__call__", recording)
    request = job(models, hires_fix=True, hires_scale=2.0, hires_upscaler="Lanczos", hires_denoise=0.5, hires_steps=2)
    batch, _ = run(make_backend(paths), request)
    assert batch.images[0].size == (128, 128)
    assert seen == [(1, 3, 128, 128)]
    assert not any("first pass only" in note for note in batch.notes)


def test_a_variation_seed_at_full_strength_starts_from_that_seeds_noise(models, paths):
    # The starting noise has the noise's channels (half of what the transformer reads), as the pipeline draws it.
    # (Not the variation seed's own picture: the pipeline also samples the control picture's latents with the
    # job's generator, before the noise.)
    request = job(models, subseed=77, subseed_strength=1.0)
    varied, _ = run(make_backend(paths), request)
    pipe = bare_pipe(FluxControlPipeline, models["folder"])
    noise, _ = pipe.prepare_latents(1, pipe.transformer.config.in_channels // 8, 64, 64, torch.float32, "cpu",
                                    torch.Generator("cpu").manual_seed(77))  # fmt: skip
    assert np.array_equal(pixels(varied.images[0]), bare(FluxControlPipeline, models, request, latents=noise))


def test_what_a_canny_or_depth_dev_model_cannot_run_is_refused_before_a_step(models, paths, tmp_path):
    backend = make_backend(paths)
    with pytest.raises(InvalidRequest, match="add one control unit whose model is 'built-in'"):
        run(backend, job(models, controls=()))
    with pytest.raises(InvalidRequest, match="ControlNets do not run with them"):
        run(backend, job(models, controls=(unit(models), unit(models, model="instantx-canny"))))
    with pytest.raises(InvalidRequest, match="remove all but one"):
        run(backend, job(models, controls=(unit(models), unit(models))))
    with pytest.raises(InvalidRequest, match="weight to 1, its range to 0-1"):
        run(backend, job(models, controls=(unit(models, weight=0.5),)))
    with pytest.raises(InvalidRequest, match="weight to 1, its range to 0-1"):
        run(backend, job(models, controls=(unit(models, end=0.5),)))
    # The built-in input belongs to these models only.
    with pytest.raises(InvalidRequest, match=r"Flux.1 dev\) has none: pick a ControlNet"):
        run(make_backend(paths), request_for(models["flux"], controls=(unit(models),), **FLUX))


def test_a_negative_prompt_and_a_low_distilled_cfg_are_said(models, paths):
    backend = make_backend(paths)
    batch, _ = run(backend, job(models, negative_prompt="blurry"))
    assert any("without a negative prompt; it was ignored" in note for note in batch.notes)
    # BFL's cards: 30 for Canny dev, 10 for Depth dev; 3.5 (the other dev models') is said to be low.
    assert any("made for a distilled CFG of 30 (Canny dev) or 10 (Depth dev), not 3.5" in n for n in batch.notes)
    strong, _ = run(backend, job(models, distilled_cfg_scale=30.0))
    assert not any("distilled CFG" in note for note in strong.notes)



@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
@pytest.mark.parametrize("mode", ["offload", "group", "sequential", "fp8"])
def test_the_built_in_input_runs_in_each_offload_mode_on_cuda(models, paths, mode):
    # The sibling pipelines share the loaded modules, so the base's offload hooks serve them.
    assert_mode_matches_full(make_backend(paths), models["folder"], mode, **(FLUX | {"controls": (unit(models),)}))


def test_the_command_line_takes_the_built_in_unit_and_its_png_says_so(models, tmp_path):
    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    out = tmp_path / "house.png"
    code, _, err = in_process(
        ["generate", "--model", str(models["folder"]), "--prompt", "a house by a lake", "--seed", "21", "--steps", "3",
         "--width", "64", "--height", "64", "--device", "cpu", "--distilled-cfg", "10", "--no-preview",
         "--control", f"Built-In:{models['tmp'] / 'edges.png'}", "--out", str(out), "--home", str(tmp_path / "home")]
    )  # fmt: skip
    assert code == 0, err
    metadata = read_image_metadata(out)
    assert 'Model: Built-In, Weight: 1.0' in metadata.raw["parameters"]
    (unit,) = metadata.request.controls
    assert unit.model == "Built-In" and unit.image.endswith("edges.png")


def test_a_gguf_canny_dev_file_loads_with_its_channels_from_its_tensors(models, paths, tmp_path):
    # A GGUF tensor's stored shape is its bytes': the channels are read from its logical shape (Q4_0 packs the
    # 32-wide input layer's rows into 18 bytes here).
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    from tests.support.tiny_dit import flux_to_bfl, save_gguf

    state = bare_pipe(FluxControlPipeline, models["folder"]).transformer.state_dict()
    gguf = save_gguf(flux_to_bfl(state), tmp_path / "flux1-canny-dev-Q4_0.gguf", quant="Q4_0")
    diffusers_names = save_gguf(dict(state), tmp_path / "diffusers-names.gguf", quant="Q4_0")
    arch = detect_model(gguf)
    assert (arch.label, arch.dit.control_input) == ("Flux.1 dev Canny/Depth (Q4_0)", True)
    request = job(models, model_config=str(models["config"]), text_encoders=str(models["flux"]))
    batch, _ = run(make_backend(paths), replace(request, model=str(gguf)))
    transformer = FluxTransformer2DModel.from_single_file(
        str(diffusers_names), config=str(models["config"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
        in_channels=32, out_channels=16,
    )  # fmt: skip
    pipe = bare_pipe(FluxControlPipeline, models["folder"])
    pipe.transformer = transformer
    control = Image.open(request.controls[0].image).convert("RGB")
    expected = pipe(prompt=request.prompt, control_image=control, width=64, height=64, guidance_scale=3.5,
                    num_inference_steps=3, max_sequence_length=512,
                    generator=torch.Generator("cpu").manual_seed(21)).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


def test_a_built_in_unit_with_a_stable_diffusion_model_is_refused(models, paths, tiny_sd15_dir):
    with pytest.raises(InvalidRequest, match=r"\(a Stable Diffusion model\) has none: pick a ControlNet"):
        run(make_backend(paths), request_for(tiny_sd15_dir, controls=(unit(models),)))
