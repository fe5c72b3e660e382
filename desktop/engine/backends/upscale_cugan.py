"""Real-CUGAN, Marble's own implementation, built from the shape desktop.engine.library.upscaler_cugan reads.

Module and parameter names follow the file's (`unet1.conv2.seblock.conv1`, ...) so a strict load checks
every tensor. All convs are unpadded: each 3x3 trims a pixel per side, so the input is mirrored outwards
by exactly the border the two U-Nets consume (18 px at 2x, 14 at 3x, 19 at 4x, 38 for the fast network
before it unshuffles) and extended to the multiple their 2x2 downsamplings need (2; 4 at 3x and for the
fast network), then the result is cropped back to scale x the input. Mirroring an input smaller than
that border is done in repeated steps (then by repeating an edge of one pixel), so any image and tile
size runs; where the published network runs, one step is what it does.

torch is imported inside the functions: only the upscale path loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_cugan import WIDTH, CUGANShape

# The pro models see inputs squeezed into LOW..LOW+SPAN and give outputs in that range.
_PRO_LOW, _PRO_SPAN = 0.15, 0.7


def build_cugan(info: UpscalerInfo) -> Any:
    """The Real-CUGAN network for `info` (layout "cugan"), untrained: load the file's tensors into it
    strictly (without the pro models' `pro` flag, which the header has already read)."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, CUGANShape)
    shape, scale = info.detail, info.scale
    # The 4x and fast networks keep 64 channels through the U-Nets and shuffle them into pixels at the end.
    shuffled = scale == 4 or shape.fast

    def act(x: torch.Tensor) -> torch.Tensor:
        return functional.leaky_relu(x, 0.1)

    def trim(x: torch.Tensor, border: int) -> torch.Tensor:
        return x[:, :, border:-border, border:-border]

    class Gate(nn.Module):
        """Squeeze-excitation: each channel scaled by a sigmoid of the whole map's means, through an
        eighth as many channels."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels // 8, 1)
            self.conv2 = nn.Conv2d(channels // 8, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            means = x.mean((2, 3), keepdim=True)
            return x * torch.sigmoid(self.conv2(functional.relu(self.conv1(means))))

    class TwoConvs(nn.Module):
        """Two unpadded 3x3 convs with LeakyReLU after each, optionally gated (`seblock`)."""

        def __init__(self, cin: int, middle: int, cout: int, gated: bool) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(cin, middle, 3), nn.LeakyReLU(0.1),
                                      nn.Conv2d(middle, cout, 3), nn.LeakyReLU(0.1))  # fmt: skip
            self.seblock = Gate(cout) if gated else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv(x)
            return x if self.seblock is None else self.seblock(x)

    class ShallowUNet(nn.Module):
        """`unet1`: one 2x2 down and up level, then a transposed conv that upsamples by `factor`."""

        def __init__(self, cin: int, cout: int, factor: int) -> None:
            super().__init__()
            self.conv1 = TwoConvs(cin, 32, 64, gated=False)
            self.conv1_down = nn.Conv2d(64, 64, 2, 2)
            self.conv2 = TwoConvs(64, 128, 64, gated=True)
            self.conv2_up = nn.ConvTranspose2d(64, 64, 2, 2)
            self.conv3 = nn.Conv2d(64, 64, 3)
            # 2x: (n - 1) * 2 - 6 + 4 = 2n - 4 pixels; 3x: (n - 1) * 3 - 4 + 5 = 3n - 2.
            kernel, padding = (4, 3) if factor == 2 else (5, 2)
            self.conv_bottom = nn.ConvTranspose2d(64, cout, kernel, factor, padding)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skip = self.conv1(x)
            deep = act(self.conv2_up(self.conv2(act(self.conv1_down(skip)))))
            # The skip is 8 px wider than what came back up through the two trimmed convs.
            return self.conv_bottom(act(self.conv3(trim(skip, 4) + deep)))

    class DeepUNet(nn.Module):
        """`unet2`: two 2x2 down and up levels, gated, and a last unpadded conv (no upsampling)."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv1 = TwoConvs(channels, 32, 64, gated=False)
            self.conv1_down = nn.Conv2d(64, 64, 2, 2)
            self.conv2 = TwoConvs(64, 64, 128, gated=True)
            self.conv2_down = nn.Conv2d(128, 128, 2, 2)
            self.conv3 = TwoConvs(128, 256, 128, gated=True)
            self.conv3_up = nn.ConvTranspose2d(128, 128, 2, 2)
            self.conv4 = TwoConvs(128, 64, 64, gated=True)
            self.conv4_up = nn.ConvTranspose2d(64, 64, 2, 2)
            self.conv5 = nn.Conv2d(64, 64, 3)
            self.conv_bottom = nn.Conv2d(64, channels, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            top = self.conv1(x)
            middle = self.conv2(act(self.conv1_down(top)))
            bottom = act(self.conv3_up(self.conv3(act(self.conv2_down(middle)))))
            middle = act(self.conv4_up(self.conv4(trim(middle, 4) + bottom)))
            return self.conv_bottom(act(self.conv5(trim(top, 16) + middle)))

    def mirror(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
        """Reflection padding of any width: a reflection can add at most side - 1 pixels at a time."""
        while left or right or top or bottom:
            height, width = x.shape[2:]
            if height == 1 or width == 1:  # nothing to reflect: repeat the pixel
                return functional.pad(x, (left, right, top, bottom), mode="replicate")
            step = (min(left, width - 1), min(right, width - 1), min(top, height - 1), min(bottom, height - 1))
            x = functional.pad(x, step, mode="reflect")
            left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
        return x

    class RealCUGAN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            colours = info.in_channels * (4 if shape.fast else 1)
            inner = WIDTH if shuffled else info.out_channels
            self.unet1 = ShallowUNet(colours, inner, 3 if scale == 3 else 2)
            self.unet2 = DeepUNet(inner)
            if shuffled:
                self.conv_final = nn.Conv2d(WIDTH, 4 * info.out_channels, 3)
            border = 38 if shape.fast else {2: 18, 3: 14, 4: 19}[scale]
            self.border, self.multiple = border, 4 if scale == 3 or shape.fast else 2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = x.shape[2:]
            if shape.pro:
                x = x * _PRO_SPAN + _PRO_LOW
            b = self.border
            padded = mirror(x, b, b + -width % self.multiple, b, b + -height % self.multiple)
            if shape.fast:
                padded = functional.pixel_unshuffle(padded, 2)
            coarse = self.unet1(padded)
            # unet2 trims 20 px of unet1's output on each side (its convs and its skips).
            out = self.unet2(coarse) + trim(coarse, 20)
            if shuffled:
                out = functional.pixel_shuffle(trim(self.conv_final(out), 1), 2)
            out = out[:, :, : height * scale, : width * scale]
            if shuffled:
                out = out + functional.interpolate(x, scale_factor=scale, mode="nearest")
            return (out - _PRO_LOW) / _PRO_SPAN if shape.pro else out

    return RealCUGAN()
