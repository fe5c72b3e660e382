"""Seamless tiling, as A1111's `Tiling` does it: every 2D convolution pads circularly for one job.

With circular padding each convolution sees the opposite edge beyond the border, so the UNet and the
VAE decoder produce an image whose left edge continues its right and its top its bottom. The modes are
put back afterwards, even on error or cancel, because the loaded modules serve the next job.

torch is imported inside the function: only the diffusers backend loads this module, during a job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def circular_padding(modules: Iterable[Any]) -> Iterator[int]:
    """Within the block every Conv2d under `modules` pads circularly; yields how many were switched."""
    import torch

    switched: list[tuple[Any, str]] = []
    try:
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, torch.nn.Conv2d) and layer.padding_mode != "circular":
                    switched.append((layer, layer.padding_mode))
                    # Conv2d pads by padding_mode itself whenever it is not "zeros": no weights change.
                    layer.padding_mode = "circular"
        yield len(switched)
    finally:
        for layer, mode in switched:
            layer.padding_mode = mode
