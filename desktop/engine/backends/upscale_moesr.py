"""MoESR upscalers, Marble's own implementation, built from the shape the header tells
(desktop.engine.library.upscaler_moesr) so the file's tensors load strictly by their published names.

MoSR's gated block (desktop.engine.backends.upscale_mosr.gated_block) with an Inception depth-wise mixer
and a per-channel layer scale, DySample from RealPLKSR's code, and the mirror padding of the transformer
upscalers: the half-resolution stage needs even sides, so an odd input is mirrored by a pixel and the
result cropped back (as the reference does).

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

import math
from typing import Any

from desktop.engine.backends.upscale_efficient import dysample
from desktop.engine.backends.upscale_mosr import gated_block
from desktop.engine.backends.upscale_transformers import pad_to_multiple
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_moesr import MOESR_DYSAMPLE_GROUPS, MoESRShape

_STAGE_BLOCKS = 3  # gated blocks in each group's half-resolution stage (fixed by the architecture)
_STAGE_SLOPE = 0.1  # the half-resolution stage's LeakyReLU slope
_NEAREST_SLOPE = 0.2  # the nearest+conv upsampler's LeakyReLU slope
_SHUFFLE_SLOPE = 0.01  # the pixel-shuffle upsampler's (torch's default)


def build_moesr(info: UpscalerInfo) -> Any:
    """The MoESR network for `info` (layout "moesr"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn

    shape = info.detail
    assert isinstance(shape, MoESRShape)
    width, scale = info.features, info.scale

    class Inception(nn.Module):
        """Depth-wise convs over three `branch`-wide slices (square, 1 x band, band x 1); the rest passes."""

        def __init__(self) -> None:
            super().__init__()
            branch, square, band = shape.branch, shape.square, shape.band
            self.dwconv_hw = nn.Conv2d(branch, branch, square, padding=square // 2, groups=branch)
            self.dwconv_w = nn.Conv2d(branch, branch, (1, band), padding=(0, band // 2), groups=branch)
            self.dwconv_h = nn.Conv2d(branch, branch, (band, 1), padding=(band // 2, 0), groups=branch)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            branch = shape.branch
            kept, square, wide, tall = torch.split(x, [width - 3 * branch, branch, branch, branch], 1)
            return torch.cat([kept, self.dwconv_hw(square), self.dwconv_w(wide), self.dwconv_h(tall)], 1)

    def block(hidden: int) -> nn.Module:
        # The mixer sees all `width` of the hidden channels (the reference's conv ratio 1).
        return gated_block(width, hidden, width, Inception(), True)

    class HalfStage(nn.Module):
        """Conv to a quarter width, pixel unshuffle (back to `width` at half size), three gated blocks, conv,
        pixel shuffle; added to the input."""

        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Sequential(nn.Conv2d(width, width // 4, 3, padding=1), nn.PixelUnshuffle(2),
                                      nn.LeakyReLU(_STAGE_SLOPE))  # fmt: skip
            self.gated = nn.Sequential(*(block(shape.stage_hidden) for _ in range(_STAGE_BLOCKS)))
            self.up = nn.Sequential(nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2),
                                    nn.LeakyReLU(_STAGE_SLOPE))  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(self.gated(self.down(x))) + x

    class Group(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*(block(shape.hidden) for _ in range(shape.blocks)))
            self.msg = HalfStage()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.msg(self.blocks(x))

    class Upsampler(nn.Sequential):
        """The file's upsampler layers under their indices, and its seven-byte record of what they are."""

        def __init__(self, layers: list[nn.Module]) -> None:
            super().__init__(*layers)
            self.register_buffer("MetaUpsample", torch.zeros(7, dtype=torch.uint8))

    def upsampler_layers() -> list[nn.Module]:
        colours, kind = info.out_channels, shape.upsampler
        if kind == "dysample":
            return [dysample(width, colours, scale, MOESR_DYSAMPLE_GROUPS)]
        if kind == "conv":
            return [nn.Conv2d(width, colours, 3, padding=1)]
        if kind == "pixelshuffledirect":
            return [nn.Conv2d(width, colours * scale**2, 3, padding=1), nn.PixelShuffle(scale)]
        # Each stage a 2x (or the one 3x) step.
        steps = [3] if scale == 3 else [2] * int(math.log2(scale))
        if kind == "pixelshuffle":
            middle = shape.middle
            layers: list[nn.Module] = [nn.Conv2d(width, middle, 3, padding=1), nn.LeakyReLU(_SHUFFLE_SLOPE)]
            for step in steps:
                layers += [nn.Conv2d(middle, step * step * middle, 3, padding=1), nn.PixelShuffle(step)]
            return [*layers, nn.Conv2d(middle, colours, 3, padding=1)]
        layers = []
        for step in steps:  # "nearest+conv"
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.Upsample(scale_factor=step),
                       nn.LeakyReLU(_NEAREST_SLOPE)]  # fmt: skip
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(_NEAREST_SLOPE)]
        return [*layers, nn.Conv2d(width, colours, 3, padding=1)]

    class MoESR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_to_dim = nn.Conv2d(info.in_channels, width, 3, padding=1)
            self.blocks = nn.Sequential(*(Group() for _ in range(shape.groups)))
            self.upscale = Upsampler(upsampler_layers())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width_px = x.shape[2:]
            features = self.in_to_dim(pad_to_multiple(x, 2))
            out = self.upscale(self.blocks(features) + features)
            return out[:, :, : height * scale, : width_px * scale]

    return MoESR()
