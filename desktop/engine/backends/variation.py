"""A1111's variation seed and "seed resize from": the initial noise mixed and pasted as A1111 does.

Per image: the seed's noise is drawn (at the "resize from" size when set), slerped towards the
subseed's noise of the same shape by the strength, and, when resized, pasted centred into the seed's
noise at the real size. Every draw uses a CPU generator seeded afresh, exactly as the plain path draws
the starting latents (DESIGN.md section 4), so strength 0 without resize is the plain seed's noise.

torch is imported inside the functions: only the diffusers backend loads this module, during a job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def slerp(strength: float, low: Any, high: Any) -> Any:
    """A1111's spherical interpolation of two (C, H, W) noises, taken along dim 1 as A1111 takes it.

    Where the two are nearly parallel it falls back to A1111's linear mix, `low * strength + high *
    (1 - strength)` (its order, kept so the rare case reproduces too).
    """
    import torch

    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cosine = (low_unit * high_unit).sum(1)
    if cosine.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    angle = torch.acos(cosine)
    sine = torch.sin(angle)
    towards_low = (torch.sin((1.0 - strength) * angle) / sine).unsqueeze(1)
    towards_high = (torch.sin(strength * angle) / sine).unsqueeze(1)
    return towards_low * low + towards_high * high


def _randn(seed: int, shape: tuple[int, ...]) -> Any:
    import torch

    return torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed))[0]


def _paste_centred(small: Any, seed: int, shape: tuple[int, int, int]) -> Any:
    """The seed's noise at `shape` with `small` over its centre, cropped where `small` is larger."""
    canvas = _randn(seed, shape)
    _, small_h, small_w = small.shape
    dy, dx = (shape[1] - small_h) // 2, (shape[2] - small_w) // 2
    h, w = min(small_h, shape[1]), min(small_w, shape[2])
    to_y, to_x = max(dy, 0), max(dx, 0)
    from_y, from_x = max(-dy, 0), max(-dx, 0)
    canvas[:, to_y:to_y + h, to_x:to_x + w] = small[:, from_y:from_y + h, from_x:from_x + w]
    return canvas


def initial_noise(
    seeds: Sequence[int],
    subseeds: Sequence[int],
    strength: float,
    shape: tuple[int, int, int],
    resize_from: tuple[int, int] | None = None,
) -> Any:
    """The batch's starting noise (B, C, H, W), float32 on the CPU, before the scheduler's scaling.

    `shape` is one image's latent shape; `resize_from` the latent (height, width) to draw the seed at.
    """
    import torch

    channels = shape[0]
    drawn = (channels, *resize_from) if resize_from else shape
    images = []
    for seed, subseed in zip(seeds, subseeds, strict=True):
        noise = _randn(seed, drawn)
        if strength:
            noise = slerp(strength, noise, _randn(subseed, drawn))
        if drawn != shape:
            noise = _paste_centred(noise, seed, shape)
        images.append(noise)
    return torch.stack(images)
