"""SD3 ControlNets from the control library, with an SD3 / SD3.5 text-to-image job: InstantX's kind (for SD3
Medium: its own position embedding, joint blocks reading the prompt, zero pooled projections) and Stability's
SD3.5 Large kind (the transformer's position embedding, single blocks, no prompt), the latter in diffusers'
names and in Stability's own (`attn.qkv`, `mlp.fc1`, `adaLN_modulation.1`). Detected from their tensors, shaped
from them and the loaded transformer, run in diffusers' StableDiffusion3ControlNetPipeline on the loaded
modules: pixel-identical to bare diffusers with the same control picture, weight and range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    SD3ControlNetModel,
    SD3MultiControlNetModel,
    StableDiffusion3ControlNetPipeline,
    StableDiffusion3Pipeline,
)
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.errors import InvalidRequest
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import fits_model, inspect_control
from desktop.engine.library.index import guess_kind
from desktop.engine.library.native_size import takes_controls
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.control_edit_checks import check_controlnet_image_to_image, check_controlnet_inpainting
from tests.support.edit_inputs import source_and_mask
from tests.support.offload_check import assert_mode_matches_full
from tests.support.tiny_dit import _jitter, build_tiny_sd3, save_pipeline

VALUES = dict(negative_prompt="blurry", cfg_scale=5.0, steps=3, seed=7)
# diffusers' names -> Stability's, for the file a SD3.5 Large ControlNet ships as.
SAI = {".attn.to_out.0.": ".attn.proj.", ".ff.net.0.proj.": ".mlp.fc1.", ".ff.net.2.": ".mlp.fc2.",
       ".norm1.linear.": ".adaLN_modulation.1."}  # fmt: skip


def tiny_controlnet(transformer, seed: int, instantx: bool, extra_channels: int = 0) -> SD3ControlNetModel:
    """One of the two kinds for the tiny SD3 (4 heads of 8); its zero layers given noise, or it would change
    nothing and every comparison would pass for the wrong reason."""
    config = transformer.config
    torch.manual_seed(seed)
    own = dict(joint_attention_dim=config.joint_attention_dim, pos_embed_max_size=config.pos_embed_max_size)
    stability = dict(joint_attention_dim=None, pos_embed_max_size=None, pos_embed_type=None, use_pos_embed=False,
                     force_zeros_for_pooled_projection=False)  # fmt: skip
    model = SD3ControlNetModel(
        sample_size=config.sample_size, patch_size=config.patch_size, in_channels=config.in_channels,
        num_layers=1, attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        caption_projection_dim=config.caption_projection_dim, pooled_projection_dim=config.pooled_projection_dim,
        out_channels=config.out_channels, extra_conditioning_channels=extra_channels,
        **(own if instantx else stability),
    )  # fmt: skip
    _jitter(model, seed)
    with torch.no_grad():
        for layer in (*model.controlnet_blocks, model.pos_embed_input.proj):
            layer.weight.add_(torch.randn(layer.weight.shape) * 0.3)
    return model.eval()


def stability_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        if ".attn.to_q." in key:
            out[key.replace(".attn.to_q.", ".attn.qkv.")] = torch.cat(
                [state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv"]
            )
            continue
        for ours, theirs in SAI.items():
            key = key.replace(ours, theirs)
        out[key] = value
    return out


def save(state: dict[str, torch.Tensor], path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd3-controlnet")
    pipe = build_tiny_sd3()
    folder = save_pipeline(pipe, tmp / "sd3")
    home = AppPaths.for_root(tmp / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    instantx = tiny_controlnet(pipe.transformer, 1, instantx=True)
    large = tiny_controlnet(pipe.transformer, 2, instantx=False)
    save(instantx.state_dict(), home.controls / "sd3-canny.safetensors")
    save(large.state_dict(), home.controls / "sd35-depth-diffusers.safetensors")
    save(stability_names(large.state_dict()), home.controls / "sd3.5_large_controlnet_depth.safetensors")
    inpaint = tiny_controlnet(pipe.transformer, 3, instantx=True, extra_channels=1)
    save(inpaint.state_dict(), home.controls / "sd3-inpaint.safetensors")
    picture = tmp / "shapes.png"
    canvas = np.zeros((64, 64, 3), dtype=np.uint8)
    canvas[8:36, 22:54] = (240, 200, 40)
    canvas[40:60, 6:32] = (30, 90, 220)
    Image.fromarray(canvas).save(picture)
    return {"folder": folder, "home": home, "picture": picture, "instantx": instantx, "large": large,
            "inpaint": inpaint}  # fmt: skip


def bare(sd3, controlnet, cls=StableDiffusion3ControlNetPipeline, **control):
    base = StableDiffusion3Pipeline.from_pretrained(
        str(sd3["folder"]), local_files_only=True, **shipped_tokenizers(Resources.default(), sd3["folder"], "sd3")
    )
    pipe = cls(**base.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(7)  # the pipeline samples the control picture's latents from torch's global generator
    image = pipe(
        prompt="a red circle on a blue background", negative_prompt="blurry", guidance_scale=5.0,
        num_inference_steps=3, width=64, height=64, generator=torch.Generator("cpu").manual_seed(7), **control,
    ).images[0]  # fmt: skip
    return pixels(image)


def test_both_kinds_and_stabilitys_names_are_detected_as_sd3_controlnets(sd3):
    for name, layout in (("sd3-canny", "diffusers"), ("sd35-depth-diffusers", "diffusers"),
                         ("sd3.5_large_controlnet_depth", "sai")):  # fmt: skip
        path = sd3["home"].controls / f"{name}.safetensors"
        info = inspect_control(read_safetensors_header(path))
        assert (info.family, info.layout, info.label, guess_kind(path)) == ("sd3", layout, "SD3 ControlNet", "control")
    assert takes_controls("sd3") and not takes_controls("chroma")
    # The window offers a control model for the models of its family (a few-step kind rides on its family).
    assert fits_model("sd3", "sd3") and not fits_model("sd3", "sdxl") and not fits_model("sd1", "sd3")
    assert fits_model("sdxl", "sdxl-turbo") and fits_model(None, "flux-dev") and fits_model("flux", None)


@pytest.mark.parametrize("name, kind", [("sd3-canny", "instantx"), ("sd35-depth-diffusers", "large"),
                                        ("sd3.5_large_controlnet_depth", "large")])  # fmt: skip
def test_an_sd3_controlnet_unit_is_bare_diffusers(sd3, name, kind):
    unit = ControlUnit(name, str(sd3["picture"]), weight=0.8, start=0.0, end=0.7)
    backend = make_backend(sd3["home"])
    batch, steps = run(backend, request_for(sd3["folder"], controls=(unit,), **VALUES))
    picture = Image.open(sd3["picture"]).convert("RGB")
    expected = bare(sd3, sd3[kind], control_image=picture, controlnet_conditioning_scale=0.8,
                    control_guidance_start=0.0, control_guidance_end=0.7)  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert [c.name for c in batch.controls] == [name] and len(steps) == 3
    # The unit counts, and the same job again is the same picture (the control picture's latents are drawn
    # from a generator seeded by the job, not from whatever state torch's global one was left in).
    plain, _ = run(backend, request_for(sd3["folder"], **VALUES))
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))
    torch.manual_seed(12345)
    again, _ = run(backend, request_for(sd3["folder"], controls=(unit,), **VALUES))
    assert np.array_equal(pixels(again.images[0]), pixels(batch.images[0]))


def test_two_sd3_units_of_one_kind_run_together_and_of_both_kinds_are_refused(sd3):
    units = (ControlUnit("sd35-depth-diffusers", str(sd3["picture"]), weight=0.9),
             ControlUnit("sd3.5_large_controlnet_depth", str(sd3["picture"]), weight=0.5, end=0.5))  # fmt: skip
    backend = make_backend(sd3["home"])
    batch, _ = run(backend, request_for(sd3["folder"], controls=units, **VALUES))
    picture = Image.open(sd3["picture"]).convert("RGB")
    multi = SD3MultiControlNetModel([sd3["large"], sd3["large"]])
    expected = bare(sd3, multi, control_image=[picture, picture], controlnet_conditioning_scale=[0.9, 0.5],
                    control_guidance_start=[0.0, 0.0], control_guidance_end=[1.0, 0.5])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    # diffusers' pipeline gives every model the first one's inputs: InstantX's with Stability's would fail in
    # the first step.
    mixed = (ControlUnit("sd3-canny", str(sd3["picture"])), units[1])
    with pytest.raises(InvalidRequest, match="cannot run in one job"):
        run(backend, request_for(sd3["folder"], controls=mixed, **VALUES))


def test_an_inpainting_controlnet_inpaints_as_by_hand(sd3, tmp_path):
    # The mask beside the masked source's latents (one more channel): StableDiffusion3ControlNetInpaintingPipeline
    # at strength 1, reading the job's source and mask (not the unit's picture); the source kept outside the mask.
    from diffusers import StableDiffusion3ControlNetInpaintingPipeline

    path = sd3["home"].controls / "sd3-inpaint.safetensors"
    assert inspect_control(read_safetensors_header(path)).label == "SD3 ControlNet (inpainting)"
    source_path, mask_path, source, mask = source_and_mask(tmp_path, (16, 12, 48, 44), seed=6)
    unit = ControlUnit("sd3-inpaint", str(sd3["picture"]), weight=0.9)
    edit = dict(init_image=str(source_path), mask=str(mask_path), strength=1.0, mask_blur=0)
    backend = make_backend(sd3["home"])
    batch, _ = run(backend, request_for(sd3["folder"], controls=(unit,), **VALUES, **edit))
    out = bare(sd3, sd3["inpaint"], StableDiffusion3ControlNetInpaintingPipeline, control_image=source,
               control_mask=Image.open(mask_path).convert("L"), controlnet_conditioning_scale=0.9)  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), np.where(mask[..., None] == 255, out, pixels(source)))
    with pytest.raises(InvalidRequest, match="it runs in an inpainting job"):
        run(backend, request_for(sd3["folder"], controls=(unit,), **VALUES))
    with pytest.raises(InvalidRequest, match="inpaints with an SD3 inpainting ControlNet .alimama's. alone"):
        run(backend, request_for(sd3["folder"], controls=(unit, ControlUnit("sd3-canny", str(sd3["picture"]))),
                                 **VALUES, **edit))  # fmt: skip
    with pytest.raises(InvalidRequest, match="its denoising strength is 1, not 0.5"):
        run(backend, request_for(sd3["folder"], controls=(unit,), **VALUES, **(edit | {"strength": 0.5})))


def test_an_sd3_controlnet_inpaints_under_the_mask(sd3, tmp_path):
    # As A1111 inpaints with a ControlNet (diffusers' SD3 ControlNet inpainting pipeline runs inpainting ControlNets
    # only).
    check_controlnet_inpainting(sd3["home"], sd3["folder"], ControlUnit("sd3-canny", str(sd3["picture"])),
                                ("controlnet_blocks.",), tmp_path, own_inpainting=False, **VALUES)  # fmt: skip


def test_an_sd3_controlnet_works_in_image_to_image_and_the_hires_fix(sd3, tmp_path):
    # diffusers' SD3 ControlNet pipeline is text-to-image only: Marble runs it over a source as
    # StableDiffusion3Img2ImgPipeline does (control_dit_edits.py).
    check_controlnet_image_to_image(sd3["home"], sd3["folder"], ControlUnit("sd3-canny", str(sd3["picture"])),
                                    ("controlnet_blocks.",), SD3ControlNetModel, tmp_path,
                                    **(VALUES | {"steps": 4}))  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
@pytest.mark.parametrize("mode", ["offload", "group", "fp8"])
def test_a_stability_sd3_controlnet_runs_in_the_offload_modes_on_cuda(sd3, mode):
    # The pipeline copies the transformer's position embedding into the ControlNet when it is built: from the
    # CPU under model and group offload. Sequential offload keeps it in its hooks' store: refused by name.
    unit = ControlUnit("sd3.5_large_controlnet_depth", str(sd3["picture"]), weight=0.8)
    assert_mode_matches_full(make_backend(sd3["home"]), sd3["folder"], mode, controls=(unit,), **VALUES)
    with pytest.raises(InvalidRequest, match="sequential offload keeps off the GPU"):
        run(make_backend(sd3["home"]), request_for(sd3["folder"], controls=(unit,), memory_mode="sequential",
                                                   device="cuda", **VALUES))  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
@pytest.mark.parametrize("mode", ["offload", "group", "fp8"])
def test_an_inpainting_controlnet_runs_in_the_offload_modes_on_cuda(sd3, tmp_path, mode):
    # Its pipeline encodes the masked source with the base's VAE under the base's hooks.
    source_path, mask_path, _, _ = source_and_mask(tmp_path, (16, 12, 48, 44), seed=6)
    unit = ControlUnit("sd3-inpaint", str(sd3["picture"]), weight=0.9)
    assert_mode_matches_full(make_backend(sd3["home"]), sd3["folder"], mode, controls=(unit,),
                             init_image=str(source_path), mask=str(mask_path), strength=1.0, mask_blur=0,
                             **VALUES)  # fmt: skip
