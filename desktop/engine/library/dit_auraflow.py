"""AuraFlow transformers told apart from their tensors (registered in library/dit.py; headers only, no torch).

fal's AuraFlow (v0.1 to v0.3, Apache-2.0) and the models trained from it, Pony V7 first (purplesmartai's 7B
character model: the same architecture): a few joint (MMDiT) blocks and many single-stream ones over SDXL's
4-channel VAE latents in 2x2 patches, reading Pile-T5-XL's hidden states (EleutherAI's UMT5, 2048 wide), with
learned register tokens and a learned position table. Two namings are in circulation, bare or under ComfyUI's
`model.diffusion_model.`:
- its makers' ("original"; fal's checkpoints, ComfyUI's, Pony V7's single file and its GGUFs): `double_layers.N`,
  `single_layers.N`, `cond_seq_linear`, `init_x_linear`, `positional_encoding`, `t_embedder.mlp`, `modF`,
  `final_linear`, converted by diffusers' single-file loader;
- diffusers' (AuraFlowTransformer2DModel): `joint_transformer_blocks.N`, `single_transformer_blocks.N` (Flux.1's
  name too: `register_tokens` tells them apart), `context_embedder`, `pos_embed`, `time_step_proj`, `norm_out`,
  `proj_out`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.library.dit_qwen_zimage import checked_blocks

AURAFLOW = "auraflow"
LABELS = {AURAFLOW: "AuraFlow"}
CONFIGS = {(AURAFLOW, ""): "auraflow"}
PIPELINES = {"AuraFlowPipeline": AURAFLOW}
# ComfyUI's name for Pile-T5-XL in an all-in-one file (`text_encoders.pile_t5xl.transformer.`, beside `vae.`).
ENCODER = "pile_t5xl"
_REGISTERS = "register_tokens"  # both namings; no other family has them
_MARKER = re.compile(r"^(double_layers|single_layers|joint_transformer_blocks)\.\d+\.|^register_tokens$")
# (joint blocks, single blocks, the tensors besides them a complete file holds) of each naming.
_LAYOUTS = {
    "original": ("double_layers", "single_layers",
                 ("cond_seq_linear.weight", "init_x_linear.weight", "positional_encoding", "t_embedder.mlp.0.weight",
                  "modF.1.weight", "final_linear.weight")),
    "diffusers": ("joint_transformer_blocks", "single_transformer_blocks",
                  ("context_embedder.weight", "pos_embed.proj.weight", "pos_embed.pos_embed",
                   "time_step_proj.linear_1.weight", "norm_out.linear.weight", "proj_out.weight")),
}  # fmt: skip
# Where each naming keeps its position table, (1, positions, width): how many patches the model places.
POSITIONS = {"original": "positional_encoding", "diffusers": "pos_embed.pos_embed"}


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to AuraFlow."""
    return _MARKER.match(bare_name) is not None


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (joint, single) block counts) of an AuraFlow transformer whose tensors (prefix
    removed) are `model`; None when it is not one; ModelError naming `name` when it is one but damaged."""
    if not any(is_marker(key) for key in model):
        return None
    layout = "original" if any(key.startswith(("double_layers.", "single_layers.", "cond_seq_linear.")) for key in
                               model) else "diffusers"  # fmt: skip
    joint, single, needed = _LAYOUTS[layout]
    counts = checked_blocks(model, (_REGISTERS, *needed), (joint, single), name, LABELS[AURAFLOW])
    return AURAFLOW, "", layout, counts
