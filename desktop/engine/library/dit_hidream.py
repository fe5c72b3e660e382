"""HiDream-I1 transformers told apart from their tensors (registered in library/dit.py; headers only, no torch).

HiDream.ai's 17B sparse diffusion transformer (double- and single-stream blocks whose feed-forward layers are a
mixture of experts) reads four text encoders (CLIP-L and CLIP-G with projections, T5-XXL, and Llama 3.1 8B
Instruct, whose hidden states it takes layer by layer, one per block) and draws Flux.1's VAE latents. One naming
is in circulation: its release's, which is diffusers' (HiDreamImageTransformer2DModel), bare or under ComfyUI's
`model.diffusion_model.` (diffusers' single-file converter only drops that prefix): `double_stream_blocks.N.block`,
`single_stream_blocks.N.block`, `caption_projection.N` (one per block, and one more for T5), `t_embedder`,
`p_embedder`, `x_embedder.proj` and `final_layer`.

Its three releases have the same tensors: Full (50 steps at CFG 5 over UniPC), Dev and Fast (guidance-distilled:
28 and 16 steps without CFG, Euler at shift 6 and 3). A file cannot say which it is; the user marks it
(library/index.py choose_variant), and a diffusers folder says by its scheduler (folder_variant).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.dit_qwen_zimage import contiguous

HIDREAM = "hidream-i1"
DEV, FAST = "dev", "fast"
LABELS = {HIDREAM: "HiDream-I1"}
VARIANT_LABELS = {(HIDREAM, DEV): "Dev", (HIDREAM, FAST): "Fast"}
CONFIGS = {(HIDREAM, ""): "hidream-i1", (HIDREAM, DEV): "hidream-i1", (HIDREAM, FAST): "hidream-i1"}
PIPELINES = {"HiDreamImagePipeline": HIDREAM}
# The shift of each distilled release's Euler schedule (HiDream.ai's inference settings, diffusers' folders).
DISTILLED_SHIFTS = {DEV: 6.0, FAST: 3.0}
FULL_SHIFT = 3.0  # Full's UniPC over flow sigmas
_MARKER = re.compile(r"^double_stream_blocks\.\d+\.block\.")
_NEEDED = ("x_embedder.proj.weight", "t_embedder.timestep_embedder.linear_1.weight",
           "p_embedder.pooled_embedder.linear_1.weight", "final_layer.linear.weight",
           "caption_projection.0.linear.weight")  # fmt: skip
_BLOCK = re.compile(r"^(double_stream_blocks|single_stream_blocks)\.(\d+)\.")


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to HiDream-I1."""
    return _MARKER.match(bare_name) is not None


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (double, single) block counts) of a HiDream-I1 transformer whose tensors (prefix
    removed) are `model`; None when it is not one; ModelError naming `name` when it is one but damaged."""
    if not any(is_marker(key) for key in model):
        return None
    for tensor in _NEEDED:
        if tensor not in model:
            raise ModelError(
                f"{name} looks like HiDream-I1 but {tensor} is missing: the file is damaged or incomplete."
            )
    found: dict[str, set[int]] = {"double_stream_blocks": set(), "single_stream_blocks": set()}
    for key in model:
        if match := _BLOCK.match(key):
            found[match.group(1)].add(int(match.group(2)))
    label = LABELS[HIDREAM]
    double = contiguous(found["double_stream_blocks"], "double_stream_blocks", name, label)
    single = contiguous(found["single_stream_blocks"], "single_stream_blocks", name, label)
    # One caption projection per block and one for T5: the last one missing is a cut file, not another model.
    last = f"caption_projection.{double + single}.linear.weight"
    if last not in model:
        raise ModelError(f"{name} looks like HiDream-I1 but {last} is missing: the file is damaged or incomplete.")
    return HIDREAM, "", "diffusers", (double, single)


def folder_variant(scheduler: Mapping[str, object] | None) -> str:
    """The release a HiDream-I1 diffusers folder holds, by its scheduler (scheduler/scheduler_config.json): Full's
    UniPC is "", Dev's and Fast's Euler by their shift; "" for anything else (Full's defaults are the safe ones)."""
    if not scheduler or scheduler.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
        return ""
    shift = scheduler.get("shift")
    return next((variant for variant, value in DISTILLED_SHIFTS.items() if shift == value), "")
