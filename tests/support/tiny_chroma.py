"""A tiny random Chroma model built from Marble's shipped config with small dimensions, and its
transformer in Black Forest Labs' names (as Chroma's single files ship)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file

from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.resources import Resources
from tests.support.tiny_dit import CONFIGS, _jitter, _shipped, _t5, _vae, flux_to_bfl


def build_tiny_chroma(seed: int = 0) -> ChromaPipeline:
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6), approximator_num_channels=16,
        approximator_hidden_dim=32, approximator_layers=2,
    )  # fmt: skip
    _jitter(transformer, seed)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(_shipped("chroma", "scheduler/scheduler_config.json"))
    parts = shipped_tokenizers(Resources.default(), CONFIGS / "chroma", "chroma")
    return ChromaPipeline(
        scheduler=scheduler, vae=_vae(4, 0.1159, 0.3611), text_encoder=_t5(), transformer=transformer, **parts
    )


def chroma_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ChromaTransformer2DModel's names -> Chroma's original (BFL-style) names."""
    state = dict(state)
    guidance: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.startswith("distilled_guidance_layer.")]:
        new = key.replace(".linear_1.", ".in_layer.").replace(".linear_2.", ".out_layer.")
        if ".norms." in new:
            new = new.removesuffix(".weight") + ".scale"
        guidance[new] = state.pop(key)
    return flux_to_bfl(state) | guidance


def save_chroma_file(pipe: ChromaPipeline, path: Path, prefix: str = "", extra: dict | None = None) -> Path:
    state = {prefix + k: v.contiguous() for k, v in chroma_to_bfl(pipe.transformer.state_dict()).items()}
    save_file(state | (extra or {}), str(path))
    return path
