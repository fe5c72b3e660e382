"""XLabs' Flux.1 ControlNets (canny, depth, hed ... v3; the Flux ControlNets ComfyUI users have most): two BFL
double blocks over a small convolutional encoder of the control picture, in XLabs' own names (BFL's, with
`pos_embed_input` and `input_hint_block.N`) or in diffusers'. Detected from their tensors, converted to
diffusers' FluxControlNetModel when loaded, and run through diffusers' Flux ControlNet pipelines: pixel-identical
to bare diffusers with the model built in diffusers' names. The tiny Flux has a real 8x autoencoder, as the
control picture's encoder shrinks it by 8 too."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from diffusers import (
    FluxControlNetImg2ImgPipeline,
    FluxControlNetInpaintPipeline,
    FluxControlNetModel,
    FluxControlNetPipeline,
    FluxMultiControlNetModel,
)
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.backends.control_dit import _xlabs_diffusers_names
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import guess_kind
from desktop.engine.library.lora import inspect_lora
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_dit_controlnets import flux_control_home, tiny_flux_controlnet
from tests.engine.test_model_families import bare_flux
from tests.support.cli_runner import run_cli
from tests.support.edit_inputs import source_and_mask
from tests.support.tiny_dit import _jitter, build_tiny_flux, flux_to_bfl

FLUX = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=3, seed=11)
PROMPT = "a red circle on a blue background"


def tiny_xlabs_controlnet(transformer, seed: int) -> FluxControlNetModel:
    """XLabs' shape at the tiny Flux's width: two double blocks, no single blocks, the guidance embedder, and
    the picture encoder whose output packs 2x2 into the transformer's input width (16 channels, as the real
    one's for Flux's 64). Its zero-initialised layers are given noise, so the unit changes the picture."""
    torch.manual_seed(seed)
    config = dict(FluxControlNetModel.from_transformer(transformer, num_layers=2, num_single_layers=0,
                                                       attention_head_dim=16, num_attention_heads=2,
                                                       load_weights_from_transformer=False).config)  # fmt: skip
    # diffusers packs the encoder's output by its patch size: 2x2, as XLabs' code does.
    model = FluxControlNetModel.from_config(config, conditioning_embedding_channels=transformer.config.in_channels // 4,
                                            patch_size=2)  # fmt: skip
    _jitter(model, seed)
    with torch.no_grad():
        for layer in (*model.controlnet_blocks, model.controlnet_x_embedder, model.input_hint_block.conv_out):
            layer.weight.add_(torch.randn(layer.weight.shape) * 0.3)
    return model.eval()


def xlabs_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' names -> XLabs' own, as their files have them: the transformer's modules in BFL's names (the
    tests' BFL writer), `pos_embed_input`, and the picture encoder as XLabs' nn.Sequential, whose convolutions
    sit at the even places 0, 2, ... 14 (a SiLU between each two)."""
    state = dict(state)
    out = {key: state.pop(key) for key in list(state) if key.startswith("controlnet_blocks.")}
    for suffix in ("weight", "bias"):
        out[f"pos_embed_input.{suffix}"] = state.pop(f"controlnet_x_embedder.{suffix}")
        out[f"input_hint_block.0.{suffix}"] = state.pop(f"input_hint_block.conv_in.{suffix}")
        for n in range(6):
            out[f"input_hint_block.{2 * n + 2}.{suffix}"] = state.pop(f"input_hint_block.blocks.{n}.{suffix}")
        out[f"input_hint_block.14.{suffix}"] = state.pop(f"input_hint_block.conv_out.{suffix}")
    return out | flux_to_bfl(state)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux-xlabs")
    pipe = build_tiny_flux(latent_channels=16, vae_blocks=4)
    models = {"canny-v3": tiny_xlabs_controlnet(pipe.transformer, 1),
              "depth-v3": tiny_xlabs_controlnet(pipe.transformer, 2),
              "instantx": tiny_flux_controlnet(pipe.transformer, 3)}  # fmt: skip
    files = {name: model.state_dict() for name, model in models.items()}  # diffusers' names ...
    files["canny-v3"] = xlabs_names(files["canny-v3"])  # ... and XLabs' own
    return flux_control_home(tmp, pipe, files) | {"models": models}


def bare(flux, controlnet, control_image, **control):
    base = bare_flux(flux["folder"])
    pipe = FluxControlNetPipeline(**base.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pixels(pipe(prompt=PROMPT, num_inference_steps=3, width=64, height=64, guidance_scale=3.5,
                       control_image=control_image, generator=torch.Generator("cpu").manual_seed(11),
                       **control).images[0])  # fmt: skip


def test_both_namings_are_detected_as_xlabs_flux_controlnets_and_imported_as_control_models(flux, tmp_path):
    own = inspect_control(read_safetensors_header(flux["home"].controls / "canny-v3.safetensors"))
    named = inspect_control(read_safetensors_header(flux["home"].controls / "depth-v3.safetensors"))
    assert (own.family, own.layout, own.label) == ("flux", "xlabs", "Flux.1 ControlNet (XLabs)")
    assert (named.family, named.layout, named.label) == ("flux", "diffusers", "Flux.1 ControlNet (XLabs)")
    # A dropped file goes to the control library (BFL's double blocks also pass for a Flux model's).
    assert guess_kind(flux["home"].controls / "canny-v3.safetensors") == "control"
    code, out, err = run_cli("controls", "import", str(flux["home"].controls / "canny-v3.safetensors"),
                             "--home", str(tmp_path / "home"))  # fmt: skip
    assert code == 0 and "Flux.1 ControlNet (XLabs)" in out, err
    # Its blocks' full weights would pass for a LoRA's: the LoRA library refuses it (and InstantX's) by name.
    for name, label in (("canny-v3", "Flux.1 ControlNet (XLabs)"), ("instantx", "Flux.1 ControlNet")):
        with pytest.raises(ModelError, match=rf"is a {re.escape(label)}, not a LoRA: import it as a control model"):
            inspect_lora(read_safetensors_header(flux["home"].controls / f"{name}.safetensors"), f"{name}.safetensors")


def test_xlabs_own_names_convert_back_to_every_diffusers_tensor():
    model = tiny_xlabs_controlnet(build_tiny_flux(latent_channels=16).transformer, 4)
    expected = model.state_dict()
    converted = _xlabs_diffusers_names(xlabs_names(expected))
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[key], expected[key]) for key in expected)
    # A file already in diffusers' names is left as it is.
    assert _xlabs_diffusers_names(dict(expected)) == dict(expected)


@pytest.mark.parametrize("name", ["canny-v3", "depth-v3"])
def test_an_xlabs_unit_is_bare_diffusers_with_its_control_picture(flux, name):
    unit = ControlUnit(name, str(flux["picture"]), weight=0.8, start=0.0, end=0.7)
    backend = make_backend(flux["home"])
    batch, steps = run(backend, request_for(flux["folder"], controls=(unit,), **FLUX))
    picture = Image.open(flux["picture"]).convert("RGB")
    expected = bare(flux, flux["models"][name], picture, controlnet_conditioning_scale=0.8,
                    control_guidance_start=0.0, control_guidance_end=0.7)  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert [c.name for c in batch.controls] == [name] and len(steps) == 3
    plain, _ = run(backend, request_for(flux["folder"], **FLUX))
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))


def test_two_xlabs_units_run_together_and_an_xlabs_unit_beside_another_kind_is_refused(flux):
    picture = Image.open(flux["picture"]).convert("RGB")
    units = (ControlUnit("canny-v3", str(flux["picture"]), weight=0.7),
             ControlUnit("depth-v3", str(flux["picture"]), weight=0.4))  # fmt: skip
    backend = make_backend(flux["home"])
    batch, _ = run(backend, request_for(flux["folder"], controls=units, **FLUX))
    multi = FluxMultiControlNetModel([flux["models"]["canny-v3"], flux["models"]["depth-v3"]])
    expected = bare(flux, multi, [picture, picture], controlnet_conditioning_scale=[0.7, 0.4],
                    control_guidance_start=[0.0, 0.0], control_guidance_end=[1.0, 1.0])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    # diffusers' pipeline asks the first model how to hand every picture over: the kinds cannot mix.
    mixed = (units[0], ControlUnit("instantx", str(flux["picture"])))
    with pytest.raises(InvalidRequest, match="XLabs' Flux.1 ControlNets .* cannot run in one job"):
        run(backend, request_for(flux["folder"], controls=mixed, **FLUX))


def test_an_xlabs_unit_inpaints_as_bare_diffusers(flux, tmp_path):
    _, _, source, mask = source_and_mask(tmp_path, (16, 8, 56, 40), seed=5)
    unit = ControlUnit("canny-v3", str(flux["picture"]), weight=0.8)
    request = request_for(flux["folder"], controls=(unit,), init_image=str(tmp_path / "source.png"),
                          mask=str(tmp_path / "mask.png"), strength=0.75, mask_blur=0, **FLUX)  # fmt: skip
    batch, _ = run(make_backend(flux["home"]), request)
    base = bare_flux(flux["folder"])
    parts = {k: v for k, v in base.components.items()
             if k in inspect.signature(FluxControlNetInpaintPipeline.__init__).parameters}  # fmt: skip
    pipe = FluxControlNetInpaintPipeline(**parts, controlnet=flux["models"]["canny-v3"])
    pipe.set_progress_bar_config(disable=True)
    out = pixels(pipe(prompt=PROMPT, image=source, mask_image=Image.open(tmp_path / "mask.png").convert("L"),
                      strength=0.75, num_inference_steps=3, width=64, height=64, guidance_scale=3.5,
                      control_image=Image.open(flux["picture"]).convert("RGB"), controlnet_conditioning_scale=0.8,
                      generator=torch.Generator("cpu").manual_seed(11)).images[0])  # fmt: skip
    out = np.where(mask[..., None] == 255, out, pixels(source))  # Marble keeps the source outside the mask
    assert np.array_equal(pixels(batch.images[0]), out)


def test_a_damaged_xlabs_file_is_refused_naming_it(flux):
    state = xlabs_names(flux["models"]["canny-v3"].state_dict())
    del state["double_blocks.1.txt_mlp.2.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, flux["home"].controls / "broken-v3.safetensors")
    unit = ControlUnit("broken-v3", str(flux["picture"]))
    with pytest.raises(ModelError, match="The control model 'broken-v3' .* does not fit Flux.1 dev"):
        run(make_backend(flux["home"]), request_for(flux["folder"], controls=(unit,), **FLUX))


def test_an_xlabs_unit_acts_in_both_passes_of_the_hires_fix(flux):
    # The second pass runs Flux's image-to-image ControlNet pipeline, which hands XLabs' encoder the picture made
    # again at the hires size.
    unit = ControlUnit("canny-v3", str(flux["picture"]), weight=0.8)
    hires = dict(hires_fix=True, hires_scale=2.0, hires_denoise=0.5, hires_steps=4, hires_upscaler="Lanczos")
    batch, _ = run(make_backend(flux["home"]), request_for(flux["folder"], controls=(unit,), **FLUX, **hires))
    picture = Image.open(flux["picture"]).convert("RGB")
    first = Image.fromarray(bare(flux, flux["models"]["canny-v3"], picture, controlnet_conditioning_scale=0.8))
    base = bare_flux(flux["folder"])
    parts = {k: v for k, v in base.components.items()
             if k in inspect.signature(FluxControlNetImg2ImgPipeline.__init__).parameters}  # fmt: skip
    second = FluxControlNetImg2ImgPipeline(**parts, controlnet=flux["models"]["canny-v3"])
    second.set_progress_bar_config(disable=True)
    expected = second(prompt=PROMPT, strength=0.5, num_inference_steps=4, width=128, height=128, guidance_scale=3.5,
                      controlnet_conditioning_scale=0.8, image=first.resize((128, 128), Image.Resampling.LANCZOS),
                      control_image=picture.resize((128, 128), Image.Resampling.LANCZOS),
                      generator=[torch.Generator("cpu").manual_seed(11)]).images[0]  # fmt: skip
    assert batch.images[0].size == (128, 128)
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
