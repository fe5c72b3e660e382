"""A1111's "latent noise" and "latent nothing" masked content for inpainting: the source's latents under
the mask replaced by noise or by zeros before the sampler adds its own noise (A1111 does this to
`init_latent` with the mask rounded to 0/1 at latent size). "fill" is a pixel operation
(imaging.fill_masked); "original" changes nothing.

Diffusers' inpainting pipelines encode the source once for the starting latents, through their
`_encode_vae_image`, before anything else is encoded: the first call during the job's pipeline call is
wrapped, and only that one (the masked-image latents a 9-channel UNet reads stay the source's, as in
A1111). Imported by the diffusers backend only; torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from desktop.engine.errors import InvalidRequest

LATENT_FILLS = ("latent noise", "latent nothing")


@contextmanager
def masked_latents(pipe: Any, fill: str, mask: Image.Image | None, seeds: tuple[int, ...]) -> Iterator[None]:
    """Within the block, the pipeline's starting latents have `fill` under `mask` (L, working size).
    Image k of the batch gets the noise of its own seed, so it can be re-made alone."""
    if fill not in LATENT_FILLS or mask is None:
        yield
        return
    encode = getattr(pipe, "_encode_vae_image", None)
    if encode is None:
        raise InvalidRequest(f"Masked content {fill!r} is not available for this model's inpainting pipeline; "
                             "use 'original' or 'fill'.")
    import torch

    done = False

    def wrapped(image: Any, generator: Any = None, **kwargs: Any) -> Any:
        nonlocal done
        latents = encode(image, generator=generator, **kwargs)
        if done:
            return latents
        done = True
        height, width = latents.shape[-2:]
        # Rounded to 0/1 at latent size, as A1111 does, so the blurred mask's edge keeps the source.
        small = np.asarray(mask.convert("L").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
        repaint = torch.from_numpy(np.around(small / 255.0)).to(latents.device, latents.dtype)[None, None]
        # One row per image (the pipeline repeats the source's row to the batch size only when it is short).
        latents = latents.repeat(len(seeds) // latents.shape[0] or 1, 1, 1, 1)
        if fill == "latent noise":
            other = torch.stack([
                torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
                for seed in seeds[: latents.shape[0]]
            ]).to(latents.device, latents.dtype)
        else:
            other = torch.zeros_like(latents)
        return latents * (1 - repaint) + other * repaint

    pipe._encode_vae_image = wrapped
    try:
        yield
    finally:
        del pipe._encode_vae_image  # the class's own method again
