"""Flux.2: told from Flux.1 by its tensors (shared modulation), its variant by its text embedding's
width, in BFL and diffusers names; a job says clearly that Marble does not run it yet."""

from __future__ import annotations

import pytest
import torch
from diffusers import Flux2Transformer2DModel
from safetensors.torch import save_file

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, request_for, run


def bfl_flux2(text_width: int) -> dict[str, torch.Tensor]:
    """Flux.2's original tensor names (ComfyUI prefix), small shapes but the real text-embedding width."""
    names = ["img_in.weight", "time_in.in_layer.weight", "time_in.out_layer.weight", "final_layer.linear.weight",
             "final_layer.adaLN_modulation.1.weight", "double_stream_modulation_img.lin.weight",
             "double_stream_modulation_txt.lin.weight", "single_stream_modulation.lin.weight"]  # fmt: skip
    for i in range(2):
        names += [f"double_blocks.{i}.img_attn.qkv.weight", f"double_blocks.{i}.txt_mlp.0.weight"]
        names += [f"single_blocks.{i}.linear1.weight", f"single_blocks.{i}.linear2.weight"]
    state = {name: torch.zeros(8, 8) for name in names}
    state["txt_in.weight"] = torch.zeros(8, text_width)
    return {"model.diffusion_model." + k: v for k, v in state.items()}


def test_flux2_bfl_file_is_flux2_dev_not_flux1(tmp_path):
    path = tmp_path / "flux1-dev.safetensors"
    save_file(bfl_flux2(15360), str(path))
    arch = detect_model(path)
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.dit.blocks, arch.label) == (
        "flux2", "dev", "bfl", (2, 2), "Flux.2 dev"
    )  # fmt: skip
    assert not arch.config_name  # no shipped config: Marble does not run it yet


def test_flux2_diffusers_transformer_is_detected_with_its_klein_variant(tmp_path):
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=7680, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )  # fmt: skip
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(path))
    arch = detect_model(path)
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.dit.blocks) == (
        "flux2", "klein 4b", "diffusers", (2, 3)
    )  # fmt: skip
    assert arch.dit.parameters == sum(p.numel() for p in transformer.parameters())


def test_a_flux2_file_with_a_missing_block_names_the_file(tmp_path):
    path = tmp_path / "my-flux2.safetensors"
    save_file({k: v for k, v in bfl_flux2(12288).items() if ".single_blocks.0." not in k}, str(path))
    with pytest.raises(ModelError, match=r"my-flux2\.safetensors looks like Flux\.2 but single_blocks\.0 is missing"):
        detect_model(path)


def test_a_flux2_job_is_refused_clearly(tmp_path):
    path = tmp_path / "klein.safetensors"
    save_file(bfl_flux2(12288), str(path))
    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    with pytest.raises(ModelError, match=r"klein\.safetensors is a Flux\.2 klein 9b model: Marble recognises Flux\.2 "
                       r"but does not run it yet"):  # fmt: skip
        run(backend, request_for(path))
