"""The checks for a DiT family whose ControlNets Marble runs in image to image and inpainting over their text-to-image
pipeline (backends/control_dit_edits.py: Qwen-Image's, Z-Image's, SD3's, Sana's): the mechanics are the family's own
image-to-image pipeline's, the unit acts, its step range counts the steps the edit runs, and it acts again in the
hires fix's second pass, counted over that pass's steps; inpainting is that image to image under a mask."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.control_range_checks import scales_seen


def _silent(home: AppPaths, name: str, outputs: tuple[str, ...]) -> str:
    """A copy of the library's ControlNet `name` whose output layers (tensor names holding one of `outputs`) are
    zero: it adds nothing to the transformer. Returns its library name."""
    state = load_file(str(home.controls / f"{name}.safetensors"))
    zeroed = {key: torch.zeros_like(value) if any(part in key for part in outputs) else value
              for key, value in state.items()}  # fmt: skip
    assert any(not torch.equal(zeroed[key], state[key]) for key in state), "no output layer was zeroed"
    save_file(zeroed, str(home.controls / f"{name}-silent.safetensors"))
    return f"{name}-silent"


def _source(tmp_path: Path) -> Path:
    canvas = np.zeros((64, 64, 3), dtype=np.uint8)
    canvas[:, :32] = (200, 60, 40)
    canvas[20:50, 30:60] = (40, 160, 220)
    source = tmp_path / "control-edit-source.png"
    Image.fromarray(canvas).save(source)
    return source


def check_controlnet_inpainting(
    home: AppPaths, folder: Path, unit: ControlUnit, outputs: tuple[str, ...], tmp_path: Path, own_inpainting: bool,
    **values: Any,
) -> None:
    """`unit` (weight 0.8, a ControlNet that does not read the masked source) in an inpainting job at strength 0.75:

    - under a mask of everything, with its output layers zeroed, the picture is the image-to-image job's with it (the
      same mechanics, nothing kept);
    - under the left half, the right half is the source's and the left is neither the source's nor the image to
      image's (the source's latents are held outside the mask at every step); the unit acts there;
    - `own_inpainting` (the family's inpainting without units is Marble's own too: Sana's), with its output layers
      zeroed, the picture is that of the job without the unit."""
    source = _source(tmp_path)
    whole, half = tmp_path / "mask-whole.png", tmp_path / "mask-half.png"
    Image.new("L", (64, 64), 255).save(whole)
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    left.save(half)
    edit = values | {"init_image": str(source), "strength": 0.75, "steps": 4, "mask_blur": 0}
    backend = make_backend(home)
    silent = replace(unit, model=_silent(home, unit.model, outputs), weight=0.8)
    by_image, _ = run(backend, request_for(folder, controls=(silent,), **edit))
    masked, steps = run(backend, request_for(folder, controls=(silent,), mask=str(whole), **edit))
    assert np.array_equal(pixels(masked.images[0]), pixels(by_image.images[0])) and len(steps) == 3
    quiet, _ = run(backend, request_for(folder, controls=(silent,), mask=str(half), **edit))
    acting, _ = run(backend, request_for(folder, controls=(replace(unit, weight=0.8),), mask=str(half), **edit))
    original = pixels(Image.open(source).convert("RGB"))
    for batch in (quiet, acting):
        assert np.array_equal(pixels(batch.images[0])[:, 32:], original[:, 32:])
        assert not np.array_equal(pixels(batch.images[0])[:, :32], original[:, :32])
    assert not np.array_equal(pixels(acting.images[0]), pixels(quiet.images[0]))
    # The source's latents held outside the mask at every step change what is painted inside it: not the image to
    # image's left half with the right half pasted back.
    assert not np.array_equal(pixels(quiet.images[0])[:, :32], pixels(by_image.images[0])[:, :32])
    if own_inpainting:
        plain, _ = run(backend, request_for(folder, mask=str(half), **edit))
        assert np.array_equal(pixels(quiet.images[0]), pixels(plain.images[0]))


def check_controlnet_image_to_image(
    home: AppPaths, folder: Path, unit: ControlUnit, outputs: tuple[str, ...], model_class: Any, tmp_path: Path,
    **values: Any,
) -> None:
    """`unit` (weight 0.8) in an image-to-image job at strength 0.75 of 4 steps (3 run) and in the hires fix:

    - with its output layers zeroed (`outputs`), the picture is the family's image to image without control units;
    - as it is, another picture;
    - over the range 0 to 0.5, the ControlNet sees its weight at the first of the 3 steps only (diffusers' rule over
      the steps run);
    - in a text-to-image job with the hires fix (4 steps, then 4 at denoising 0.5: 2 run; a latent and a pixel
      upscaler), it sees its weight at the first two steps of the first pass and the first of the second, and nothing
      is said about it."""
    source = _source(tmp_path)
    edit = values | {"init_image": str(source), "strength": 0.75, "steps": 4}
    backend = make_backend(home)
    plain, _ = run(backend, request_for(folder, **edit))
    silent = replace(unit, model=_silent(home, unit.model, outputs), weight=0.8)
    quiet, steps = run(backend, request_for(folder, controls=(silent,), **edit))
    assert np.array_equal(pixels(quiet.images[0]), pixels(plain.images[0]))
    assert len(steps) == 3
    acting, _ = run(backend, request_for(folder, controls=(replace(unit, weight=0.8),), **edit))
    assert not np.array_equal(pixels(acting.images[0]), pixels(plain.images[0]))
    ranged = replace(unit, weight=0.8, start=0.0, end=0.5)
    _, seen = scales_seen(backend, request_for(folder, controls=(ranged,), **edit), model_class)
    assert seen == [0.8, 0.0, 0.0]
    for upscaler in ("Latent", "Lanczos"):
        hires = values | {"steps": 4, "hires_fix": True, "hires_scale": 1.5, "hires_steps": 4, "hires_denoise": 0.5,
                          "hires_upscaler": upscaler}  # fmt: skip
        batch, seen = scales_seen(backend, request_for(folder, controls=(ranged,), **hires), model_class)
        assert seen == [0.8, 0.8, 0.0, 0.0, 0.8, 0.0], upscaler
        assert batch.images[0].size == (96, 96) and not batch.notes, upscaler
