"""Sana ControlNets (NVIDIA's, in diffusers' names) from the control library, with a Sana text-to-image job: detected
from their tensors, shaped from the file and the loaded transformer, run in diffusers' SanaControlNetPipeline on the
loaded modules -- pixel-identical to bare diffusers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import SanaControlNetModel, SanaControlNetPipeline, SanaPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from desktop.engine.backends.base import Waiting
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import fits_model, inspect_control
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.library.native_size import takes_controls
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.control_edit_checks import check_controlnet_image_to_image, check_controlnet_inpainting
from tests.support.control_range_checks import check_step_range
from tests.support.tiny_dit import _jitter
from tests.support.tiny_sana import build_tiny_sana, original_names

VALUES = dict(negative_prompt="blurry", cfg_scale=4.5, steps=3, seed=5)


def tiny_controlnet(transformer, seed: int, blocks: int = 1) -> SanaControlNetModel:
    """A ControlNet for the tiny Sana; its zero-initialised input and output layers given noise, or it would change
    nothing and every comparison would pass for the wrong reason."""
    config = transformer.config
    model = SanaControlNetModel(
        in_channels=config.in_channels, out_channels=config.out_channels,
        num_attention_heads=config.num_attention_heads, attention_head_dim=config.attention_head_dim, num_layers=blocks,
        num_cross_attention_heads=config.num_cross_attention_heads,
        cross_attention_head_dim=config.cross_attention_head_dim, cross_attention_dim=config.cross_attention_dim,
        caption_channels=config.caption_channels, sample_size=config.sample_size, patch_size=config.patch_size,
    )  # fmt: skip
    _jitter(model, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("input_block.", "controlnet_blocks.")):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def save(model: SanaControlNetModel, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def sana(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sana-controlnet")
    pipe = build_tiny_sana()
    folder = tmp / "sana"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    home = AppPaths.for_root(tmp / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    hed = tiny_controlnet(pipe.transformer, 1)
    save(hed, home.controls / "sana-hed.safetensors")
    wide = SanaControlNetModel(
        in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
        sample_size=8,
    )  # fmt: skip
    save(wide, home.controls / "sana-other.safetensors")
    picture = tmp / "shapes.png"
    canvas = np.zeros((64, 64, 3), dtype=np.uint8)
    canvas[10:38, 18:50] = (240, 200, 40)
    canvas[42:60, 4:28] = (30, 90, 220)
    Image.fromarray(canvas).save(picture)
    return {"folder": folder, "home": home, "picture": picture, "hed": hed}


def bare(sana, scale: float) -> np.ndarray:
    base = SanaPipeline.from_pretrained(str(sana["folder"]), local_files_only=True)
    pipe = SanaControlNetPipeline(**base.components, controlnet=sana["hed"])
    pipe.set_progress_bar_config(disable=True)
    return pixels(pipe(
        prompt="a red circle on a blue background", negative_prompt="blurry", guidance_scale=4.5,
        num_inference_steps=3, width=64, height=64, control_image=Image.open(sana["picture"]).convert("RGB"),
        controlnet_conditioning_scale=scale, use_resolution_binning=False,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0])  # fmt: skip


def test_it_is_detected_and_offered_for_sana_models_only(sana):
    path = sana["home"].controls / "sana-hed.safetensors"
    info = inspect_control(read_safetensors_header(path))
    assert (info.family, info.label, guess_kind(path)) == ("sana", "Sana ControlNet", "control")
    assert takes_controls("sana") and fits_model("sana", "sana")
    assert not fits_model("sana", "sana-sprint") and not fits_model("sana", "flux-dev")
    assert not fits_model("flux", "sana")


def test_a_sana_controlnet_unit_is_bare_diffusers(sana):
    unit = ControlUnit("sana-hed", str(sana["picture"]), weight=0.8)
    backend = make_backend(sana["home"])
    batch, steps = run(backend, request_for(sana["folder"], controls=(unit,), **VALUES))
    assert np.array_equal(pixels(batch.images[0]), bare(sana, 0.8))
    assert [c.name for c in batch.controls] == ["sana-hed"]
    # The preview fit's notice, then the three steps.
    assert [step.step for step in steps] == [0, 1, 2, 3] and steps[0].waiting is Waiting.FITTING_PREVIEWS
    # The unit counts: without it, another picture.
    plain, _ = run(backend, request_for(sana["folder"], **VALUES))
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))


def test_the_step_range_sets_the_scale_at_each_step(sana):
    # Sana's pipeline takes no range: Marble's hook gives the ControlNet the unit's weight inside it, 0 outside.
    unit = ControlUnit("sana-hed", str(sana["picture"]), weight=0.8, start=0.0, end=0.5)
    check_step_range(sana["home"], sana["folder"], unit, SanaControlNetModel, **VALUES)


def test_it_works_in_image_to_image_and_the_hires_fix(sana, tmp_path):
    # diffusers' Sana ControlNet pipeline is text-to-image only: Marble runs it over a source as its own Sana image to
    # image does (control_dit_edits.py); its step range is Marble's hook, counted over each pass.
    check_controlnet_image_to_image(sana["home"], sana["folder"], ControlUnit("sana-hed", str(sana["picture"])),
                                    ("controlnet_blocks.",), SanaControlNetModel, tmp_path, **VALUES)  # fmt: skip


def test_it_inpaints_under_the_mask(sana, tmp_path):
    # Sana's inpainting is Marble's own with or without the unit: with its output layers zeroed, the same picture.
    check_controlnet_inpainting(sana["home"], sana["folder"], ControlUnit("sana-hed", str(sana["picture"])),
                                ("controlnet_blocks.",), tmp_path, own_inpainting=True, **VALUES)  # fmt: skip


def nvlabs_checkpoint(controlnet: SanaControlNetModel, base) -> dict[str, torch.Tensor]:
    """`controlnet` as NVlabs' .pth checkpoints hold it (diffusers' conversion script read backwards): its blocks as
    `controlnet.N.copied_block`, its input and output layers as `controlnet.0.before_proj` / `controlnet.N.after_proj`,
    its embedders at the top, beside the rest of the Sana model `base` (blocks, final layer) in its makers' names."""
    state = controlnet.state_dict()
    layers = {key: value for key, value in state.items() if key.startswith(("input_block.", "controlnet_blocks."))}
    out = {}
    for key, value in original_names({k: v for k, v in state.items() if k not in layers}, extras=False).items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            key = f"controlnet.{index}.copied_block.{rest}"
        out[key] = value
    for key, value in layers.items():
        if key.startswith("input_block."):
            out[f"controlnet.0.before_proj.{key.split('.')[-1]}"] = value
        else:
            _, index, kind = key.split(".")
            out[f"controlnet.{index}.after_proj.{kind}"] = value
    model = original_names(base.state_dict())
    return out | {k: v for k, v in model.items() if k.startswith(("blocks.", "final_layer.", "pos_embed"))}


def test_nvlabs_pth_checkpoint_converted_on_import_runs_as_the_diffusers_one(sana, tmp_path):
    # NVlabs' own files (the Sana model beside its ControlNet, pickled): imported with --convert-pickle, told from
    # the model by their `controlnet.N` tensors, converted with the facts of diffusers' conversion script.
    base = SanaPipeline.from_pretrained(str(sana["folder"]), local_files_only=True).transformer
    two = tiny_controlnet(base, 7, blocks=2)
    torch.save({"state_dict": nvlabs_checkpoint(two, base)}, tmp_path / "Sana_600M_ControlNet_HED.pth")
    library = Library(sana["home"])
    with pytest.raises(ModelError, match="--convert-pickle"):
        library.import_path(tmp_path / "Sana_600M_ControlNet_HED.pth", "control")
    library.import_path(tmp_path / "Sana_600M_ControlNet_HED.pth", "control", convert_pickle=True)
    path = sana["home"].controls / "Sana_600M_ControlNet_HED.safetensors"
    info = inspect_control(read_safetensors_header(path))
    assert (info.family, info.label, info.layout, guess_kind(path)) == ("sana", "Sana ControlNet", "nvlabs", "control")
    save(two, sana["home"].controls / "sana-two.safetensors")
    unit = ControlUnit("Sana_600M_ControlNet_HED", str(sana["picture"]), weight=0.8)
    backend = make_backend(sana["home"])
    theirs, _ = run(backend, request_for(sana["folder"], controls=(unit,), **VALUES))
    ours, _ = run(backend, request_for(sana["folder"], controls=(replace(unit, model="sana-two"),), **VALUES))
    assert np.array_equal(pixels(theirs.images[0]), pixels(ours.images[0]))
    # Imported as a model, it is sent to the control library; a ControlNet tensor the script does not name is
    # refused by name.
    with pytest.raises(ModelError, match="is a Sana ControlNet .* import it into the control library"):
        library.import_path(path, "model")
    odd = load_file(str(path)) | {"controlnet.1.before_proj.weight": torch.zeros(32, 32)}
    save_file(odd, str(sana["home"].controls / "sana-odd.safetensors"))
    with pytest.raises(ModelError, match="unexpected tensor 'controlnet.1.before_proj.weight'"):
        run(backend, request_for(sana["folder"], controls=(replace(unit, model="sana-odd"),), **VALUES))


def test_what_it_cannot_run_is_refused_by_name(sana, tmp_path):
    unit = ControlUnit("sana-hed", str(sana["picture"]))
    with pytest.raises(InvalidRequest, match="runs one ControlNet unit at a time \\(2 are on\\)"):
        run(make_backend(sana["home"]), request_for(sana["folder"], controls=(unit, unit), **VALUES))
    with pytest.raises(ModelError, match=r"'sana-other' .* does not fit .*16 wide and the model's 32"):
        run(make_backend(sana["home"]), request_for(sana["folder"], controls=(replace(unit, model="sana-other"),),
                                                    **VALUES))  # fmt: skip
    # Sana Sprint's pipeline has no ControlNet sibling.
    sprint = tmp_path / "sprint"
    build_tiny_sana(sprint=True).save_pretrained(str(sprint), safe_serialization=True)
    with pytest.raises(InvalidRequest, match="Sana Sprint has none yet"):
        run(make_backend(sana["home"]), request_for(sprint, controls=(unit,), steps=2, cfg_scale=4.5))
