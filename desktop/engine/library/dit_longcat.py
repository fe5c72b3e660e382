"""LongCat-Image transformers told apart from their tensors (registered in library/dit.py; headers only, no torch).

Meituan's 6B model is Flux.1's double- and single-stream blocks (10 and 20 of them, 3072 wide) reading Qwen2.5-VL
7B's hidden states (3584 wide) with a timestep embedding only: no pooled text vector (`vector_in`), no distilled
guidance. Its latents are Flux.1's VAE's. Two namings are in circulation:

- diffusers' (the release's own `transformer/`, LongCatImageTransformer2DModel): Flux's diffusers names with
  `time_embed.timestep_embedder` where Flux.1 says `time_text_embed.timestep_embedder`: layout "diffusers";
- Black Forest Labs' Flux names (Comfy-Org's repackaged file, bare or under ComfyUI's `model.diffusion_model.`):
  `double_blocks.N`, `single_blocks.N`, `img_in`, `txt_in`, `time_in`, `final_layer`, without the `vector_in` every
  Flux.1 file has (nor `guidance_in`); its q/k norms may be saved as `.weight` rather than Flux's
  `.scale`: layout "bfl".

LongCat-Image-Edit (instruction edits of a source image) has the same tensors: as for Qwen-Image-Edit
(dit_qwen_zimage.py), it is told by its folder's pipeline class, a single file's `modelspec.architecture` metadata,
or the user's `--text-encoders` folder (a LongCat-Image-Edit diffusers folder). Variant "edit".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from desktop.engine.library.dit_qwen_zimage import EDIT, checked_blocks

LONGCAT = "longcat-image"
LABELS = {LONGCAT: "LongCat-Image"}
VARIANT_LABELS = {(LONGCAT, EDIT): "Edit"}
# The Edit model shares the base model's transformer, VAE and scheduler configs.
CONFIGS = {(LONGCAT, ""): "longcat-image", (LONGCAT, EDIT): "longcat-image"}
_EDIT_PIPELINE = "LongCatImageEditPipeline"
PIPELINES = {"LongCatImagePipeline": LONGCAT, _EDIT_PIPELINE: LONGCAT}
_MARKER = "time_embed.timestep_embedder.linear_1.weight"  # diffusers' name; Flux.1's sits under time_text_embed
_NEEDED = {
    "diffusers": ("x_embedder.weight", "context_embedder.weight", "norm_out.linear.weight", "proj_out.weight"),
    "bfl": ("img_in.weight", "txt_in.weight", "time_in.in_layer.weight", "final_layer.linear.weight",
            "final_layer.adaLN_modulation.1.weight"),
}  # fmt: skip
_BLOCKS = {"diffusers": ("transformer_blocks", "single_transformer_blocks"), "bfl": ("double_blocks", "single_blocks")}


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to LongCat-Image (its diffusers names; BFL's
    names are told from Flux.1's by what they lack, in `detect`)."""
    return bare_name == _MARKER


def is_bfl_longcat(model: Mapping[str, Any]) -> bool:
    """Flux.1's BFL names, whole (every tensor LongCat-Image's layout needs, so that a damaged Flux.1 file is not taken
    for it), without the pooled text vector every Flux.1 file has and without Chroma's distilled guidance network:
    LongCat-Image (Flux.2, which lacks both too, is told by its shared modulation before)."""
    return (
        any(key.startswith("double_blocks.") for key in model)
        and all(tensor in model for tensor in _NEEDED["bfl"])
        and "vector_in.in_layer.weight" not in model
        and not any(key.startswith("distilled_guidance_layer.") for key in model)
    )


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (double, single)) of a LongCat-Image transformer whose tensors (prefix removed) are
    `model`; None when it is not one; ModelError naming `name` when it is one but damaged."""
    if _MARKER in model:
        layout = "diffusers"
    elif is_bfl_longcat(model):
        layout = "bfl"
    else:
        return None
    return LONGCAT, "", layout, checked_blocks(model, _NEEDED[layout], _BLOCKS[layout], name, LABELS[LONGCAT])


def folder_variant(class_name: str) -> str:
    """ "edit" for a LongCat-Image-Edit folder's pipeline class, else ""."""
    return EDIT if class_name == _EDIT_PIPELINE else ""


def metadata_variant(metadata: Mapping[str, str]) -> str:
    """ "edit" when a LongCat-Image single file's header metadata names the Edit model (the ModelSpec
    `modelspec.architecture`, e.g. "longcat-image-edit"), else ""."""
    architecture = str(metadata.get("modelspec.architecture", "")).lower().replace("_", "-")
    return EDIT if "longcat-image-edit" in architecture else ""
