"""ERNIE-Image's image-to-image and inpainting pipeline (called from families.py on the generation thread): diffusers
has none, so Marble's own over its text-to-image pipeline (flow_edit.py).

Its latents are Flux.2's VAE's in 2x2 patches as channels (4C, h/2, w/2), normalised by the VAE's batch-norm
statistics with the pipeline's own epsilon (flux2_latents.py); its schedule is linear, shifted by the scheduler's
fixed shift. Its pipeline sets that schedule itself (it takes no `sigmas=`), so the edit's tail is handed to the
scheduler for the call. torch/diffusers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from desktop.engine.backends import lora_forms
from desktop.engine.backends.flow_edit import FlowEdit
from desktop.engine.backends.flux2_latents import normalised_patches

# The epsilon ErnieImagePipeline normalises latents with (hard-coded there: the trained value, not the VAE config's).
BATCH_NORM_EPS = 1e-5


def lora_needs_conversion(names: Iterable[str]) -> bool:
    """Whether an ERNIE-Image LoRA is in a form diffusers' ERNIE-Image loader does not read (it reads `lora_A` /
    `lora_B` under `transformer.`, `diffusion_model.` or PEFT's prefix): kohya's flattened names, or lora_down /
    lora_up with alphas (musubi-tuner's and kohya's trainers)."""
    return lora_forms.needs_renaming(names)


def convert_lora(state: dict[str, Any], modules: Iterable[str]) -> dict[str, Any]:
    """The LoRA as `diffusion_model.<module>.lora_A/B.weight` (lora_forms.py), kohya's names matched to the
    transformer's own `modules` (its dots made underscores: its names are its release's)."""
    return lora_forms.renamed_for(state, modules)


class _GivenSchedule:
    """Runs the pipeline over the schedule `sigmas` (before its shift) instead of its own linear one."""

    def __call__(self, *, sigmas: list[float], **rest: Any) -> Any:
        scheduler = self.scheduler  # type: ignore[attr-defined]
        own = scheduler.set_timesteps
        scheduler.set_timesteps = lambda *args, device=None, **kwargs: own(sigmas=sigmas, device=device)
        try:
            return super().__call__(**rest)  # type: ignore[misc]
        finally:
            del scheduler.set_timesteps  # the class's method again


@functools.cache
def edit_class() -> Any:
    import diffusers
    import torch

    class ErnieImageEditPipeline(FlowEdit, _GivenSchedule, diffusers.ErnieImagePipeline):
        def _edit_grid(self, width: int, height: int) -> tuple[int, int]:
            return height // self.vae_scale_factor, width // self.vae_scale_factor

        def _edit_raw_sigmas(self, steps: int) -> Any:
            # The pipeline's own float32 linspace, so that strength 1 runs its very schedule.
            return torch.linspace(1.0, 0.0, steps + 1)[:-1].numpy()

        def _edit_mu(self, rows: int, cols: int) -> None:
            return None  # a fixed shift

        def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
            pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
            latents = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent_dist.mode()
            return normalised_patches(self, latents, BATCH_NORM_EPS)

        def _edit_pack(self, grid: Any) -> Any:
            return grid

        def _edit_conditions(self, references: Any) -> dict[str, Any]:
            return {}

    return ErnieImageEditPipeline
