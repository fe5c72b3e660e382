"""The checks every image-to-image and inpainting pipeline Marble makes over a text-to-image pipeline whose latents are
a VAE's as (C, h, w) must pass (Lumina Image 2.0's and HiDream-I1's over Flux.1's VAE, AuraFlow's over SDXL's): the
schedule's tail, the source kept outside the mask, and the same through Marble with the hires fix. Each family's test
hands in its pipelines and guidance."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run

SOURCE_COLOUR = (200, 40, 40)


def source_latents(edit: Any, picture: Image.Image) -> torch.Tensor:
    """A picture's latents in the transformer's space: the VAE's mode (DC-AE's latents), shifted (Flux.1's VAE; SDXL's
    and DC-AE have no shift) and scaled."""
    config = edit.vae.config
    pixels_ = edit.image_processor.preprocess(picture, height=64, width=64)
    encoded = edit.vae.encode(pixels_)
    latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latent  # DC-AE: no sampling
    return (latents - (getattr(config, "shift_factor", None) or 0)) * config.scaling_factor


def normalised_vae_patches(pipe: Any, picture: Image.Image, width: int, height: int, eps: float) -> torch.Tensor:
    """A picture's latents as the pipelines over Flux.2's VAE hold them (ERNIE-Image's, Flux.2's), by hand: the VAE's
    mode, in 2x2 patches, normalised by its batch-norm statistics (`eps`: the pipeline's)."""
    with torch.no_grad():
        pixels_in = pipe.image_processor.preprocess(picture, height=height, width=width)
        patches = pipe._patchify_latents(pipe.vae.encode(pixels_in).latent_dist.mode())
        mean, std = _batch_norm(pipe, eps)
        return (patches - mean) / std


def latent_hires_by_hand(pipe: Any, patches: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised 2x2 patches (B, 4C, h, w) over Flux.2's VAE upscaled 1.5x as "Latent" does, by hand: un-normalised,
    each patch's cells put back in place, interpolated bilinearly, patched and normalised again; and, what must give
    another picture, the patches themselves interpolated."""
    mean, std = _batch_norm(pipe, eps)
    raw = patches * std + mean
    # Each patch's 4C channels are (channel, row in the patch, column in the patch).
    b, c4, h, w = raw.shape
    cells = raw.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * h, 2 * w)
    up = torch.nn.functional.interpolate(cells, size=(3 * h, 3 * w), mode="bilinear")
    again = up.reshape(b, c4 // 4, 3 * h // 2, 2, 3 * w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c4, 3 * h // 2,
                                                                                                  3 * w // 2)
    naive = torch.nn.functional.interpolate(patches, size=(3 * h // 2, 3 * w // 2), mode="bilinear")
    return (again - mean) / std, naive


def _batch_norm(pipe: Any, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1)
    return mean, torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + eps)


def _sigmas_into(into: list[float]) -> Any:
    def step_end(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        into.append(float(pipeline.scheduler.sigmas[i]))
        return {}

    return step_end


def check_the_tail_of_text_to_image(
    pipe: Any, edit: Any, call: dict[str, Any], source: Image.Image, recorded: Any = None
) -> list[float]:
    """A flow-matching edit over `pipe`, both called with `call` (4 steps): strength 1 is text to image's picture
    for the seed; strength 0.5 runs the last 2 of the very sigmas text to image steps through (read from `recorded`
    where `pipe` takes no step callback). Returns those sigmas."""
    whole = edit(**call, image=source, strength=1.0, generator=torch.Generator().manual_seed(7)).images
    assert np.array_equal(whole, pipe(**call, generator=torch.Generator().manual_seed(7)).images)
    seen: list[float] = []
    half: list[float] = []
    (recorded or pipe)(**call, generator=torch.Generator().manual_seed(7), callback_on_step_end=_sigmas_into(seen))
    edit(**call, image=source, strength=0.5, generator=torch.Generator().manual_seed(7),
         callback_on_step_end=_sigmas_into(half))  # fmt: skip
    assert half == pytest.approx(seen[2:], abs=1e-6) and seen[2] < 0.9
    return seen


def check_schedule_tail(pipe: Any, edit: Any, guidance: float) -> None:
    """Strength 1 is text to image's picture for the seed (not square); strength 0.5 of 4 steps runs the schedule's
    last 2 sigmas; the source's own latents handed in give its picture; text to image after the edit runs its whole
    schedule again (the pipeline's scheduler is its own)."""
    source = Image.new("RGB", (64, 64), SOURCE_COLOUR)
    seen: list[float] = []
    call = dict(prompt="a cat", num_inference_steps=4, width=64, height=64, output_type="np", guidance_scale=guidance)
    plain = pipe(**call, generator=torch.Generator().manual_seed(7), callback_on_step_end=_sigmas_into(seen)).images
    wide = call | {"width": 96}
    whole = edit(**wide, image=source, strength=1.0, generator=torch.Generator().manual_seed(7)).images
    assert np.array_equal(whole, pipe(**wide, generator=torch.Generator().manual_seed(7)).images)
    half: list[float] = []
    by_picture = edit(**call, image=source, strength=0.5, generator=torch.Generator().manual_seed(7),
                      callback_on_step_end=_sigmas_into(half)).images  # fmt: skip
    assert half == pytest.approx(seen[2:], abs=1e-6) and len(seen) == 4
    grid = source_latents(edit, source)
    by_latents = edit(**call, image=grid, strength=0.5, generator=torch.Generator().manual_seed(7)).images
    assert np.array_equal(by_picture, by_latents) and not np.array_equal(by_picture, plain)
    again: list[float] = []
    pipe(**call, generator=torch.Generator().manual_seed(7), callback_on_step_end=_sigmas_into(again))
    assert again == seen


def check_inpainting_keeps_the_source(edit: Any, **call: Any) -> None:
    """Masked to its left 20 columns (latent columns 0 to 2, 8 pixels each), the result's latents are the source's
    elsewhere and not there."""
    source = Image.new("RGB", (64, 64), SOURCE_COLOUR)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 20, 64))
    latents = edit(prompt="a cat", image=source, mask_image=mask, strength=1.0, num_inference_steps=3, width=64,
                   height=64, output_type="latent", generator=torch.Generator().manual_seed(7),
                   **call).images  # fmt: skip
    clean = source_latents(edit, source)
    assert torch.allclose(latents[..., 3:], clean[..., 3:], atol=1e-6)
    assert not torch.allclose(latents[..., :3], clean[..., :3], atol=1e-2)


def check_edits_through_marble(paths: Any, folder: Any, edit: Any, cfg: float, tmp_path: Any) -> None:
    """Image to image through Marble is the edit pipeline's picture called directly; inpainting runs; the hires fix
    with a latent and a pixel upscaler makes the second pass's size (not square), with nothing said."""
    Image.new("RGB", (64, 64), SOURCE_COLOUR).save(tmp_path / "source.png")
    source = str(tmp_path / "source.png")
    request = request_for(folder, init_image=source, strength=0.6, steps=3, cfg_scale=cfg, seed=43)
    batch, _ = run(make_backend(paths), request)
    expected = pixels(edit(prompt=request.prompt, negative_prompt=request.negative_prompt, image=Image.open(source),
                           strength=0.6, num_inference_steps=3, width=64, height=64, guidance_scale=cfg,
                           generator=torch.Generator().manual_seed(43)).images[0])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    inpainted, _ = run(make_backend(paths), replace(request, mask=str(tmp_path / "mask.png"), strength=1.0))
    assert inpainted.images[0].size == (64, 64)
    for upscaler in ("Latent", "Lanczos"):
        hires, steps = run(make_backend(paths), request_for(folder, steps=2, cfg_scale=cfg, hires_fix=True,
                                                            hires_scale=1.5, hires_steps=2, hires_upscaler=upscaler,
                                                            width=96))  # fmt: skip
        assert hires.images[0].size == (144, 96) and len(steps) > 2 and not hires.notes
