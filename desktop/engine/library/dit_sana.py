"""Sana transformers told apart from their tensors (registered in library/dit.py; headers only, no torch).

NVIDIA's Sana (1.0: 0.6B and 1.6B; 1.5: 1.6B and 4.8B, with normalised queries and keys) draws the 32-channel
latents of its deep-compression autoencoder (DC-AE, 32x) one latent per token, with linear attention, a
convolutional feed-forward (GLUMBConv) and cross-attention to Gemma-2 2B's hidden states. Two namings are in
circulation, bare or under ComfyUI's `model.diffusion_model.`:
- its makers' ("original"; NVlabs' checkpoints and ComfyUI's files): `blocks.N.attn.qkv`, `blocks.N.cross_attn`,
  `blocks.N.mlp.inverted_conv` (the GLUMBConv PixArt's `mlp.fc1` does not have), `x_embedder`, `t_embedder`,
  `t_block`, `y_embedder`, `attention_y_norm`, `final_layer`;
- diffusers' (SanaTransformer2DModel): `transformer_blocks.N.attn1` / `attn2` / `ff.conv_inverted`, `patch_embed`,
  `time_embed`, `caption_projection`, `caption_norm`, `proj_out`.
Sana Sprint (its one- to four-step distillation, which embeds a guidance value and runs its own SCM scheduler) has
the same names and a guidance embedder (`time_embed.guidance_embedder` in diffusers' names, `cfg_embedder` in its
makers'): the variant "sprint".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.dit_qwen_zimage import contiguous

SANA = "sana"
SPRINT = "sprint"
LABELS = {SANA: "Sana"}
VARIANT_LABELS = {(SANA, SPRINT): "Sprint"}
CONFIGS = {(SANA, ""): "sana", (SANA, SPRINT): "sana-sprint"}
PIPELINES = {"SanaPipeline": SANA, "SanaSprintPipeline": SANA}
_SPRINT_PIPELINE = "SanaSprintPipeline"
_GUIDANCE = "time_embed.guidance_embedder.linear_1.weight"
_MAKERS_GUIDANCE = "cfg_embedder.mlp.0.weight"  # the same in NVlabs' names
_MARKER = re.compile(r"^(blocks\.\d+\.mlp\.inverted_conv|transformer_blocks\.\d+\.ff\.conv_inverted)\.")
# (blocks, the tensors besides them a complete file holds) of each naming.
_LAYOUTS = {
    "original": ("blocks", ("x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_block.1.weight",
                            "y_embedder.y_proj.fc1.weight", "attention_y_norm.weight", "final_layer.linear.weight")),
    "diffusers": ("transformer_blocks", ("patch_embed.proj.weight", "time_embed.linear.weight",
                                         "caption_projection.linear_1.weight", "caption_norm.weight",
                                         "proj_out.weight")),
}  # fmt: skip
_BLOCK = re.compile(r"^(blocks|transformer_blocks)\.(\d+)\.")


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to Sana."""
    return _MARKER.match(bare_name) is not None


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (blocks, 0)) of a Sana transformer whose tensors (prefix removed) are `model`; None
    when it is not one; ModelError naming `name` when it is one but damaged."""
    if not any(is_marker(key) for key in model):
        return None
    if "controlnet.0.before_proj.weight" in model:
        raise ModelError(
            f"{name} is a Sana ControlNet (NVlabs' checkpoint holds the model beside it): import it into the control "
            "library (marble controls import)."
        )
    layout = "original" if any(key.startswith("blocks.") for key in model) else "diffusers"
    kind, needed = _LAYOUTS[layout]
    for tensor in needed:
        if tensor not in model:
            raise ModelError(f"{name} looks like Sana but {tensor} is missing: the file is damaged or incomplete.")
    present = {int(match.group(2)) for key in model if (match := _BLOCK.match(key)) and match.group(1) == kind}
    variant = SPRINT if _GUIDANCE in model or _MAKERS_GUIDANCE in model else ""
    return SANA, variant, layout, (contiguous(present, kind, name, LABELS[SANA]), 0)


def folder_variant(class_name: str) -> str:
    """"sprint" for a SanaSprintPipeline folder, else ""."""
    return SPRINT if class_name == _SPRINT_PIPELINE else ""


def normalises_queries(model: Mapping[str, Any]) -> bool:
    """Whether a Sana transformer normalises its queries and keys (Sana 1.5; 1.0 does not), in either naming."""
    return any(key.endswith((".attn.q_norm.weight", ".attn1.norm_q.weight")) for key in model)
