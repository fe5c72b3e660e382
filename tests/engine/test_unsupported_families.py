"""Families Marble cannot run yet (library/dit_unsupported.py) are refused by their names, as files (diffusers' names,
their makers' where diffusers' single-file table gives one, ComfyUI's prefix) and as folders, instead of being taken
for a damaged model of a family Marble runs (a FLUX.3 file, before Marble ran FLUX.3, was "a Flux.1 file that is
incomplete")."""

from __future__ import annotations

import json
import re

import diffusers
import pytest
import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file

from desktop.cli import EXIT_MODEL
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.dit_unsupported import family_of
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.e2e.test_cli import in_process

# Each family's transformer class and the arguments its defaults lack, for its tensor names (meta device: no memory).
TRANSFORMERS = {
    "Ideogram 4": ("Ideogram4Transformer2DModel", {}),
    # Its names are HunyuanVideo's but for one Flux.2 has too: either, by the token refiner they share.
    "HunyuanImage or HunyuanVideo": ("HunyuanImageTransformer2DModel", {}),
    "GLM-Image": ("GlmImageTransformer2DModel", {}),
    "CogView4": ("CogView4Transformer2DModel", {}),
}
FOLDERS = {
    "Ideogram4Pipeline": "Ideogram 4",
    "HunyuanImagePipeline": "HunyuanImage", "GlmImagePipeline": "GLM-Image", "CogView4Pipeline": "CogView4",
    "BriaFiboPipeline": "Bria FIBO",
}  # fmt: skip
VIDEO_FOLDERS = {"WanPipeline": "Wan", "HunyuanVideoPipeline": "HunyuanVideo", "MochiPipeline": "Mochi",
                 "LTXPipeline": "LTX-Video"}  # fmt: skip


def tiny_flux3() -> dict[str, torch.Tensor]:
    """A real FLUX.3 transformer (diffusers' class, tiny sizes): its names share Flux.1's single_transformer_blocks."""
    from diffusers.models.transformers.transformer_flux3 import Flux3Transformer2DModel

    torch.manual_seed(0)
    model = Flux3Transformer2DModel(in_channels=8, cond_in_channels=8, num_layers=1, num_single_layers=1,
                                    attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                    timestep_channels=16, axes_dims_rope=(2, 2, 2, 2))  # fmt: skip
    return {key: value.contiguous() for key, value in model.state_dict().items()}


def names_only(class_name: str, arguments: dict) -> dict[str, torch.Tensor]:
    """The class's tensor names, each holding one value: detection reads names, never values."""
    with init_empty_weights():
        model = getattr(diffusers, class_name)(**arguments)
    return {key: torch.zeros(1) for key in model.state_dict()}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_a_flux3_file_is_flux3_not_a_damaged_flux1(tmp_path, prefix):
    # Its diffusers names share Flux.1's single_transformer_blocks; FLUX.3 was refused here by name until Marble ran
    # it (tests/engine/test_flux3.py).
    path = tmp_path / "flux3-dev.safetensors"
    save_file({prefix + key: value for key, value in tiny_flux3().items()}, str(path))
    assert detect_model(path).family == "flux3"


@pytest.mark.parametrize("label", sorted(TRANSFORMERS))
def test_each_familys_diffusers_names_are_named(tmp_path, label):
    class_name, arguments = TRANSFORMERS[label]
    path = tmp_path / "model.safetensors"
    save_file(names_only(class_name, arguments), str(path))
    with pytest.raises(ModelError, match=rf"model\.safetensors is a {re.escape(label)} model, a family Marble cannot"):
        detect_model(path)


def test_hunyuan_video_files_are_named_and_flux2_is_not_taken_for_either(tmp_path):
    # HunyuanVideo's diffusers names are Flux.1's but for its token refiner (it was taken for a Flux.1 file); Flux.2
    # shares HunyuanImage's time_guidance_embed and must still be Flux.2.
    path = tmp_path / "model.safetensors"
    save_file(names_only("HunyuanVideoTransformer3DModel", {}), str(path))
    with pytest.raises(ModelError, match=r"is a HunyuanImage or HunyuanVideo model, a family Marble cannot run yet"):
        detect_model(path)
    save_file({"model.diffusion_model.txt_in.individual_token_refiner.blocks.0.norm1.weight": torch.zeros(1)},
              str(path))  # fmt: skip
    with pytest.raises(ModelError, match=r"is a HunyuanImage or HunyuanVideo model"):
        detect_model(path)
    with init_empty_weights():
        flux2 = diffusers.Flux2Transformer2DModel()
    assert family_of(flux2.state_dict().keys()) is None


VIDEO = {
    "Wan": ("WanTransformer3DModel", "head.modulation"),
    "Mochi": ("MochiTransformer3DModel", "blocks.0.attn.qkv_x.weight"),
    "LTX-Video": (None, "patchify_proj.weight"),
}


@pytest.mark.parametrize("label", sorted(VIDEO))
def test_video_models_are_named_as_such(tmp_path, label):
    class_name, original = VIDEO[label]
    layouts = [{f"model.diffusion_model.{original}": torch.zeros(1)}]
    if class_name is not None:
        layouts.append(names_only(class_name, {}))
    for tensors in layouts:
        path = tmp_path / "clip.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(ModelError, match=rf"clip\.safetensors is a {label} video model: Marble makes still"):
            detect_model(path)


@pytest.mark.parametrize("class_name", sorted(FOLDERS))
def test_a_folder_is_named_by_its_pipeline(tmp_path, class_name):
    assert hasattr(diffusers, class_name)  # diffusers' own class name, not a guess
    folder = tmp_path / "Some-Model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}), encoding="utf-8")
    with pytest.raises(ModelError, match=rf"Some-Model is a {FOLDERS[class_name]} \({class_name}\) model, a family"):
        detect_model(folder)


@pytest.mark.parametrize("class_name", sorted(VIDEO_FOLDERS))
def test_a_video_folder_is_named_by_its_pipeline(tmp_path, class_name):
    assert hasattr(diffusers, class_name)
    folder = tmp_path / "Some-Video"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}), encoding="utf-8")
    with pytest.raises(ModelError, match=rf"is a {VIDEO_FOLDERS[class_name]} \({class_name}\) video model"):
        detect_model(folder)


def test_the_library_and_the_command_line_say_it(tmp_path):
    path = tmp_path / "cogview4.safetensors"
    # Beside Flux.1-like names a file could also hold: the family's own name decides, under ComfyUI's prefix too.
    tensors = names_only("CogView4Transformer2DModel", {}) | {"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}
    save_file({f"model.diffusion_model.{key}": value for key, value in tensors.items()}, str(path))
    home = tmp_path / "home"
    with pytest.raises(ModelError, match="is a CogView4 model, a family Marble cannot run yet"):
        Library(AppPaths.for_root(home).ensure()).import_path(path, "model")
    code, _, err = in_process(["generate", "--home", str(home), "--model", str(path), "--prompt", "a fox",
                               "--width", "64", "--height", "64", "--device", "cpu"])  # fmt: skip
    assert code == EXIT_MODEL and "is a CogView4 model, a family Marble cannot run yet" in err, err
    assert "Traceback" not in err


# The arguments a class's defaults lack (HiDream-I1's have no caption widths or Llama layers).
_RUN_ARGUMENTS = {"HiDreamImageTransformer2DModel": dict(patch_size=2, in_channels=16, caption_channels=[4096, 4096],
                                                         llama_layers=list(range(32)) + [31] * 16,
                                                         axes_dims_rope=(64, 32, 32))}  # fmt: skip


@pytest.mark.parametrize("class_name", [
    "FluxTransformer2DModel", "Flux2Transformer2DModel", "SD3Transformer2DModel", "ChromaTransformer2DModel",
    "QwenImageTransformer2DModel", "QwenImage21Transformer2DModel", "ZImageTransformer2DModel",
    "Lumina2Transformer2DModel", "Krea2Transformer2DModel", "ErnieImageTransformer2DModel",
    "LongCatImageTransformer2DModel", "OvisImageTransformer2DModel", "FluxControlNetModel", "SD3ControlNetModel",
    "QwenImageControlNetModel", "HiDreamImageTransformer2DModel", "AuraFlowTransformer2DModel",
    "SanaTransformer2DModel", "PixArtTransformer2DModel", "Flux3Transformer2DModel",
])  # fmt: skip
def test_no_family_marble_runs_carries_a_marker(class_name):
    # diffusers' names of every transformer and ControlNet class Marble runs, at their published sizes (Flux.2's
    # time_guidance_embed once made a Flux.2 file "a HunyuanImage model").
    with init_empty_weights():
        model = getattr(diffusers, class_name)(**_RUN_ARGUMENTS.get(class_name, {}))
    assert family_of(model.state_dict().keys()) is None
