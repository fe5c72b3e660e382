"""Plain convolutional upscalers (RCAN, Swift-SRGAN), Marble's own implementations, built from the shape
the header tells (desktop.engine.library.upscaler_cnn) so the file's tensors load strictly by their
published names.

Both are fully convolutional: any input size runs, so tiles need no padding, except RCAN's
pixel-unshuffle head, which needs sides divisible by its factor: the input is padded by mirroring (by
repeating the edge where a side is too short to mirror) and the result cropped back.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.library.upscaler import UpscalerInfo

# RCAN's mean shift: the DIV2K training set's mean colour on 0-255 values, which the published models
# subtract and add back in fixed 1x1 convs (stored in the file, so only the value range is implied).
_RGB_RANGE = 255.0


def build_rcan(info: UpscalerInfo) -> Any:
    """An RCAN network for `info` (layout "rcan"), its modules named as the published weights."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None and hasattr(shape, "squeeze")
    width, kernel = info.features, shape.kernel

    def conv(cin: int, cout: int, size: int = kernel) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, size, padding=size // 2)

    class ChannelGate(nn.Module):
        """Squeeze-and-excite: each channel scaled by a sigmoid of what the image's channel means say."""

        def __init__(self) -> None:
            super().__init__()
            self.conv_du = nn.Sequential(
                nn.Conv2d(width, shape.squeeze, 1), nn.ReLU(), nn.Conv2d(shape.squeeze, width, 1), nn.Sigmoid()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))

    class Residual(nn.Module):
        """x + body(x): both the attention blocks and the groups are this, with different bodies."""

        def __init__(self, *layers: nn.Module) -> None:
            super().__init__()
            self.body = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    def attention_block() -> nn.Module:
        return Residual(conv(width, width), nn.ReLU(), conv(width, width), ChannelGate())

    def group() -> nn.Module:
        return Residual(*(attention_block() for _ in range(shape.blocks)), conv(width, width))

    class RCAN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if shape.mean_shift:
                # 3 -> 3 1x1 convs whose weights (identity, minus or plus the mean) come from the file.
                self.sub_mean, self.add_mean = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
            head: list[nn.Module] = [conv(info.in_channels * shape.unshuffle**2, width)]
            if shape.unshuffle > 1:
                head.insert(0, nn.PixelUnshuffle(shape.unshuffle))
            self.head = nn.Sequential(*head)
            self.body = nn.Sequential(*(group() for _ in range(shape.groups)), conv(width, width))
            upsampler: list[nn.Module] = []
            for factor in shape.stages:  # the upsampler's convs are 3x3 whatever the kernel elsewhere
                upsampler += [conv(width, width * factor * factor, 3), nn.PixelShuffle(factor)]
            self.tail = nn.Sequential(nn.Sequential(*upsampler), conv(width, info.out_channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, breadth = x.shape[2:]
            factor = shape.unshuffle
            pad_h, pad_w = -height % factor, -breadth % factor
            if pad_h or pad_w:
                mode = "reflect" if min(height, breadth) > factor else "replicate"
                x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
            if shape.mean_shift:
                x = self.sub_mean(x * _RGB_RANGE)
            features = self.head(x)
            x = self.tail(features + self.body(features))
            if shape.mean_shift:
                x = self.add_mean(x) / _RGB_RANGE
            return x[:, :, : height * info.scale, : breadth * info.scale]

    return RCAN()


def build_swiftsrgan(info: UpscalerInfo) -> Any:
    """A Swift-SRGAN generator for `info` (layout "swiftsrgan"), its modules named as the published weights."""
    import torch
    from torch import nn

    width = info.features

    class Separable(nn.Module):
        """A depth-wise k x k conv then a 1x1 across channels: the cheap stand-in for SRGAN's full convs."""

        def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True) -> None:
            super().__init__()
            self.depthwise = nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=bias)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pointwise(self.depthwise(x))

    class Stage(nn.Module):
        """Separable conv, BatchNorm (or none, then the conv has biases), PReLU. The published layout gives
        every stage a PReLU, also those it never applies (the residual blocks' second, the closing one):
        their weights are in the file, so they are built, and `activate` says whether one is used."""

        def __init__(self, cin: int, cout: int, kernel: int, norm: bool, activate: bool) -> None:
            super().__init__()
            self.cnn = Separable(cin, cout, kernel, bias=not norm)
            self.bn = nn.BatchNorm2d(cout) if norm else nn.Identity()
            self.act = nn.PReLU(cout)
            self.activate = activate

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn(self.cnn(x))
            return self.act(x) if self.activate else x

    class ResidualBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1 = Stage(width, width, 3, norm=True, activate=True)
            self.block2 = Stage(width, width, 3, norm=True, activate=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.block2(self.block1(x))

    class Doubling(nn.Module):
        """One 2x stage: a separable conv to 4x the channels, a pixel shuffle, a PReLU."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = Separable(width, width * 4, 3)
            self.ps = nn.PixelShuffle(2)
            self.act = nn.PReLU(width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.ps(self.conv(x)))

    class SwiftSRGAN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.initial = Stage(info.in_channels, width, 9, norm=False, activate=True)
            self.residual = nn.Sequential(*(ResidualBlock() for _ in range(info.blocks)))
            self.convblock = Stage(width, width, 3, norm=True, activate=False)
            self.upsampler = nn.Sequential(*(Doubling() for _ in range(info.scale.bit_length() - 1)))
            self.final_conv = Separable(width, info.out_channels, 9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first = self.initial(x)
            features = self.convblock(self.residual(first)) + first
            # tanh's -1..1 mapped to the 0..1 image range.
            return (torch.tanh(self.final_conv(self.upsampler(features))) + 1) / 2

    return SwiftSRGAN()
