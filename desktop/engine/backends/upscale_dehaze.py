"""MixDehazeNet, Marble's own implementation, built from the shape desktop.engine.library.upscaler_dehaze reads;
module and parameter names follow the file's (`layer1.blocks.0.conv3_19`, `fusion1.mlp.0`, `patch_split1.proj.0`,
...) so a strict load checks every tensor.

As published, the network works on -1..1 values: Marble maps the 0..1 image in (x 2 - 1) and the result back
(x 0.5 + 0.5), as the authors' test and predict scripts do. (spandrel's descriptor maps only the output back
and feeds 0..1; Marble follows the published pipeline the weights were trained with.)

Its convs pad by mirroring (`padding_mode="reflect"`), and the quarter-size stage's 19 px dilated conv needs
at least 10 px there: the input is mirrored at the bottom and right to a multiple of 4 (as the published
network pads itself) and to at least 40 px (spandrel's minimum), and the result cropped back, so any tile
size runs; an image of 40 px or more runs exactly as published.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_transformers import pad_to_multiple
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_dehaze import MINIMUM, MixDehazeNetShape


def build_mixdehazenet(info: UpscalerInfo) -> Any:
    """The MixDehazeNet network for `info` (layout "mixdehazenet"), untrained: load the file's tensors into it
    strictly."""
    import torch
    from torch import nn

    assert isinstance(info.detail, MixDehazeNetShape)
    shape = info.detail

    def mirrored(cin: int, cout: int, kernel: int, **options: Any) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel, padding_mode="reflect", **options)

    class MixBlock(nn.Module):
        """Two residual halves over batch-normalised features. First: a 1x1 and a mirrored 5x5, then three
        dilated (x3) depth-wise convs of 7, 5 and 3 taps (reaches 19, 13 and 7 px) side by side, mixed by an
        MLP (`mlp`). Second, side by side: a globally gated value branch (`Wv` x `Wg`), channel attention
        (`ca`) and pixel attention (`pa`) on the features, mixed by another MLP (`mlp2`)."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
            self.conv1 = nn.Conv2d(dim, dim, 1)
            self.conv2 = mirrored(dim, dim, 5, padding=2)
            self.conv3_19 = mirrored(dim, dim, 7, padding=9, groups=dim, dilation=3)
            self.conv3_13 = mirrored(dim, dim, 5, padding=6, groups=dim, dilation=3)
            self.conv3_7 = mirrored(dim, dim, 3, padding=3, groups=dim, dilation=3)
            self.Wv = nn.Sequential(nn.Conv2d(dim, dim, 1), mirrored(dim, dim, 3, padding=1, groups=dim))
            self.Wg = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1), nn.Sigmoid())
            self.ca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1), nn.GELU(),
                                    nn.Conv2d(dim, dim, 1), nn.Sigmoid())  # fmt: skip
            self.pa = nn.Sequential(nn.Conv2d(dim, dim // 8, 1), nn.GELU(), nn.Conv2d(dim // 8, 1, 1), nn.Sigmoid())
            self.mlp = nn.Sequential(nn.Conv2d(dim * 3, dim * 4, 1), nn.GELU(), nn.Conv2d(dim * 4, dim, 1))
            self.mlp2 = nn.Sequential(nn.Conv2d(dim * 3, dim * 4, 1), nn.GELU(), nn.Conv2d(dim * 4, dim, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv2(self.conv1(self.norm1(x)))
            x = x + self.mlp(torch.cat((self.conv3_19(y), self.conv3_13(y), self.conv3_7(y)), 1))
            y = self.norm2(x)
            return x + self.mlp2(torch.cat((self.Wv(y) * self.Wg(y), self.ca(y) * y, self.pa(y) * y), 1))

    class Stage(nn.Module):
        def __init__(self, dim: int, depth: int) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*(MixBlock(dim) for _ in range(depth)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks(x)

    class Conv(nn.Module):
        """A mirrored 3x3 conv (`proj`), stride 1 into the network, 2 between stages."""

        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.proj = mirrored(cin, cout, 3, stride=stride, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    class Shuffle(nn.Module):
        """A conv to cout x factor^2 channels and a pixel shuffle (`proj.0`, `proj.1`)."""

        def __init__(self, cin: int, cout: int, factor: int, kernel: int) -> None:
            super().__init__()
            conv = mirrored(cin, cout * factor * factor, kernel, padding=kernel // 2)
            self.proj = nn.Sequential(conv, nn.PixelShuffle(factor))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    class Fusion(nn.Module):
        """Selective-kernel fusion of two maps: their sum pooled to a per-channel descriptor, through a small
        MLP to one weight per map and channel, softmaxed across the two maps, weighting their sum."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            hidden = max(dim // 8, 4)
            self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1, bias=False), nn.ReLU(),
                                     nn.Conv2d(hidden, dim * 2, 1, bias=False))  # fmt: skip

        def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
            b, c = first.shape[:2]
            maps = torch.stack((first, second), 1)
            weights = self.mlp(maps.sum(1).mean((2, 3), keepdim=True)).view(b, 2, c, 1, 1).softmax(1)
            return (maps * weights).sum(1)

    class MixDehazeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w, d = shape.widths, shape.depths
            self.patch_embed = Conv(info.in_channels, w[0], 1)
            self.layer1, self.skip1 = Stage(w[0], d[0]), nn.Conv2d(w[0], w[0], 1)
            self.patch_merge1 = Conv(w[0], w[1], 2)
            self.layer2, self.skip2 = Stage(w[1], d[1]), nn.Conv2d(w[1], w[1], 1)
            self.patch_merge2 = Conv(w[1], w[2], 2)
            self.layer3 = Stage(w[2], d[2])
            self.patch_split1, self.fusion1 = Shuffle(w[2], w[3], 2, 1), Fusion(w[3])
            self.layer4 = Stage(w[3], d[3])
            self.patch_split2, self.fusion2 = Shuffle(w[3], w[4], 2, 1), Fusion(w[4])
            self.layer5 = Stage(w[4], d[4])
            self.patch_unembed = Shuffle(w[4], 4, 1, 3)  # a gain and an RGB offset

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            x = pad_to_multiple(image * 2 - 1, 4, MINIMUM)
            full = self.layer1(self.patch_embed(x))
            half = self.layer2(self.patch_merge1(full))
            up = self.patch_split1(self.layer3(self.patch_merge2(half)))
            up = self.layer4(self.fusion1(up, self.skip2(half)) + up)
            up = self.patch_split2(up)
            up = self.layer5(self.fusion2(up, self.skip1(full)) + up)
            gain, offset = self.patch_unembed(up).split((1, 3), 1)
            return ((gain * x - offset + x) * 0.5 + 0.5)[..., :height, :side]

    return MixDehazeNet()
