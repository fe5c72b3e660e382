"""The request of an upscale job ("Upscale" on an image; `marble upscale --sd-upscale`).

An upscale job is a GenerationRequest with `upscale_by` set and the source image as `init_image`, so
it goes through the one queue, worker, runner, history and PNG writer every job uses; the rest of the
request is the source's recipe, which the result's metadata keeps (as A1111's extras tab does) and
which SD upscale denoises with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from desktop.engine.backends.hires import canonical_upscaler
from desktop.engine.request import MAX_SIDE, MIN_SIDE, GenerationRequest

# What the source's recipe may give an upscale job; hires fix, control units and batches are not part of it.
_FROM_RECIPE = (
    "prompt", "negative_prompt", "model", "loras", "sampler", "steps", "cfg_scale", "seed", "width", "height",
    "clip_skip", "emphasis", "vae",
)  # fmt: skip


@dataclass(frozen=True)
class UpscaleSettings:
    """What the Upscale dialog and `marble upscale` ask for."""

    upscaler: str = "Lanczos"
    scale: float = 2.0
    tile: int = 256
    sd_upscale: bool = False
    sd_tile: int = 512
    sd_overlap: int = 64
    denoise: float = 0.3


def upscale_request(
    source: str, recipe: Mapping[str, Any], settings: UpscaleSettings, **overrides: Any
) -> GenerationRequest:
    """An upscale job for the image file `source`, carrying its `recipe` (Recipe.fields; may be empty)
    and `overrides` (a model, prompt or seed given by the user). Not validated: the caller's submit does."""
    known = {f.name for f in fields(GenerationRequest)}
    values: dict[str, Any] = {name: recipe[name] for name in _FROM_RECIPE if name in recipe}
    for side in ("width", "height"):
        # A size Marble could not generate at (a ComfyUI image at 1003 px) must not stop an upscale of it.
        if side in values and not (isinstance(values[side], int) and values[side] % 8 == 0
                                   and MIN_SIDE <= values[side] <= MAX_SIDE):
            del values[side]
    values.update({name: value for name, value in overrides.items() if name in known and value is not None})
    values.setdefault("prompt", "")
    values.setdefault("model", "")
    return GenerationRequest(
        **values,
        init_image=source,
        strength=settings.denoise,
        upscale_by=settings.scale,
        upscale_upscaler=canonical_upscaler(settings.upscaler) or settings.upscaler,
        upscale_tile=settings.tile,
        sd_upscale=settings.sd_upscale,
        sd_upscale_tile=settings.sd_tile,
        sd_upscale_overlap=settings.sd_overlap,
    )
