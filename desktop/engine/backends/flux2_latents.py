"""Flux.2's VAE latents as the pipelines built on that VAE hold them (Flux.2 dev's and ERNIE-Image's): 2x2 patches
as channels, normalised by the VAE's batch-norm statistics. A latent upscaler interpolates the VAE's own latents
(neighbouring cells of the normalised patches are not on one scale), so the hires fix goes from one form to the other
and back. Each pipeline normalises with its own epsilon, which the caller passes. torch is imported inside the
functions (pyproject's import-linter list).
"""

from __future__ import annotations

from typing import Any


def normalised_patches(pipe: Any, latents: Any, eps: float) -> Any:
    """The VAE's latents (B, C, h, w) as the pipeline's: 2x2 patches as channels (B, 4C, h/2, w/2), normalised by
    the VAE's batch-norm statistics with `eps`."""
    mean, std = _statistics(pipe, latents, eps)
    return (pipe._patchify_latents(latents) - mean) / std


def vae_latents(pipe: Any, patches: Any, eps: float) -> Any:
    """The pipeline's normalised patches (B, 4C, h, w) as the VAE's latents (B, C, 2h, 2w)."""
    mean, std = _statistics(pipe, patches, eps)
    return pipe._unpatchify_latents(patches * std + mean)


def _statistics(pipe: Any, like: Any, eps: float) -> tuple[Any, Any]:
    import torch

    mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + eps)
    return mean.to(like), std.to(like)
