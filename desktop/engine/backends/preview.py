"""Predicted clean latents -> a small RGB picture, by a linear map per architecture.

A full VAE decode costs more than a whole denoising step; this costs a 4x3 matrix product, so the
preview can run at every step. Factors as published by InvokeAI (Apache-2.0).
"""

from __future__ import annotations

import numpy as np

_SD_FACTORS = np.array(
    [
        [0.3444, 0.1385, 0.0670],
        [0.1247, 0.4027, 0.1494],
        [-0.3192, 0.2513, 0.2103],
        [-0.1307, -0.1874, -0.7445],
    ],
    dtype=np.float32,
)
_SDXL_FACTORS = np.array(
    [
        [0.3816, 0.4930, 0.5320],
        [-0.3753, 0.1631, 0.1739],
        [0.1770, 0.3588, -0.2048],
        [-0.4350, -0.2644, -0.4289],
    ],
    dtype=np.float32,
)

_FACTORS = {"sd1": _SD_FACTORS, "sd2": _SD_FACTORS, "sdxl": _SDXL_FACTORS}


def latents_to_rgb(latents: np.ndarray, family: str) -> np.ndarray:
    """(4, H, W) float latents of one image -> an owned (H, W, 3) uint8 array.

    The linear map yields roughly [-1, 1]; values outside are clipped, as every tool's preview does.
    """
    if latents.ndim != 3 or latents.shape[0] != 4:
        raise ValueError(f"expected latents of shape (4, H, W), got {latents.shape}")
    factors = _FACTORS.get(family, _SD_FACTORS)
    rgb = np.einsum("chw,cr->hwr", latents.astype(np.float32, copy=False), factors)
    return np.ascontiguousarray(((rgb + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
