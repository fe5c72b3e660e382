"""DiT ControlNets in diffusers' layout, from the control library: Flux.1's (InstantX's, Shakker-Labs' Union)
and Qwen-Image's (InstantX's), with a text-to-image job of their family: detected from their tensors, shaped
from them and the loaded transformer, run in diffusers' ControlNet pipeline of the family on the loaded
modules -- pixel-identical to bare diffusers with the same control picture, weight, range and (for a Flux
union model) mode. Control models of another family are refused both ways, by name."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import (
    FluxControlNetImg2ImgPipeline,
    FluxControlNetInpaintPipeline,
    FluxControlNetModel,
    FluxControlNetPipeline,
    FluxMultiControlNetModel,
    QwenImageControlNetModel,
    QwenImageControlNetPipeline,
    QwenImagePipeline,
)
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.backends import control_dit
from desktop.engine.control_preprocess import preprocess
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import guess_kind
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_flux
from tests.support import tiny_controls
from tests.support.cli_runner import run_cli
from tests.support.control_edit_checks import check_controlnet_image_to_image, check_controlnet_inpainting
from tests.support.edit_inputs import source_and_mask
from tests.support.offload_check import assert_mode_matches_full
from tests.support.tiny_dit import _jitter, build_tiny_flux, save_pipeline
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image

FLUX = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=3, seed=11)


def tiny_flux_controlnet(transformer, seed: int, union: bool = False) -> FluxControlNetModel:
    """A Flux.1 ControlNet for the tiny Flux: one double and one single block, its zero layers given noise
    (a fresh ControlNet changes nothing, and every with/without comparison would pass for the wrong reason)."""
    torch.manual_seed(seed)
    config = dict(FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                                       attention_head_dim=16, num_attention_heads=2,
                                                       load_weights_from_transformer=False).config)  # fmt: skip
    model = FluxControlNetModel.from_config(config, num_mode=10 if union else None)
    _jitter(model, seed)
    with torch.no_grad():
        for layer in (*model.controlnet_blocks, *model.controlnet_single_blocks, model.controlnet_x_embedder):
            layer.weight.add_(torch.randn(layer.weight.shape) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux-controlnet")
    pipe = build_tiny_flux()
    models = {"edges": tiny_flux_controlnet(pipe.transformer, 1),
              "union": tiny_flux_controlnet(pipe.transformer, 2, union=True)}  # fmt: skip
    files = {name: model.state_dict() for name, model in models.items()}
    return flux_control_home(tmp, pipe, files) | {"models": models}


def flux_control_home(tmp, pipe, files) -> dict:
    """A Marble home whose control library holds `files` (library name -> tensors), `pipe` saved as a diffusers
    folder, and a control picture of two shapes: the fixture's "home", "folder" and "picture"."""
    home = AppPaths.for_root(tmp / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    for name, state in files.items():
        save_file({k: v.contiguous() for k, v in state.items()}, home.controls / f"{name}.safetensors")
    picture = tmp / "shapes.png"
    canvas = np.zeros((64, 64, 3), dtype=np.uint8)
    canvas[12:40, 20:52] = (240, 200, 40)
    canvas[44:60, 6:30] = (30, 90, 220)
    Image.fromarray(canvas).save(picture)
    return {"folder": save_pipeline(pipe, tmp / "flux"), "home": home, "picture": picture}


def bare_control(flux, controlnet, control_image, **control):
    pipe = bare_flux(flux["folder"])
    pipe = FluxControlNetPipeline(**pipe.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a red circle on a blue background", num_inference_steps=3, width=64, height=64,
                guidance_scale=3.5, control_image=control_image, generator=torch.Generator("cpu").manual_seed(11),
                **control).images[0]  # fmt: skip


def test_a_flux_controlnet_is_detected_from_its_tensors_and_imported_as_one(flux, tmp_path):
    edges = inspect_control(read_safetensors_header(flux["home"].controls / "edges.safetensors"))
    union = inspect_control(read_safetensors_header(flux["home"].controls / "union.safetensors"))
    assert (edges.family, edges.label, union.label) == ("flux", "Flux.1 ControlNet", "Flux.1 ControlNet (union)")
    # A dropped file goes to the control library (its transformer blocks' names also pass for a LoRA's).
    assert guess_kind(flux["home"].controls / "union.safetensors") == "control"
    home = str(tmp_path / "home")
    code, out, err = run_cli("controls", "import", str(flux["home"].controls / "union.safetensors"), "--home", home)
    assert code == 0 and "Flux.1 ControlNet (union)" in out, err


def test_a_flux_controlnet_unit_is_bare_diffusers_with_its_control_image(flux):
    unit = ControlUnit("edges", str(flux["picture"]), weight=0.8, start=0.0, end=0.7)
    backend = make_backend(flux["home"])
    batch, steps = run(backend, request_for(flux["folder"], controls=(unit,), **FLUX))
    picture = Image.open(flux["picture"]).convert("RGB")
    expected = bare_control(flux, flux["models"]["edges"], picture, controlnet_conditioning_scale=0.8,
                            control_guidance_start=0.0, control_guidance_end=0.7)  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    assert [c.name for c in batch.controls] == ["edges"] and len(steps) == 3
    # The unit counts: without it, another picture; at weight 0, the picture without it.
    plain, _ = run(backend, request_for(flux["folder"], **FLUX))
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))
    off, _ = run(backend, request_for(flux["folder"], controls=(ControlUnit("edges", str(flux["picture"]), 0.0),),
                                      **FLUX))  # fmt: skip
    assert np.array_equal(pixels(off.images[0]), pixels(plain.images[0]))


def test_a_union_model_reads_its_mode_from_the_preprocessor_and_two_units_run_together(flux):
    canny = ControlUnit("union", str(flux["picture"]), weight=0.9, preprocessor="canny")
    backend = make_backend(flux["home"])
    batch, _ = run(backend, request_for(flux["folder"], controls=(canny,), **FLUX))
    # The canny picture as a diffusers user hands it over (a PIL image, which the pipeline normalises).
    edges = preprocess("canny", Image.open(flux["picture"]).convert("RGB"))
    control = Image.fromarray((edges * 255).round().astype(np.uint8))
    expected = bare_control(flux, flux["models"]["union"], control, controlnet_conditioning_scale=0.9, control_mode=0)
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    # Canny read as tile (mode 1) is another picture: the mode reaches the model.
    as_tile = bare_control(flux, flux["models"]["union"], control, controlnet_conditioning_scale=0.9, control_mode=1)
    assert not np.array_equal(pixels(batch.images[0]), pixels(as_tile))
    # Two units: FluxMultiControlNetModel, each with its own weight and mode.
    plain_unit = ControlUnit("edges", str(flux["picture"]), weight=0.5)
    both, _ = run(backend, request_for(flux["folder"], controls=(canny, plain_unit), **FLUX))
    picture = Image.open(flux["picture"]).convert("RGB")
    multi = FluxMultiControlNetModel([flux["models"]["union"], flux["models"]["edges"]])
    expected = bare_control(flux, multi, [control, picture], controlnet_conditioning_scale=[0.9, 0.5],
                            control_mode=[0, None], control_guidance_start=[0.0, 0.0],
                            control_guidance_end=[1.0, 1.0])  # fmt: skip
    assert np.array_equal(pixels(both.images[0]), pixels(expected))


def test_each_preprocessor_gives_instantxs_union_mode():
    # Keyed by Marble's preprocessor names (the table was keyed by A1111's module names, so a depth unit was
    # refused); Shakker-Labs' Union Pro 2.0 (no mode embedder) takes any preprocessor and no mode.
    kinds = ("canny", "tile", "depth", "blur", "openpose_full", "gray")
    units = [ControlUnit("union", "x.png", preprocessor=kind) for kind in kinds]
    union, single = SimpleNamespace(union=True), SimpleNamespace(union=False)
    assert control_dit.union_modes("flux", units, [union] * 6, ["union"] * 6) == [0, 1, 2, 3, 4, 5]
    assert control_dit.union_modes("flux", units[:1], [single], ["pro"]) == [None]
    assert control_dit.union_modes("qwen-image", units, [union] * 6, ["union"] * 6) is None


def test_a_union_unit_without_a_kind_of_image_is_refused(flux):
    unit = ControlUnit("union", str(flux["picture"]), preprocessor="none")
    with pytest.raises(InvalidRequest, match="'union' is a union ControlNet: it needs to know what its control"):
        run(make_backend(flux["home"]), request_for(flux["folder"], controls=(unit,), **FLUX))


def test_control_models_of_the_other_family_are_refused_both_ways(flux, tmp_path, tiny_sd15_dir):
    from diffusers import UNet2DConditionModel

    home = flux["home"]
    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15_dir / "unet"))
    tiny_controls.save_controlnet(tiny_controls.build_tiny_controlnet(unet), home.controls / "sd-edges.safetensors")
    sd_unit = ControlUnit("sd-edges", str(flux["picture"]))
    with pytest.raises(InvalidRequest, match="'sd-edges' is a ControlNet for Stable Diffusion: Flux.1 dev takes"):
        run(make_backend(home), request_for(flux["folder"], controls=(sd_unit,), **FLUX))
    flux_unit = ControlUnit("edges", str(flux["picture"]))
    with pytest.raises(ModelError, match="'edges' is a Flux.1 ControlNet: it works with Flux.1 models"):
        run(make_backend(home), request_for(tiny_sd15_dir, controls=(flux_unit,), steps=2))


def test_flux_img2img_and_inpaint_with_a_controlnet_are_bare_diffusers(flux, tmp_path):
    _, _, source, mask = source_and_mask(tmp_path, (16, 8, 56, 40), seed=5)
    unit = ControlUnit("edges", str(flux["picture"]), weight=0.8)
    backend = make_backend(flux["home"])
    base = bare_flux(flux["folder"])
    for cls, extra in ((FluxControlNetImg2ImgPipeline, {}), (FluxControlNetInpaintPipeline,
                                                          {"mask": str(tmp_path / "mask.png")})):  # fmt: skip
        request = request_for(flux["folder"], controls=(unit,), init_image=str(tmp_path / "source.png"),
                              strength=0.75, mask_blur=0, **FLUX, **extra)  # fmt: skip
        batch, steps = run(backend, request)
        parts = {k: v for k, v in base.components.items() if k in inspect.signature(cls.__init__).parameters}
        pipe = cls(**parts, controlnet=flux["models"]["edges"])
        pipe.set_progress_bar_config(disable=True)
        masks = {"mask_image": Image.open(tmp_path / "mask.png").convert("L")} if extra else {}
        out = pixels(pipe(prompt="a red circle on a blue background", image=source, strength=0.75,
                          num_inference_steps=3, width=64, height=64, guidance_scale=3.5,
                          control_image=Image.open(flux["picture"]).convert("RGB"), controlnet_conditioning_scale=0.8,
                          generator=torch.Generator("cpu").manual_seed(11), **masks).images[0])  # fmt: skip
        if extra:  # Marble keeps the source's own pixels outside the mask
            out = np.where(mask[..., None] == 255, out, pixels(source))
        assert np.array_equal(pixels(batch.images[0]), out), cls.__name__
    # These pipelines have no true CFG: a negative prompt is said to be ignored, not passed to fail.
    negative = request_for(flux["folder"], controls=(unit,), init_image=str(tmp_path / "source.png"), strength=0.75,
                           **(FLUX | {"negative_prompt": "blurry"}))  # fmt: skip
    batch, _ = run(backend, negative)
    assert any("negative prompt was ignored" in note for note in batch.notes), batch.notes


def test_a_flux_controlnet_acts_in_both_passes_of_the_hires_fix(flux):
    # As A1111 runs ControlNet: the first pass with the control picture at the job's size, the second (Flux's
    # image-to-image ControlNet pipeline) with it made again at the hires size.
    unit = ControlUnit("edges", str(flux["picture"]), weight=0.8)
    hires = dict(hires_fix=True, hires_scale=2.0, hires_denoise=0.5, hires_steps=6, hires_upscaler="Lanczos")
    batch, _ = run(make_backend(flux["home"]), request_for(flux["folder"], controls=(unit,), **FLUX, **hires))
    assert batch.images[0].size == (128, 128) and not [n for n in batch.notes if "hires" in n]
    picture = Image.open(flux["picture"]).convert("RGB")
    first = bare_control(flux, flux["models"]["edges"], picture, controlnet_conditioning_scale=0.8)
    base = bare_flux(flux["folder"])
    parts = {k: v for k, v in base.components.items()
             if k in inspect.signature(FluxControlNetImg2ImgPipeline.__init__).parameters}  # fmt: skip
    second = FluxControlNetImg2ImgPipeline(**parts, controlnet=flux["models"]["edges"])
    second.set_progress_bar_config(disable=True)
    expected = second(prompt="a red circle on a blue background", strength=0.5, num_inference_steps=6, width=128,
                      height=128, guidance_scale=3.5, controlnet_conditioning_scale=0.8,
                      image=first.resize((128, 128), Image.Resampling.LANCZOS),
                      control_image=picture.resize((128, 128), Image.Resampling.LANCZOS),
                      generator=[torch.Generator("cpu").manual_seed(11)]).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A Qwen-Image folder whose VAE normalises its latents (the tiny one's do not), as the real one's does, and a
    home whose control library holds a Qwen-Image ControlNet, "qwen-union"."""
    tmp = tmp_path_factory.mktemp("qwen-controlnet-edits")
    pipe = build_tiny_qwen_image()
    pipe.vae.register_to_config(latents_mean=[0.1, -0.2, 0.05, 0.3], latents_std=[0.8, 1.2, 0.9, 1.1])
    folder = tmp / "qwen"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    home = AppPaths.for_root(tmp / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny_qwen_controlnet(pipe.transformer, 3).state_dict().items()},
              str(home.controls / "qwen-union.safetensors"))  # fmt: skip
    return {"folder": folder, "home": home}


QWEN_VALUES = dict(negative_prompt="blurry", cfg_scale=4.0, seed=11)


def test_a_qwen_image_controlnet_works_in_image_to_image_and_the_hires_fix(qwen, flux, tmp_path):
    # diffusers' Qwen-Image ControlNet pipeline is text-to-image only: Marble runs it over a source as
    # QwenImageImg2ImgPipeline does (control_dit_edits.py).
    check_controlnet_image_to_image(qwen["home"], qwen["folder"], ControlUnit("qwen-union", str(flux["picture"])),
                                    ("controlnet_blocks.",), QwenImageControlNetModel, tmp_path,
                                    **QWEN_VALUES)  # fmt: skip


def test_a_qwen_image_controlnet_inpaints_under_the_mask(qwen, flux, tmp_path):
    # The same under a mask, as A1111 inpaints with a ControlNet (diffusers' Qwen-Image ControlNet inpainting
    # pipeline runs InstantX's inpainting ControlNet only).
    check_controlnet_inpainting(qwen["home"], qwen["folder"], ControlUnit("qwen-union", str(flux["picture"])),
                                ("controlnet_blocks.",), tmp_path, own_inpainting=False, **QWEN_VALUES)  # fmt: skip


def tiny_qwen_controlnet(transformer, seed: int) -> QwenImageControlNetModel:
    torch.manual_seed(seed)
    model = QwenImageControlNetModel.from_transformer(
        transformer, num_layers=1, attention_head_dim=16, num_attention_heads=2, load_weights_from_transformer=False
    )
    _jitter(model, seed)
    with torch.no_grad():
        for layer in (*model.controlnet_blocks, model.controlnet_x_embedder):
            layer.weight.add_(torch.randn(layer.weight.shape) * 0.3)
    return model.eval()


def test_a_qwen_image_controlnet_unit_is_bare_diffusers_with_its_control_image(flux, tmp_path):
    pipe = build_tiny_qwen_image()
    folder = tmp_path / "qwen"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    home = flux["home"]
    controlnet = tiny_qwen_controlnet(pipe.transformer, 3)
    path = home.controls / "qwen-union.safetensors"
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(path))
    info = inspect_control(read_safetensors_header(path))
    assert (info.family, info.label, guess_kind(path)) == ("qwen-image", "Qwen-Image ControlNet", "control")
    unit = ControlUnit("qwen-union", str(flux["picture"]), weight=0.7, start=0.0, end=0.8)
    values = dict(negative_prompt="blurry", cfg_scale=4.0, steps=3, seed=11)
    backend = make_backend(home)
    batch, _ = run(backend, request_for(folder, controls=(unit,), **values))
    bare = QwenImagePipeline.from_pretrained(str(folder), local_files_only=True)
    bare = QwenImageControlNetPipeline(**bare.components, controlnet=controlnet)
    bare.set_progress_bar_config(disable=True)
    expected = bare(prompt="a red circle on a blue background", negative_prompt="blurry", true_cfg_scale=4.0,
                    num_inference_steps=3, width=64, height=64, max_sequence_length=512,
                    control_image=Image.open(flux["picture"]).convert("RGB"), controlnet_conditioning_scale=0.7,
                    control_guidance_start=0.0, control_guidance_end=0.8,
                    generator=torch.Generator("cpu").manual_seed(11)).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    plain, _ = run(backend, request_for(folder, **values))
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))
    # A Flux ControlNet with Qwen-Image, and this one with Flux: refused by name.
    with pytest.raises(InvalidRequest, match="'edges' is a Flux.1 ControlNet for Flux.1: Qwen-Image takes Qwen-Image"):
        run(backend, request_for(folder, controls=(ControlUnit("edges", str(flux["picture"])),), **values))
    with pytest.raises(InvalidRequest, match="'qwen-union' is a Qwen-Image ControlNet for Qwen-Image: Flux.1 dev"):
        run(make_backend(home), request_for(flux["folder"], controls=(unit,), **FLUX))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
@pytest.mark.parametrize("mode", ["offload", "group", "sequential", "fp8"])
def test_a_flux_controlnet_runs_in_each_offload_mode_on_cuda(flux, mode):
    # The ControlNet stays on the GPU whole while the base's offload hooks move the rest: the same picture
    # as with everything on the GPU, within the modes' own noise.
    unit = ControlUnit("edges", str(flux["picture"]), weight=0.8)
    assert_mode_matches_full(make_backend(flux["home"]), flux["folder"], mode, controls=(unit,), **FLUX)


def test_qwen_image_inpaints_with_instantx_inpainting_controlnet_as_by_hand(flux, tmp_path):
    # InstantX's inpainting ControlNet reads the masked source and the mask (4 more input channels: the mask
    # packed 2x2) and paints from pure noise: QwenImageControlNetInpaintPipeline at strength 1, the source kept
    # outside the mask as in every Marble inpainting job.
    from diffusers import QwenImageControlNetInpaintPipeline

    pipe = build_tiny_qwen_image()
    folder = tmp_path / "qwen"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    home = AppPaths.for_root(tmp_path / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4)
    inpainting = QwenImageControlNetModel.from_transformer(
        pipe.transformer, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        load_weights_from_transformer=False, extra_condition_channels=4,
    )  # fmt: skip
    _jitter(inpainting, 4)
    with torch.no_grad():
        for layer in (*inpainting.controlnet_blocks, inpainting.controlnet_x_embedder):
            layer.weight.add_(torch.randn(layer.weight.shape) * 0.3)
    save_file({k: v.contiguous() for k, v in inpainting.eval().state_dict().items()},
              str(home.controls / "qwen-inpainting.safetensors"))  # fmt: skip
    save_file({k: v.contiguous() for k, v in tiny_qwen_controlnet(pipe.transformer, 3).state_dict().items()},
              str(home.controls / "qwen-union.safetensors"))  # fmt: skip
    labels = {name: inspect_control(read_safetensors_header(home.controls / f"{name}.safetensors")).label
              for name in ("qwen-inpainting", "qwen-union")}  # fmt: skip
    assert labels == {"qwen-inpainting": "Qwen-Image ControlNet (inpainting)", "qwen-union": "Qwen-Image ControlNet"}
    source_path, mask_path, source, mask = source_and_mask(tmp_path, (16, 12, 48, 44), seed=5)
    # The unit's own picture is not what it reads: the job's source and mask are.
    unit = ControlUnit("qwen-inpainting", str(flux["picture"]), weight=0.8)
    values = dict(negative_prompt="blurry", cfg_scale=4.0, steps=3, seed=11, init_image=str(source_path),
                  mask=str(mask_path), strength=1.0, mask_blur=0)  # fmt: skip
    backend = make_backend(home)
    batch, _ = run(backend, request_for(folder, controls=(unit,), **values))
    bare = QwenImageControlNetInpaintPipeline(**QwenImagePipeline.from_pretrained(str(folder)).components,
                                              controlnet=inpainting)  # fmt: skip
    bare.set_progress_bar_config(disable=True)
    torch.manual_seed(11)  # the pipeline samples the masked source's latents from torch's global generator
    out = bare(prompt="a red circle on a blue background", negative_prompt="blurry", true_cfg_scale=4.0,
               num_inference_steps=3, width=64, height=64, max_sequence_length=512, control_image=source,
               control_mask=Image.open(mask_path).convert("L"), controlnet_conditioning_scale=0.8,
               generator=torch.Generator("cpu").manual_seed(11)).images[0]  # fmt: skip
    expected = np.where(mask[..., None] == 255, pixels(out), pixels(source))
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert [c.name for c in batch.controls] == ["qwen-inpainting"]
    # A batch: the source and mask go to the ControlNet once; image 0 is the lone job's (its seed's draws first).
    pair, _ = run(backend, request_for(folder, controls=(unit,), batch_size=2, **values))
    difference = np.abs(pixels(pair.images[0]).astype(int) - pixels(batch.images[0]).astype(int))
    assert len(pair.images) == 2 and difference.max() <= 1 and difference.mean() < 0.01
    # Its pipeline paints from noise; it needs a mask; the other ControlNets do not inpaint.
    with pytest.raises(InvalidRequest, match="its denoising strength is 1, not 0.6"):
        run(backend, request_for(folder, controls=(unit,), **(values | {"strength": 0.6})))
    with pytest.raises(InvalidRequest, match="it runs in an inpainting job"):
        run(backend, request_for(folder, controls=(replace_model(unit, "qwen-inpainting", "none"),),
                                 **{k: v for k, v in values.items() if k not in ("init_image", "mask", "strength")}))
    with pytest.raises(InvalidRequest, match="inpaints with InstantX's Qwen-Image inpainting ControlNet alone"):
        run(backend, request_for(folder, controls=(unit, replace_model(unit, "qwen-union", "canny")), **values))


def replace_model(unit: ControlUnit, model: str, preprocessor: str) -> ControlUnit:
    from dataclasses import replace

    return replace(unit, model=model, preprocessor=preprocessor)
