"""Ovis-Image transformers told apart from their tensors (registered in library/dit.py; headers only, no torch).

AIDC-AI's 7B model is Flux.1's double- and single-stream blocks (6 and 27, 3072 wide) with SwiGLU feed-forwards,
reading the 2048-wide last hidden state of Ovis 2.5's language model (a Qwen3 1.7B) through an RMS norm, with a
timestep embedding only; its latents are Flux.1's VAE's. Two namings are in circulation:

- diffusers' (the release's own `transformer/`, OvisImageTransformer2DModel): Flux's diffusers block names with
  `context_embedder_norm` and a bare `timestep_embedder`: layout "diffusers";
- Black Forest Labs' Flux names (Comfy-Org's repackaged file, bare or under ComfyUI's `model.diffusion_model.`, as
  stable-diffusion.cpp reads it): `double_blocks.N` whose feed-forwards are `img_mlp.gate_proj` / `up_proj` /
  `down_proj` (and `txt_mlp.*`), `single_blocks.N`, `txt_norm` (`.weight`, or BFL's `.scale`), `txt_in`, `img_in`,
  `time_in`, `final_layer`: layout "bfl". Its `txt_norm` and missing `vector_in` are Qwen-Image's and LongCat-Image's
  marks too: it is detected before them, by its SwiGLU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.library.dit_qwen_zimage import checked_blocks

OVIS = "ovis-image"
LABELS = {OVIS: "Ovis-Image"}
CONFIGS = {(OVIS, ""): "ovis-image"}
PIPELINES = {"OvisImagePipeline": OVIS}
_DIFFUSERS_MARKER = "context_embedder_norm.weight"  # the text input's RMS norm, in diffusers' names
_BFL_MARKER = re.compile(r"^double_blocks\.\d+\.img_mlp\.gate_proj\.weight$")  # a SwiGLU in BFL's block names
_NEEDED = {
    "diffusers": ("timestep_embedder.linear_1.weight", "x_embedder.weight", "context_embedder.weight",
                  "norm_out.linear.weight", "proj_out.weight"),
    "bfl": ("img_in.weight", "txt_in.weight", "time_in.in_layer.weight", "final_layer.linear.weight",
            "final_layer.adaLN_modulation.1.weight"),
}  # fmt: skip
_BLOCKS = {"diffusers": ("transformer_blocks", "single_transformer_blocks"), "bfl": ("double_blocks", "single_blocks")}


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to Ovis-Image."""
    return bare_name == _DIFFUSERS_MARKER or _BFL_MARKER.match(bare_name) is not None


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (double, single)) of an Ovis-Image transformer whose tensors (prefix removed) are
    `model`; None when it is not one; ModelError naming `name` when it is one but damaged."""
    if _DIFFUSERS_MARKER in model:
        layout = "diffusers"
    elif any(_BFL_MARKER.match(key) for key in model):
        layout = "bfl"
    else:
        return None
    norm = "txt_norm.scale" if "txt_norm.scale" in model else "txt_norm.weight"  # BFL's RMS-norm name, or diffusers'
    needed = (*_NEEDED[layout], norm if layout == "bfl" else _DIFFUSERS_MARKER)
    return OVIS, "", layout, checked_blocks(model, needed, _BLOCKS[layout], name, LABELS[OVIS])
