"""Krea 2 transformers told apart from their tensors (registered in library/dit.py; headers only, no torch).

Krea AI's 12.8B model (Krea 2 Raw, and Turbo, its 8-step distillation: the same tensors) reads Qwen3-VL 4B's
hidden states from twelve of its layers through its own text-fusion stage. Names in circulation (checked against
diffusers' single-file converter and Krea2Transformer2DModel):

- its makers' (Krea's release, ComfyUI's files, bare or under `model.diffusion_model.`): `first` (the patch
  input), `tmlp` / `tproj` (time), `txtmlp` / `txtfusion` (text), `blocks.N` with `attn.wq/wk/wv/wo/gate`, and
  `last`: layout "original";
- diffusers': `img_in`, `time_embed`, `time_mod_proj`, `txt_in`, `text_fusion`, `transformer_blocks.N`,
  `final_layer`: layout "diffusers".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.dit_qwen_zimage import contiguous

KREA2 = "krea2"
TURBO = "turbo"
LABELS = {KREA2: "Krea 2"}
# Turbo has Raw's tensors: a folder's model_index.json says (`is_distilled`), a file's user chooses
# (library/index.py choose_variant). Both run the shipped config, Turbo with its pipeline's distilled shift.
VARIANT_LABELS = {(KREA2, TURBO): "Turbo"}
CONFIGS = {(KREA2, ""): "krea2", (KREA2, TURBO): "krea2"}
PIPELINES = {"Krea2Pipeline": KREA2}
_MARKERS = {"original": "txtfusion.projector.weight", "diffusers": "text_fusion.projector.weight"}
_NEEDED = {
    "original": ("first.weight", "tmlp.0.weight", "tproj.1.weight", "txtmlp.1.weight", "last.linear.weight"),
    "diffusers": ("img_in.weight", "time_embed.linear_1.weight", "time_mod_proj.weight", "txt_in.linear_1.weight",
                  "final_layer.linear.weight"),
}  # fmt: skip
_BLOCKS = {"original": "blocks", "diffusers": "transformer_blocks"}
# The final layer's modulation table, a parameter rather than a linear layer's weight.
_FLOAT_ONLY = {"original": ("last.modulation.lin",), "diffusers": ("final_layer.scale_shift_table",)}
_GGUF_BLOCK_TYPES = ("Q", "IQ", "TQ")  # GGUF's block-quantised type names (Q8_0, Q4_K, IQ4_XS ...)
_BLOCK = re.compile(r"^(blocks|transformer_blocks)\.(\d+)\.")


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to Krea 2."""
    return bare_name in _MARKERS.values()


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (blocks, 0)) of a Krea 2 transformer whose tensors (prefix removed) are `model`;
    None when it is not one; ModelError naming `name` when it is one but damaged."""
    layout = next((kind for kind, marker in _MARKERS.items() if marker in model), None)
    if layout is None:
        return None
    for tensor in _NEEDED[layout]:
        if tensor not in model:
            raise ModelError(f"{name} looks like Krea 2 but {tensor} is missing: the file is damaged or incomplete.")
    for table in _FLOAT_ONLY[layout]:
        # diffusers uses these as plain parameters, never dequantised: a GGUF file must keep them as floats.
        if table in model and str(getattr(model[table], "dtype", "")).startswith(_GGUF_BLOCK_TYPES):
            raise ModelError(
                f"{name}: its {table} is stored as {model[table].dtype}, which diffusers cannot use (it must stay a "
                "float type). Get a GGUF conversion of this Krea 2 model that keeps it in F16/F32."
            )
    kind = _BLOCKS[layout]
    present = {int(match.group(2)) for key in model if (match := _BLOCK.match(key)) and match.group(1) == kind}
    return KREA2, "", layout, (contiguous(present, kind, name, LABELS[KREA2]), 0)


def folder_variant(index: Mapping[str, object]) -> str:
    """ "turbo" for a Krea 2 folder whose model_index.json says its model is step-distilled, else ""."""
    return TURBO if index.get("is_distilled") is True else ""
