"""ERNIE-Image transformers told apart from their tensors (registered in library/dit.py; headers only, no torch).

Baidu's 8B single-stream model (ERNIE-Image, and ERNIE-Image-Turbo, its 8-step distillation: the same tensors)
reads Ministral 3 3B's hidden states and draws Flux.2's VAE latents in 2x2 patches. One naming is in circulation:
its release's, which is diffusers' (ErnieImageTransformer2DModel), bare or under ComfyUI's `model.diffusion_model.`
(Comfy-Org's files; diffusers' single-file converter only drops that prefix): `x_embedder.proj`, `text_proj`,
`time_embedding`, one shared `adaLN_modulation`, `layers.N` with `adaLN_sa_ln` / `self_attention` / `mlp`, and
`final_norm` / `final_linear`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.dit_qwen_zimage import contiguous

ERNIE_IMAGE = "ernie-image"
TURBO = "turbo"
LABELS = {ERNIE_IMAGE: "ERNIE-Image"}
# Turbo has the base's tensors, and its folder the base's pipeline and configs: only the user can say which a file
# is (library/index.py choose_variant). Both run the shipped config; Turbo differs in its defaults (8 steps, CFG 1).
VARIANT_LABELS = {(ERNIE_IMAGE, TURBO): "Turbo"}
CONFIGS = {(ERNIE_IMAGE, ""): "ernie-image", (ERNIE_IMAGE, TURBO): "ernie-image"}
PIPELINES = {"ErnieImagePipeline": ERNIE_IMAGE}
_MARKER = "final_norm.linear.weight"  # its final layer's modulation; no other family names one so
_NEEDED = ("x_embedder.proj.weight", "time_embedding.linear_1.weight", "adaLN_modulation.1.weight",
           "final_linear.weight")  # fmt: skip
_BLOCK = re.compile(r"^layers\.(\d+)\.")


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to ERNIE-Image."""
    return bare_name == _MARKER


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (layers, 0)) of an ERNIE-Image transformer whose tensors (prefix removed) are
    `model`; None when it is not one; ModelError naming `name` when it is one but damaged."""
    if _MARKER not in model:
        return None
    for tensor in _NEEDED:
        if tensor not in model:
            raise ModelError(
                f"{name} looks like ERNIE-Image but {tensor} is missing: the file is damaged or incomplete."
            )
    present = {int(match.group(1)) for key in model if (match := _BLOCK.match(key))}
    return ERNIE_IMAGE, "", "diffusers", (contiguous(present, "layers", name, LABELS[ERNIE_IMAGE]), 0)
