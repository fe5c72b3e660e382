"""Ovis-Image's pipeline class (with LoRAs), transformer file and image-to-image / inpainting class (called from
families.py and families_qwen_zimage.py on the generation thread).

diffusers has no single-file entry for its transformer and no LoRA loader: Marble converts Comfy-Org's BFL names
itself (Flux's conversion, with its SwiGLU feed-forwards and text norm around it) and loads the state dict through
single_file_entry.py, the same path as the other families (GGUF and fp8 included); LoRAs through flux_like_loras.py.
The renaming is a fact of the two layouts: a double block's `img_mlp.gate_proj` / `up_proj` / `down_proj` are diffusers'
SwiGLU `ff.net.0.proj` (its rows the up projection, then the gate: diffusers' SwiGLU multiplies the first half by the
activated second) and `ff.net.2`; a single block's `linear1` holds q, k, v and the MLP input in the same up-then-gate
order as diffusers' `proj_mlp`; `txt_norm` is `context_embedder_norm`; `time_in` is `timestep_embedder`.
torch/diffusers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from desktop.engine.backends import flux_like_loras, single_file_entry
from desktop.engine.backends.flow_edit import FluxLatentEdit

_SWIGLU = re.compile(r"^double_blocks\.(\d+)\.(img|txt)_mlp\.(gate|up|down)_proj\.(weight|bias)$")


def from_bfl(state: dict[str, Any], convert_flux: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """An Ovis-Image transformer in BFL's names (prefix removed) -> OvisImageTransformer2DModel's names, through Flux's
    conversion (`convert_flux`: families.convert_flux_bfl)."""
    import torch

    flux: dict[str, Any] = {}
    parts: dict[tuple[str, str, str], dict[str, Any]] = {}
    norm = {}
    for key, value in state.items():
        match = _SWIGLU.match(key)
        if match:
            block, stream, part, kind = match.groups()
            parts.setdefault((block, stream, kind), {})[part] = value
        elif key.startswith("txt_norm."):
            norm["context_embedder_norm.weight"] = value  # `.scale` (BFL's) or `.weight`
        else:
            flux[key] = value
    for (block, stream, kind), found in parts.items():
        flux[f"double_blocks.{block}.{stream}_mlp.0.{kind}"] = torch.cat([found["up"], found["gate"]], dim=0)
        flux[f"double_blocks.{block}.{stream}_mlp.2.{kind}"] = found["down"]
    return convert_flux(flux, time="timestep_embedder") | norm


def transformer_class() -> Any:
    """OvisImageTransformer2DModel, loadable by diffusers' from_single_file from a state dict in its own names."""
    return single_file_entry.loadable("OvisImageTransformer2DModel")


@functools.cache
def pipeline_class() -> Any:
    """OvisImagePipeline with LoRAs in diffusers' or PEFT's names (diffusers' has no loader: flux_like_loras.py)."""
    import diffusers

    class OvisImageLorasPipeline(flux_like_loras.loader(), diffusers.OvisImagePipeline):
        _lora_label = "Ovis-Image"

    return OvisImageLorasPipeline


@functools.cache
def edit_class() -> Any:
    """Ovis-Image with image to image and inpainting (flow_edit.FluxLatentEdit): its latents are the Flux VAE's in 2x2
    patches as tokens, its schedule shifted by the image's token count (Flux's rule, the pipeline's own)."""
    class OvisImageEditPipeline(FluxLatentEdit, pipeline_class()):
        def _edit_mu(self, rows: int, cols: int) -> float:
            return self._edit_shift((rows // 2) * (cols // 2))

        def _edit_pack(self, grid: Any) -> Any:
            return self._pack_latents(grid, *grid.shape)

    return OvisImageEditPipeline
