"""FLUX.3 transformers told apart from their tensors (registered in library/dit.py; headers only, no torch). Run by
backends/families_flux3.py.

Black Forest Labs' third generation has three token modes (the picture, reference pictures, the text), each with a
few blocks of its own (`content_mode_blocks.image.N`, `content_mode_blocks.image_cond.N`, `txt_mode_blocks.N`),
then joint single blocks, and per-token modulation tables (`early_stream_modulations.{image,image_cond,txt}`) that
no other family names. Two namings: BFL's (`emb_in`, `txt_in`, `time_in`, `final_layer.image`, `...lin`), bare or
under ComfyUI's `model.diffusion_model.`, and diffusers' (`x_embedders`, `context_embedder`, `timestep_embedder`,
`proj_out`, `mode_blocks`, `single_transformer_blocks`), as diffusers 0.42.1's converter maps one onto the other.
The step-distilled model is a flow map: it embeds the timestep each step jumps to as well (BFL's `ref_time_in`,
diffusers' `target_timestep_embedder`), which its tensors tell; it runs 16 steps without CFG.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.dit_qwen_zimage import contiguous

FLUX3 = "flux3"
DISTILLED = "distilled"
LABELS = {FLUX3: "FLUX.3"}
# The distilled model's tensors say what it is (never the user's to choose).
VARIANT_LABELS = {(FLUX3, DISTILLED): "distilled"}
CONFIGS = {(FLUX3, ""): "flux3", (FLUX3, DISTILLED): "flux3-distilled"}
# diffusers has no FLUX.3 pipeline class, only modular pipelines: a folder names one of these (Marble's own
# pipeline, backends/families_flux3.py, is saved as "Flux3Pipeline").
PIPELINES = {"Flux3Pipeline": FLUX3, "Flux3ModularPipeline": FLUX3, "Flux3DistilledModularPipeline": FLUX3}
_MARKER = "early_stream_modulations."
# Per layout: the tensors every FLUX.3 transformer holds, the distilled model's own, and its kinds of blocks.
_NEEDED = {
    "bfl": ("emb_in.image.weight", "txt_in.weight", "time_in.in_layer.weight", "final_layer.image.linear.weight"),
    "diffusers": ("x_embedders.image.weight", "context_embedder.weight", "timestep_embedder.linear_1.weight",
                  "proj_out.weight"),
}  # fmt: skip
_FLOW_MAP = {"bfl": "ref_time_in.in_layer.weight", "diffusers": "target_timestep_embedder.linear_1.weight"}
_MODE_BLOCKS = {"bfl": "content_mode_blocks.image", "diffusers": "mode_blocks.image"}
_SINGLE_BLOCKS = {"bfl": "single_blocks", "diffusers": "single_transformer_blocks"}


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to FLUX.3."""
    return bare_name.startswith(_MARKER)


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (mode blocks, single blocks)) of a FLUX.3 transformer whose tensors (prefix removed)
    are `model`; None when it is not one; ModelError naming `name` when it is one but damaged."""
    if not any(is_marker(key) for key in model):
        return None
    layout = "bfl" if any(key.startswith(("emb_in.", "txt_in.", "content_mode_blocks.")) for key in model) else (
        "diffusers")  # fmt: skip
    for tensor in _NEEDED[layout]:
        if tensor not in model:
            raise ModelError(f"{name} looks like FLUX.3 but {tensor} is missing: the file is damaged or incomplete.")
    label = LABELS[FLUX3]
    counts = []
    for kind in (_MODE_BLOCKS[layout], _SINGLE_BLOCKS[layout]):
        pattern = re.compile(rf"^{re.escape(kind)}\.(\d+)\.")
        present = {int(match.group(1)) for key in model if (match := pattern.match(key))}
        counts.append(contiguous(present, kind, name, label))
    # The text and reference modes have as many blocks of their own as the picture's.
    for kind in ("txt_mode_blocks", _MODE_BLOCKS[layout].replace(".image", ".image_cond")):
        pattern = re.compile(rf"^{re.escape(kind)}\.(\d+)\.")
        present = {int(match.group(1)) for key in model if (match := pattern.match(key))}
        if contiguous(present, kind, name, label) != counts[0]:
            raise ModelError(f"{name} looks like FLUX.3 but has {len(present)} {kind} for {counts[0]} picture "
                             "blocks: the file is damaged or incomplete.")  # fmt: skip
    variant = DISTILLED if _FLOW_MAP[layout] in model else ""
    return FLUX3, variant, layout, (counts[0], counts[1])


def folder_variant(transformer: Mapping[str, object], class_name: str) -> str:
    """The variant of a FLUX.3 diffusers folder from its transformer/config.json (a flow map is the distilled model)
    or its pipeline's name."""
    return DISTILLED if transformer.get("flow_map") is True or "Distilled" in class_name else ""
