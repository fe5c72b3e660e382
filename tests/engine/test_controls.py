"""ControlNet / T2I-Adapter units: detection, the library kind, generation through the real backend against
bare diffusers, weight / start / end / modes, and the preprocessors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionAdapterPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image, ImageDraw

from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit, GenerationRequest
from desktop.engine.resources import Resources
from tests.support import tiny_controls, tiny_models
from tests.support.cli_runner import run_cli
from tests.support.unet_calls import watching_unet

STEPS = 4


@pytest.fixture(scope="module")
def sd15():
    return tiny_models.build_tiny_sd15()


@pytest.fixture(scope="module")
def controlnets(sd15):
    return [tiny_controls.build_tiny_controlnet(sd15.unet, seed=s) for s in (3, 4)]


@pytest.fixture(scope="module")
def adapter(sd15):
    return tiny_controls.build_tiny_adapter(sd15.unet, seed=5)


@pytest.fixture(scope="module")
def home(tmp_path_factory, controlnets, adapter) -> AppPaths:
    paths = AppPaths.for_root(tmp_path_factory.mktemp("control-home")).ensure()
    tiny_controls.save_controlnet(controlnets[0], paths.controls / "edges.safetensors", "ldm")
    tiny_controls.save_controlnet(controlnets[0], paths.controls / "edges-diffusers.safetensors", "diffusers")
    tiny_controls.save_controlnet(controlnets[1], paths.controls / "second.safetensors", "diffusers")
    tiny_controls.save_adapter(adapter, paths.controls / "adapter.safetensors")
    return paths


@pytest.fixture(scope="module")
def backend(home) -> DiffusersBackend:
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)


@pytest.fixture(scope="module")
def control_image(tmp_path_factory):
    image = Image.new("RGB", (64, 64), "black")
    # Off centre, so a flipped or shifted control image would give another result.
    ImageDraw.Draw(image).rectangle((8, 12, 35, 47), fill="white")
    path = tmp_path_factory.mktemp("control-image") / "square.png"
    image.save(path)
    return path


def request_for(model, **changes) -> GenerationRequest:
    values = dict(prompt="a red circle on a blue background", model=str(model), steps=STEPS, cfg_scale=7.0,
                  seed=7, width=64, height=64, device="cpu")  # fmt: skip
    return GenerationRequest(**(values | changes)).validate()


def image_of(backend: DiffusersBackend, request: GenerationRequest) -> np.ndarray:
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    return np.asarray(batch.images[0].convert("RGB")).astype(np.int16)


def plain(cls, folder, **components):
    pipe = cls.from_pretrained(str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False,
                               feature_extractor=None, **components)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare(pipe, request, **arguments) -> np.ndarray:
    image = pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                 generator=torch.Generator("cpu").manual_seed(request.seed), **arguments).images[0]  # fmt: skip
    return np.asarray(image.convert("RGB")).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Detection and the library


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_controlnet_layouts_and_sdxl_family_are_detected(tmp_path, sd15, controlnets, layout):
    path = tiny_controls.save_controlnet(controlnets[0], tmp_path / "c.safetensors", layout)
    info = inspect_control(read_safetensors_header(path))
    assert (info.kind, info.layout, info.conditioning_channels) == ("controlnet", layout, 3)
    assert info.prefix == ("control_model." if layout == "ldm" else "")
    assert info.family is None  # the tiny UNet reads 32-wide text states: no released family
    xl = tiny_controls.build_tiny_controlnet(tiny_models.build_tiny_sdxl().unet)
    path = tiny_controls.save_controlnet(xl, tmp_path / "xl.safetensors", layout)
    assert inspect_control(read_safetensors_header(path)).label == "SDXL ControlNet"


def test_adapter_and_control_lora_are_detected(tmp_path, sd15, adapter):
    path = tiny_controls.save_adapter(adapter, tmp_path / "a.safetensors")
    assert inspect_control(read_safetensors_header(path)).label == "SD 1.x T2I-Adapter"
    xl = tiny_controls.build_tiny_adapter(tiny_models.build_tiny_sdxl().unet, xl=True)
    path = tiny_controls.save_adapter(xl, tmp_path / "xl.safetensors")
    assert inspect_control(read_safetensors_header(path)).label == "SDXL T2I-Adapter"
    from safetensors.torch import save_file

    lora = {
        "lora_controlnet": torch.zeros(1),
        "input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
        "input_blocks.4.1.transformer_blocks.0.attn2.to_k.down": torch.zeros(8, 2048),
        "label_emb.0.0.weight": torch.zeros(4, 4),
    }
    save_file(lora, str(tmp_path / "cl.safetensors"))
    info = inspect_control(read_safetensors_header(tmp_path / "cl.safetensors"))
    assert (info.kind, info.family, info.label) == ("control-lora", "sdxl", "SDXL Control-LoRA")


def test_models_and_vaes_are_not_control_models(tiny_sd15_single, tmp_path):
    model, _ = tiny_sd15_single
    with pytest.raises(ModelError, match="whole checkpoint"):
        inspect_control(read_safetensors_header(model))
    vae = tiny_models.save_vae_file(tiny_models.build_tiny_vae(seed=1), tmp_path / "v.safetensors")
    with pytest.raises(ModelError, match="not a control model"):
        inspect_control(read_safetensors_header(vae))
    assert guess_kind(vae) == "vae"


def test_controls_import_list_info_remove(tmp_path, controlnets):
    source = tiny_controls.save_controlnet(controlnets[0], tmp_path / "canny.safetensors", "ldm")
    assert guess_kind(source) == "control"
    home = str(tmp_path / "home")
    code, _, err = run_cli("controls", "import", str(source), "--home", home)
    assert code == 0, err
    code, out, _ = run_cli("controls", "list", "--home", home)
    assert code == 0 and "canny" in out and "ControlNet" in out
    record = Library(AppPaths.for_root(home)).get("control", "canny")
    assert record.format == "controlnet (ldm)" and record.sha256 and record.autov2 == record.sha256[:10]
    assert run_cli("controls", "info", "canny", "--home", home)[0] == 0
    vae = tiny_models.save_vae_file(tiny_models.build_tiny_vae(seed=1), tmp_path / "v.safetensors")
    code, _, err = run_cli("controls", "import", str(vae), "--home", home)
    assert code != 0 and "not a control model" in err and "Traceback" not in err
    assert run_cli("controls", "remove", "canny", "--home", home)[0] == 0
    assert "canny" not in run_cli("controls", "list", "--home", home)[1]


# --------------------------------------------------------------------------------------------------
# Generation


def test_controlnet_equals_bare_diffusers_and_both_layouts_agree(backend, tiny_sd15_dir, controlnets, control_image):
    unit = ControlUnit("edges", str(control_image), weight=0.8)
    request = request_for(tiny_sd15_dir, controls=(unit,))
    ours = image_of(backend, request)
    pipe = plain(StableDiffusionControlNetPipeline, tiny_sd15_dir, controlnet=controlnets[0])
    expected = bare(pipe, request, image=Image.open(control_image).convert("RGB"), controlnet_conditioning_scale=0.8,
                    width=64, height=64)  # fmt: skip
    assert np.array_equal(ours, expected)
    assert np.abs(ours - image_of(backend, request_for(tiny_sd15_dir))).mean() > 1.0  # the control counts
    diffusers_layout = request_for(tiny_sd15_dir, controls=(ControlUnit("edges-diffusers", str(control_image), 0.8),))
    assert np.array_equal(image_of(backend, diffusers_layout), ours)


def test_weight_zero_and_an_empty_range_equal_no_control(backend, tiny_sd15_dir, control_image):
    without = image_of(backend, request_for(tiny_sd15_dir))
    for unit in (
        ControlUnit("edges", str(control_image), weight=0.0),
        ControlUnit("edges", str(control_image), end=0.0),
    ):
        assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir, controls=(unit,))), without)


def test_start_and_end_are_honoured_step_by_step(backend, tiny_sd15_dir, control_image):
    scales: list[tuple[int, float]] = []
    steps: list[int] = []
    request = request_for(
        tiny_sd15_dir, steps=8, sampler="Euler", controls=(ControlUnit("edges", str(control_image), 1.0, 0.25, 0.75),)
    )
    backend.load(request)
    image_of(backend, request)  # loads the control model
    (model,) = [
        m for m, info, _ in backend._controls._loaded.values() if info.layout == "ldm" and info.kind == "controlnet"
    ]

    def record(_module, _args, kwargs):
        scales.append((len(steps), float(kwargs["conditioning_scale"])))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        backend.generate(request, 0, lambda info: steps.append(info.step), CancelToken())
    finally:
        handle.remove()
    # diffusers calls the ControlNet at every step and scales it by 0 outside the range; step i (0-based)
    # of 8 counts unless i/8 < 0.25 or (i+1)/8 > 0.75.
    assert [step for step, scale in scales if scale != 0] == [2, 3, 4, 5]
    assert [step for step, _ in scales] == list(range(8))


def test_two_units_equal_multi_controlnet_in_diffusers(backend, tiny_sd15_dir, controlnets, control_image, tmp_path):
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 64), (200, 30, 90)).save(other)
    units = (ControlUnit("edges", str(control_image), 0.7, 0.0, 1.0), ControlUnit("second", str(other), 1.2, 0.0, 0.5))
    request = request_for(tiny_sd15_dir, controls=units)
    ours = image_of(backend, request)
    pipe = plain(StableDiffusionControlNetPipeline, tiny_sd15_dir, controlnet=list(controlnets))
    expected = bare(pipe, request, image=[Image.open(control_image).convert("RGB"), Image.open(other).convert("RGB")],
                    controlnet_conditioning_scale=[0.7, 1.2], control_guidance_start=[0.0, 0.0],
                    control_guidance_end=[1.0, 0.5], width=64, height=64)  # fmt: skip
    assert np.array_equal(ours, expected)
    one = image_of(backend, request_for(tiny_sd15_dir, controls=units[:1]))
    assert np.abs(ours - one).mean() > 0.5


def test_control_mode_control_is_guess_mode_and_prompt_softens(backend, tiny_sd15_dir, controlnets, control_image):
    unit = ControlUnit("edges", str(control_image), mode="control")
    request = request_for(tiny_sd15_dir, controls=(unit,))
    pipe = plain(StableDiffusionControlNetPipeline, tiny_sd15_dir, controlnet=controlnets[0])
    expected = bare(pipe, request, image=Image.open(control_image).convert("RGB"), guess_mode=True, width=64, height=64)
    assert np.array_equal(image_of(backend, request), expected)
    balanced = image_of(backend, request_for(tiny_sd15_dir, controls=(ControlUnit("edges", str(control_image)),)))
    prompt = image_of(
        backend, request_for(tiny_sd15_dir, controls=(ControlUnit("edges", str(control_image), mode="prompt"),))
    )
    without = image_of(backend, request_for(tiny_sd15_dir))
    # Soft injection weakens the control: closer to no control than balanced is.
    assert np.abs(prompt - without).mean() < np.abs(balanced - without).mean()
    with pytest.raises(InvalidRequest, match="every unit"):
        mixed = (unit, ControlUnit("second", str(control_image)))
        image_of(backend, request_for(tiny_sd15_dir, controls=mixed))


def test_controlnet_with_image_to_image_and_inpainting(backend, tiny_sd15_dir, controlnets, control_image, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (30, 120, 200)).save(source)
    unit = ControlUnit("edges", str(control_image))
    request = request_for(tiny_sd15_dir, init_image=str(source), strength=0.6, controls=(unit,))
    pipe = plain(StableDiffusionControlNetImg2ImgPipeline, tiny_sd15_dir, controlnet=controlnets[0])
    # controlnet_conditioning_scale: this pipeline's default is 0.8, not 1.
    control = Image.open(control_image).convert("RGB")
    expected = bare(pipe, request, image=Image.open(source).convert("RGB"), strength=0.6, control_image=control,
                    controlnet_conditioning_scale=1.0)  # fmt: skip
    assert np.array_equal(image_of(backend, request), expected)
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    inpaint = request_for(tiny_sd15_dir, init_image=str(source), mask=str(mask), mask_blur=0, strength=1.0,
                          controls=(ControlUnit("edges", str(control_image), preprocessor="inpaint"),))  # fmt: skip
    ours = image_of(backend, inpaint)
    without = image_of(backend, request_for(tiny_sd15_dir, init_image=str(source), mask=str(mask), mask_blur=0))
    assert ours.shape == (64, 64, 3) and np.abs(ours - without).mean() > 0.5
    # The inpaint preprocessor's image: the source with the masked pixels at -1 (here: all of them).
    marked = torch.full((1, 3, 64, 64), -1.0)
    pipe = plain(StableDiffusionControlNetInpaintPipeline, tiny_sd15_dir, controlnet=controlnets[0])
    expected = bare(pipe, inpaint, image=Image.open(source).convert("RGB"), mask_image=Image.open(mask),
                    control_image=marked, strength=1.0, controlnet_conditioning_scale=1.0, width=64,
                    height=64)  # fmt: skip
    assert np.array_equal(ours, expected)


def test_t2i_adapter_equals_the_diffusers_adapter_pipeline(backend, tiny_sd15_dir, adapter, control_image):
    request = request_for(tiny_sd15_dir, controls=(ControlUnit("adapter", str(control_image), weight=0.9),))
    ours = image_of(backend, request)
    pipe = plain(StableDiffusionAdapterPipeline, tiny_sd15_dir, adapter=adapter)
    expected = bare(pipe, request, image=Image.open(control_image).convert("RGB"), adapter_conditioning_scale=0.9,
                    width=64, height=64)  # fmt: skip
    # Equal on most CPUs; on an AMD EPYC (AVX-512) two of 12,288 values came out one level apart, from float
    # rounding in the adapter's path that neither the weights' memory nor the control tensor's layout explains.
    # A wrong weight, scale or image moves more than that (the scale 0.9 -> 1.0 moves values by 3 levels).
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    assert (ours != expected).sum() <= 12, (ours != expected).sum()
    without = image_of(backend, request_for(tiny_sd15_dir))
    assert np.abs(ours - without).mean() > 0.5
    empty = request_for(tiny_sd15_dir, controls=(ControlUnit("adapter", str(control_image), end=0.0),))
    assert np.array_equal(image_of(backend, empty), without)


def test_t2i_adapter_units_act_in_both_passes_of_the_hires_fix(backend, tiny_sd15_dir, adapter, control_image):
    # As A1111 runs them: the second pass (the same UNet) gets the features of the unit's picture made again at the
    # hires size, and the range counts that pass's steps (4 at denoising 0.5: 2 run).
    unit = ControlUnit("adapter", str(control_image), weight=0.9, end=0.5)
    request = request_for(tiny_sd15_dir, controls=(unit,), sampler="Euler", hires_fix=True, hires_scale=2.0,
                          hires_steps=4, hires_denoise=0.5)  # fmt: skip (Euler: one UNet call a step)
    seen: list[tuple[int, int | None]] = []
    second: list[torch.Tensor] = []

    def record(unet, sample, kwargs):
        residuals = kwargs.get("down_intrablock_additional_residuals")
        seen.append((sample.shape[-1], None if residuals is None else residuals[0].shape[-1]))
        if residuals is not None and sample.shape[-1] == 16:
            second.append(residuals[0][:1].clone())

    with watching_unet(record):
        ours = image_of(backend, request)
    assert ours.shape == (128, 128, 3)
    assert seen == [(8, 8), (8, 8), (8, None), (8, None), (16, 16), (16, None)]
    big = Image.open(control_image).convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    pixels_ = torch.from_numpy(np.asarray(big, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = adapter(pixels_)[0] * 0.9
    assert torch.allclose(second[0], expected, atol=1e-5)


def test_sdxl_controlnet_equals_bare_diffusers(home, tiny_sdxl_dir, control_image):
    xl_pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir), local_files_only=True)
    controlnet = tiny_controls.build_tiny_controlnet(xl_pipe.unet, seed=9)
    tiny_controls.save_controlnet(controlnet, home.controls / "xl-edges.safetensors", "ldm")
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)
    request = request_for(tiny_sdxl_dir, controls=(ControlUnit("xl-edges", str(control_image)),))
    ours = image_of(backend, request)
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(str(tiny_sdxl_dir), local_files_only=True,
                                                               controlnet=controlnet)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    expected = bare(pipe, request, image=Image.open(control_image).convert("RGB"), width=64, height=64)
    assert np.array_equal(ours, expected)


def test_a_controlnet_for_another_model_is_refused_clearly(home, backend, tiny_sdxl_dir, control_image):
    request = request_for(tiny_sdxl_dir, controls=(ControlUnit("edges", str(control_image)),))
    with pytest.raises(ModelError, match="'edges'.*does not fit the loaded model"):
        image_of(backend, request)
    with pytest.raises(ModelError, match="No control model named 'nope'"):
        image_of(backend, request_for(tiny_sdxl_dir, controls=(ControlUnit("nope", str(control_image)),)))


def test_plain_pipelines_are_untouched_after_a_control_job(backend, tiny_sd15_dir, control_image):
    without = image_of(backend, request_for(tiny_sd15_dir))
    image_of(backend, request_for(tiny_sd15_dir, controls=(ControlUnit("adapter", str(control_image)),)))
    image_of(backend, request_for(tiny_sd15_dir, controls=(ControlUnit("edges", str(control_image), mode="prompt"),)))
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir)), without)
    assert StableDiffusionPipeline and ControlNetModel  # imported for the reader: the classes compared above


def test_control_units_are_validated():
    with pytest.raises(InvalidRequest, match="start 0.8 and end 0.2"):
        request_for("m", controls=(ControlUnit("a", "b.png", start=0.8, end=0.2),))
    with pytest.raises(InvalidRequest, match="weight 3"):
        request_for("m", controls=(ControlUnit("a", "b.png", weight=3),))
    with pytest.raises(InvalidRequest, match="preprocessor 'hed'"):
        request_for("m", controls=(ControlUnit("a", "b.png", preprocessor="hed"),))
    with pytest.raises(InvalidRequest, match="needs a source image and a mask"):
        request_for("m", controls=(ControlUnit("a", "b.png", preprocessor="inpaint"),))
    request = request_for("m", controls=(ControlUnit("a", "b.png", 0.5, 0.1, 0.9, "prompt", "canny"),))
    assert GenerationRequest.from_dict(request.to_dict()) == request


def test_crop_and_resize_covers_the_size_and_keeps_the_centre():
    from desktop.engine.backends.control import crop_and_resize

    wide = Image.new("RGB", (128, 64), "black")
    ImageDraw.Draw(wide).rectangle((32, 0, 95, 63), fill="white")  # the middle half is white
    fitted = np.asarray(crop_and_resize(wide, (64, 64)))
    assert fitted.shape == (64, 64, 3) and fitted.min() == 255  # the black sides were cut, not squeezed in
    tall = np.asarray(crop_and_resize(Image.new("RGB", (10, 30), "red"), (40, 40)))
    assert tall.shape == (40, 40, 3)


def test_an_inpainting_model_takes_a_controlnet_in_image_to_image(home, tiny_sd15_inpaint_dir, control_image, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (30, 120, 200)).save(source)
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)
    plain_edit = request_for(tiny_sd15_inpaint_dir, init_image=str(source), strength=0.8)
    controlled = request_for(tiny_sd15_inpaint_dir, init_image=str(source), strength=0.8,
                             controls=(ControlUnit("edges", str(control_image)),))  # fmt: skip
    assert np.abs(image_of(backend, controlled) - image_of(backend, plain_edit)).mean() > 0.5


def test_controlnet_units_act_in_both_passes_of_the_hires_fix(backend, tiny_sd15_dir, controlnets, control_image):
    # A1111 runs ControlNet in the hires pass too, its control image at the hires size; T2I-Adapters have no
    # image-to-image pipeline in diffusers and act in the first pass only.
    unit = ControlUnit("edges", str(control_image), weight=0.8, end=0.8)
    hires = dict(hires_fix=True, hires_scale=2.0, hires_steps=4, hires_denoise=0.6)
    request = request_for(tiny_sd15_dir, controls=(unit,), **hires)
    ours = image_of(backend, request)
    assert ours.shape == (128, 128, 3)
    control = dict(controlnet_conditioning_scale=0.8, control_guidance_end=0.8)
    first = plain(StableDiffusionControlNetPipeline, tiny_sd15_dir, controlnet=controlnets[0])
    latents = first(prompt=request.prompt, num_inference_steps=STEPS, guidance_scale=7.0, width=64, height=64,
                    image=Image.open(control_image).convert("RGB"), generator=torch.Generator("cpu").manual_seed(7),
                    output_type="latent", **control).images  # fmt: skip
    upscaled = torch.nn.functional.interpolate(latents, size=(16, 16), mode="bilinear", antialias=False)
    second = StableDiffusionControlNetImg2ImgPipeline(**first.components)
    second.scheduler = type(first.scheduler).from_config(first.scheduler.config)
    second.set_progress_bar_config(disable=True)
    big = Image.open(control_image).convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    expected = second(prompt=request.prompt, num_inference_steps=4, guidance_scale=7.0, image=upscaled,
                      strength=0.6, control_image=big, generator=torch.Generator("cpu").manual_seed(7),
                      **control).images[0]  # fmt: skip
    assert np.array_equal(ours, np.asarray(expected.convert("RGB")).astype(np.int16))
    # Without the unit, another picture.
    without = image_of(backend, request_for(tiny_sd15_dir, **hires))
    assert np.abs(ours - without).mean() > 1.0
