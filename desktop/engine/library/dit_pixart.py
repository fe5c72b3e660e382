"""PixArt transformers told apart from their tensors (registered in library/dit.py; headers only, no torch).

PixArt-Σ (Sigma) and PixArt-α (Alpha), 0.6B diffusion transformers over SD's 4-channel latents (Sigma: SDXL's VAE;
Alpha: SD 1.5's) reading T5-XXL, with one modulation table shared by every block (`adaln_single`). Two namings are in
circulation, bare or under ComfyUI's `model.diffusion_model.`:
- its makers' ("original": PixArt-alpha's checkpoints, the ComfyUI nodes' files): `blocks.N.attn.qkv`,
  `blocks.N.cross_attn.q_linear` / `kv_linear`, `blocks.N.mlp.fc1` (Sana's blocks share the rest of these names but
  have a convolutional feed-forward), `x_embedder`, `t_embedder`, `t_block`, `y_embedder`, `final_layer`;
- diffusers' (PixArtTransformer2DModel): `transformer_blocks.N.attn1` / `attn2` / `ff.net`, `pos_embed.proj`,
  `adaln_single`, `caption_projection`, `proj_out`.
The two releases have the same blocks. What tells them: Alpha's caption table (`y_embedder.y_embedding`, the learned
blank caption its makers' files carry) is 120 tokens long, Sigma's 300; Alpha's 1024-pixel model embeds the picture's
size and aspect ratio (`csize_embedder` / `ar_embedder`, diffusers' `adaln_single.emb.resolution_embedder`). A file
that says neither (diffusers' names of Alpha's 512-pixel model) is taken for Sigma, the newer and common one, unless
the user marks it as Alpha (`user_variant_choices`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.dit_qwen_zimage import contiguous

PIXART = "pixart"
SIGMA = "sigma"
ALPHA = "alpha"
LABELS = {PIXART: "PixArt"}
VARIANT_LABELS = {(PIXART, SIGMA): "Sigma", (PIXART, ALPHA): "Alpha"}
CONFIGS = {(PIXART, SIGMA): "pixart-sigma", (PIXART, ALPHA): "pixart-alpha"}
PIPELINES = {"PixArtSigmaPipeline": PIXART, "PixArtAlphaPipeline": PIXART}
_FOLDER_VARIANTS = {"PixArtSigmaPipeline": SIGMA, "PixArtAlphaPipeline": ALPHA}
_MARKER = re.compile(r"^(blocks\.\d+\.mlp\.fc1|adaln_single)\.")
# (blocks, the tensors besides them a complete file holds) of each naming.
_LAYOUTS = {
    "original": ("blocks", ("x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_block.1.weight",
                            "y_embedder.y_proj.fc1.weight", "final_layer.linear.weight",
                            "final_layer.scale_shift_table")),
    "diffusers": ("transformer_blocks", ("pos_embed.proj.weight", "adaln_single.linear.weight",
                                         "adaln_single.emb.timestep_embedder.linear_1.weight",
                                         "caption_projection.linear_1.weight", "proj_out.weight",
                                         "scale_shift_table")),
}  # fmt: skip
_BLOCK = re.compile(r"^(blocks|transformer_blocks)\.(\d+)\.")
# The size and aspect-ratio embedders of Alpha's 1024-pixel model, in either naming.
_SIZE_EMBEDDERS = ("csize_embedder.mlp.0.weight", "adaln_single.emb.resolution_embedder.linear_1.weight")
_CAPTION_TABLE = "y_embedder.y_embedding"
ALPHA_TOKENS = 120  # the T5 tokens Alpha was trained with (its caption table's length); Sigma's are 300
SIGMA_TOKENS = 300


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to PixArt."""
    return _MARKER.match(bare_name) is not None


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (blocks, 0)) of a PixArt transformer whose tensors (prefix removed) are `model`;
    None when it is not one; ModelError naming `name` when it is one but damaged."""
    if not any(is_marker(key) for key in model):
        return None
    layout = "original" if any(key.startswith("blocks.") for key in model) else "diffusers"
    kind, needed = _LAYOUTS[layout]
    for tensor in needed:
        if tensor not in model:
            raise ModelError(f"{name} looks like PixArt but {tensor} is missing: the file is damaged or incomplete.")
    present = {int(match.group(2)) for key in model if (match := _BLOCK.match(key)) and match.group(1) == kind}
    return PIXART, _variant(model), layout, (contiguous(present, kind, name, LABELS[PIXART]), 0)


def _variant(model: Mapping[str, Any]) -> str:
    if any(key in model for key in _SIZE_EMBEDDERS):
        return ALPHA
    table = model.get(_CAPTION_TABLE)
    shape = tuple(getattr(table, "shape", ()) or ())
    return ALPHA if shape[:1] == (ALPHA_TOKENS,) else SIGMA


def user_variant_choices() -> dict[str, str]:
    """What a user may mark a PixArt transformer file in diffusers' names as (library/index.py choose_variant): Alpha's
    512-pixel model carries neither the caption table nor the size embedders that tell Alpha, so it reads as Sigma."""
    return {"": f"{LABELS[PIXART]} (as the file says)", ALPHA: f"{LABELS[PIXART]} {VARIANT_LABELS[(PIXART, ALPHA)]}"}


def folder_variant(class_name: str) -> str:
    """"alpha" for a PixArtAlphaPipeline folder, else "sigma"."""
    return _FOLDER_VARIANTS.get(class_name, SIGMA)


def embeds_size(model: Mapping[str, Any]) -> bool:
    """Whether a PixArt transformer embeds the picture's size and aspect ratio (Alpha's 1024-pixel model), in either
    naming."""
    return any(key in model for key in _SIZE_EMBEDDERS)
