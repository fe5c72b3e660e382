"""Image to image and inpainting with ControlNets for the DiT families whose ControlNet pipelines diffusers has for text
to image only (Qwen-Image's, Z-Image's, SD3's, Sana's; their inpainting pipelines take only ControlNets that read the
masked source): the family's text-to-image ControlNet pipeline with flow_edit's image to image and inpainting mixed
in, so a ControlNet unit also works on a source picture, under a mask and in the hires fix's second pass, as A1111
runs it (Flux.1's has diffusers' own `FluxControlNetImg2ImgPipeline` and `FluxControlNetInpaintPipeline`).

Each class reproduces the family's own image-to-image pipeline, which Marble runs without control units: the same
schedule tail, the source encoded the same way (a sample of the VAE's distribution drawn with the image's generator,
then the VAE's normalisation; Sana's DC-AE has no distribution), the same noise. With a ControlNet that adds nothing,
the picture is that pipeline's (tests/engine/test_dit_controlnet_edits.py). The ControlNet's step range counts the
steps the edit runs, as diffusers' Flux.1 image-to-image ControlNet pipeline counts them.

torch/diffusers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
from typing import Any

from desktop.engine.backends.families_sana import DcAeTailEdit
from desktop.engine.backends.flow_edit import FluxLatentEdit, KlVaeTailEdit
from desktop.engine.library.control import QWEN_IMAGE, SANA, SD3, Z_IMAGE


class _Sampled:
    """A source's latents as diffusers' image-to-image pipelines take them from an AutoencoderKL: a sample of its
    distribution drawn with the image's generator, shifted and scaled (Z-Image's Flux.1 VAE, SD3's)."""

    def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
        pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
        latents = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent_dist.sample(generator)
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor


def _qwen_image(base: Any) -> Any:
    import torch

    class QwenImageControlNetEditPipeline(FluxLatentEdit, base):
        """Qwen-Image's latents: its video VAE's (one frame), normalised by its per-channel mean and deviation, packed
        in 2x2 patches; the shift's argument is the packed tokens' count."""

        def _edit_mu(self, rows: int, cols: int) -> float:
            return self._edit_shift(rows * cols // 4)

        def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
            pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
            frame = pixels.to(self._execution_device, self.vae.dtype).unsqueeze(2)
            latents = self.vae.encode(frame).latent_dist.sample(generator)
            config = self.vae.config
            mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
            inverse = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
            return ((latents - mean) * inverse.to(latents.device, latents.dtype)).squeeze(2)

        def _edit_pack(self, grid: Any) -> Any:
            batch, channels, rows, cols = grid.shape
            return self._pack_latents(grid, batch, channels, rows, cols)

    return QwenImageControlNetEditPipeline


def _z_image(base: Any) -> Any:
    from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

    class ZImageControlNetEditPipeline(_Sampled, FluxLatentEdit, base):
        """Z-Image's latents: the Flux.1 VAE's, (C, h, w) as they are (its transformer patchifies them); its own
        schedule before shifting, and the shift's argument is the 2x2 patches' count."""

        def _edit_raw_sigmas(self, steps: int) -> Any:
            return get_default_z_image_sigmas(steps)

        def _edit_mu(self, rows: int, cols: int) -> float:
            return self._edit_shift((rows // 2) * (cols // 2))

        def _edit_pack(self, grid: Any) -> Any:
            return grid

    return ZImageControlNetEditPipeline


def _sd3(base: Any) -> Any:
    class StableDiffusion3ControlNetEditPipeline(_Sampled, KlVaeTailEdit, base):
        """SD3's latents: its VAE's, (C, h, w); its pipeline sets its schedule from the step count alone."""

    return StableDiffusion3ControlNetEditPipeline


def _sana(base: Any) -> Any:
    class SanaControlNetEditPipeline(DcAeTailEdit, base):
        """Sana's image to image (families_sana.DcAeTailEdit) over its ControlNet pipeline."""

    return SanaControlNetEditPipeline


_MAKERS = {QWEN_IMAGE: _qwen_image, Z_IMAGE: _z_image, SD3: _sd3, SANA: _sana}
FAMILIES = frozenset(_MAKERS)


@functools.cache
def edit_class(family: str, text_to_image: str) -> Any:
    """The image-to-image ControlNet pipeline class of `family`, over diffusers' `text_to_image` ControlNet class."""
    import diffusers

    return _MAKERS[family](getattr(diffusers, text_to_image))
