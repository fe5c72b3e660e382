"""Krea 2's image-to-image and inpainting pipeline (called from families.py on the generation thread): diffusers
has none, so Marble's own over its text-to-image pipeline (flow_edit.py).

Its latents are Qwen-Image's VAE's (Wan 2.1's design: a one-frame video), normalised by the VAE's mean and std,
in 2x2 patches as tokens; the distilled Turbo shifts its schedule by a fixed 1.15, Raw by the image's token count
(the pipeline's own rule). torch/diffusers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from desktop.engine.backends import lora_forms
from desktop.engine.backends.flow_edit import FlowEdit
from desktop.engine.library.dit import DitInfo
from desktop.engine.library.dit_krea2 import KREA2, TURBO

_DISTILLED_MU = 1.15  # Krea2Pipeline's fixed shift for a distilled (Turbo) checkpoint


def variant_settings(info: DitInfo) -> dict[str, Any]:
    """The pipeline settings a Krea 2 file the user marked Turbo needs whatever folder or config serves it: its
    pipeline's distilled schedule (`is_distilled`); {} for any other model."""
    return {"is_distilled": True} if (info.family, info.variant) == (KREA2, TURBO) else {}


# Krea's own module names as kohya's trainers flatten them (`lora_unet_blocks_0_attn_wq`), dotted again.
_KOHYA_BLOCK = re.compile(r"^(blocks|txtfusion_layerwise_blocks|txtfusion_refiner_blocks)_(\d+)_(attn|mlp)_(\w+)$")
_KOHYA_SINGLE = {"first": "first", "last_linear": "last.linear", "tmlp_0": "tmlp.0", "tmlp_2": "tmlp.2",
                 "tproj_1": "tproj.1", "txtmlp_1": "txtmlp.1", "txtmlp_3": "txtmlp.3",
                 "txtfusion_projector": "txtfusion.projector"}  # fmt: skip


def lora_needs_conversion(names: Iterable[str]) -> bool:
    """Whether a Krea 2 LoRA is in a form diffusers' Krea 2 converter does not read: kohya's flattened names or
    lora_down / lora_up with alphas (musubi-tuner's exports); it reads `lora_A` / `lora_B` in either naming."""
    return lora_forms.needs_renaming(names)


def convert_lora(state: dict[str, Any]) -> dict[str, Any]:
    """The LoRA as `diffusion_model.<Krea's module>.lora_A/B.weight`, which diffusers' converter reads
    (lora_forms.py), kohya's names dotted by Krea's own module names."""
    return lora_forms.renamed(state, _kohya_module)


def _kohya_module(flat: str) -> str:
    match = _KOHYA_BLOCK.match(flat)
    if match is None:
        return _KOHYA_SINGLE.get(flat, flat)
    block, index, kind, sub = match.groups()
    return f"{block.replace('txtfusion_', 'txtfusion.')}.{index}.{kind}.{sub}"


@functools.cache
def edit_class() -> Any:
    import diffusers
    import numpy as np
    import torch
    from diffusers.pipelines.krea2.pipeline_krea2 import calculate_shift

    class Krea2EditPipeline(FlowEdit, diffusers.Krea2Pipeline):
        def _edit_grid(self, width: int, height: int) -> tuple[int, int]:
            return height // self.vae_scale_factor, width // self.vae_scale_factor

        def _edit_raw_sigmas(self, steps: int) -> Any:
            return np.linspace(1.0, 1 / steps, steps)

        def _edit_mu(self, rows: int, cols: int) -> float:
            if self.config.is_distilled:
                return _DISTILLED_MU
            config, tokens = self.scheduler.config, (rows // self.patch_size) * (cols // self.patch_size)
            return calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 6400),
                                   config.get("base_shift", 0.5), config.get("max_shift", 1.15))  # fmt: skip

        def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
            pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
            pixels = pixels.unsqueeze(2).to(self._execution_device, self.vae.dtype)  # one video frame
            latents = self.vae.encode(pixels).latent_dist.mode()[:, :, 0]
            config = self.vae.config
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            return (latents - mean) / std

        def _edit_pack(self, grid: Any) -> Any:
            return self._pack_latents(grid, *grid.shape)

        def _edit_conditions(self, references: Any) -> dict[str, Any]:
            return {}

    return Krea2EditPipeline
