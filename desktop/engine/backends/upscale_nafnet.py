"""NAFNet, Marble's own implementation, built from the shape desktop.engine.library.upscaler_nafnet reads.

Module and parameter names follow the file's (`encoders.L.B.conv1`, `middle_blks.B.sca.1`, `ups.L.0`, ...)
so a strict load checks every tensor. The U-Net halves the size once per encoder level, so the input is
padded at the bottom and right with zeros to a multiple of 2^levels, as the published network pads, and
the result cropped back: any tile size runs, and a size already a multiple runs exactly as published.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from desktop.engine.backends.upscale_efficient import channel_norm
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_nafnet import NAFNetShape


def nafnet_block(width: int) -> Any:
    """One NAFNet block: a gated depth-wise conv branch with simplified channel attention, then a gated
    1x1 feed-forward, each over channel-normalised features and added back scaled per channel (`beta`,
    `gamma`). "Activation-free": the gates (one half of the channels times the other) replace activations."""
    import torch
    from torch import nn

    def gate(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=1)
        return first * second

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            wide = 2 * width  # both branches widen by 2 before the gate halves them again
            self.norm1, self.norm2 = channel_norm(width), channel_norm(width)
            self.conv1 = nn.Conv2d(width, wide, 1)
            self.conv2 = nn.Conv2d(wide, wide, 3, padding=1, groups=wide)
            # The channel attention: a 1x1 over the global mean; slot 0 (the pooling) has no weights.
            self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1))
            self.conv3 = nn.Conv2d(width, width, 1)
            self.conv4 = nn.Conv2d(width, wide, 1)
            self.conv5 = nn.Conv2d(width, width, 1)
            self.beta = nn.Parameter(torch.zeros(1, width, 1, 1))
            self.gamma = nn.Parameter(torch.zeros(1, width, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            branch = gate(self.conv2(self.conv1(self.norm1(x))))
            y = x + self.conv3(branch * self.sca(branch)) * self.beta
            return y + self.conv5(gate(self.conv4(self.norm2(y)))) * self.gamma

    return Block()


def build_nafnet(info: UpscalerInfo) -> Any:
    """The NAFNet network for `info` (layout "nafnet"), untrained: load the file's tensors into it strictly."""
    assert isinstance(info.detail, NAFNetShape)
    return unet_frame(info, info.detail, nafnet_block)


def unet_frame(info: UpscalerInfo, shape: NAFNetShape, make_block: Callable[[int], Any]) -> Any:
    """NAFNet's U-Net (`intro`, `encoders`/`downs`, `middle_blks`, `ups`/`decoders`, `ending`, the input added
    back) around blocks made by `make_block(width)`: NAFNet's own, or KBNet-S's."""
    import torch
    from torch import nn
    from torch.nn import functional

    width = info.features

    def run(blocks: int, level_width: int) -> nn.Sequential:
        return nn.Sequential(*(make_block(level_width) for _ in range(blocks)))

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.intro = nn.Conv2d(info.in_channels, width, 3, padding=1)
            self.ending = nn.Conv2d(width, info.out_channels, 3, padding=1)
            widths = [width << level for level in range(len(shape.encoders))]
            self.encoders = nn.ModuleList(run(n, w) for n, w in zip(shape.encoders, widths, strict=True))
            self.downs = nn.ModuleList(nn.Conv2d(w, 2 * w, 2, stride=2) for w in widths)
            self.middle_blks = run(shape.middle, width << len(widths))
            # Decoder level L undoes encoder level (levels - 1 - L): back up from the bottom.
            rising = widths[::-1]
            self.ups = nn.ModuleList(
                nn.Sequential(nn.Conv2d(2 * w, 4 * w, 1, bias=False), nn.PixelShuffle(2)) for w in rising
            )
            self.decoders = nn.ModuleList(run(n, w) for n, w in zip(shape.decoders, rising, strict=True))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            unit = shape.padding_unit
            # Zeros, as the published network pads (not a mirror): its training saw this border.
            padded = functional.pad(image, (0, -side % unit, 0, -height % unit))
            x = self.intro(padded)
            skips = []
            for encoder, down in zip(self.encoders, self.downs, strict=True):
                x = encoder(x)
                skips.append(x)
                x = down(x)
            x = self.middle_blks(x)
            for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
                x = decoder(up(x) + skip)
            return (self.ending(x) + padded)[..., :height, :side]

    return UNet()
