"""A1111's hires fix: the first pass's result upscaled, then denoised again as image-to-image.

Latent upscalers ("Latent", "Latent (bicubic)", ...) interpolate the first pass's latents, which the
image-to-image pipeline takes as they are (a tensor of the VAE's latent channels skips its encode; a DiT's
are unpacked to (B, C, h, w) first, in the diffusers backend). Pixel upscalers
("Lanczos", "Nearest", or an upscaler model) decode the first pass, upscale the pixels, and the
second pass encodes them again. A1111's modes and names, so a PNG's `Hires upscaler` means the same.

torch is imported inside the functions: only the diffusers backend loads this module, during a job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

# A1111's latent upscale modes: name -> (torch interpolation mode, antialias).
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_RESAMPLERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
BUILT_IN_UPSCALERS = (*LATENT_MODES, *PIXEL_RESAMPLERS)


def canonical_upscaler(name: str) -> str | None:
    """The built-in upscaler `name` means, whatever its case; None for anything else (a library name)."""
    folded = name.strip().casefold()
    return next((known for known in BUILT_IN_UPSCALERS if known.casefold() == folded), None)


def is_latent(name: str) -> bool:
    return name in LATENT_MODES


def upscale_latents(latents: Any, upscale_to: tuple[int, int], crop_to: tuple[int, int], mode: str, factor: int) -> Any:
    """Latents (B, C, h, w) interpolated to `upscale_to` pixels (w, h), then cropped about the centre
    to `crop_to`, as A1111 truncates them when both resize sides are given."""
    import torch

    interpolation, antialias = LATENT_MODES[mode]
    size = (upscale_to[1] // factor, upscale_to[0] // factor)
    # Interpolate in float32: bicubic/antialias have no half kernels on some devices.
    scaled = torch.nn.functional.interpolate(latents.float(), size=size, mode=interpolation, antialias=antialias)
    top = (size[0] - crop_to[1] // factor) // 2
    left = (size[1] - crop_to[0] // factor) // 2
    scaled = scaled[:, :, top : top + crop_to[1] // factor, left : left + crop_to[0] // factor]
    return scaled.to(latents.dtype).contiguous()


def upscale_images(
    images: Sequence[Image.Image],
    upscale_to: tuple[int, int],
    crop_to: tuple[int, int],
    upscaler: str,
    model: Callable[[Image.Image], Image.Image] | None = None,
) -> list[Image.Image]:
    """Each image brought to `upscale_to` (w, h) by a resampler, or by `model` then Lanczos to the exact
    size (an upscaler model has a fixed factor, as in A1111), and cropped about the centre to `crop_to`."""
    out = []
    for image in images:
        if model is not None:
            upscaled = model(image.convert("RGB"))
            sized = upscaled if upscaled.size == upscale_to else upscaled.resize(upscale_to, Image.Resampling.LANCZOS)
        else:
            sized = image.resize(upscale_to, PIXEL_RESAMPLERS[upscaler])
        left = (upscale_to[0] - crop_to[0]) // 2
        top = (upscale_to[1] - crop_to[1]) // 2
        out.append(sized.crop((left, top, left + crop_to[0], top + crop_to[1])) if sized.size != crop_to else sized)
    return out
