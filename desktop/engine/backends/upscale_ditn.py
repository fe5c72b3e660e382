"""DITN upscalers, Marble's own implementation, built from the shape desktop.engine.library.upscaler_ditn
reads; module and parameter names follow the file's (`UFONE.U.ITLs.I.attn.qkv`, `UFONE.U.SALs.S.SDA.DConvs.1`,
...) so a strict load checks every tensor.

The UFONE unit cuts the image into 8x8 patches, so the input is padded at the bottom and right to a
multiple of 8 by mirroring (as the published network pads itself; mirrored again where the image is
narrower than the padding, where the published one fails) and the result cropped back.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_transformers import pad_to_multiple
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_ditn import PATCH, DITNShape


def build_ditn(info: UpscalerInfo) -> Any:
    """The DITN network for `info` (layout "ditn"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, DITNShape)
    shape, width, scale = info.detail, info.features, info.scale

    class FeedForward(nn.Module):
        """A 1x1 out to twice `hidden`, a depth-wise 3x3, one half through GELU gating the other, a 1x1 back."""

        def __init__(self) -> None:
            super().__init__()
            double = 2 * shape.hidden
            self.project_in = nn.Conv2d(width, double, 1, bias=shape.bias)
            self.dwconv = nn.Conv2d(double, double, 3, padding=1, groups=double, bias=shape.bias)
            self.project_out = nn.Conv2d(shape.hidden, width, 1, bias=shape.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate, value = self.dwconv(self.project_in(x)).chunk(2, 1)
            return self.project_out(functional.gelu(gate) * value)

    class ChannelAttention(nn.Module):
        """One head of attention between channels over a patch's pixels: q and k unit-normalised along the
        pixels, their channel-by-channel products times a learned temperature, softmax, applied to v."""

        def __init__(self) -> None:
            super().__init__()
            self.temperature = nn.Parameter(torch.ones(1, 1, 1))
            self.qkv = nn.Linear(width, 3 * width)
            self.project_out = nn.Conv2d(width, width, 1, bias=shape.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            # The linear maps each pixel's channels; channels-first rows of pixels afterwards.
            q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).transpose(1, 2).chunk(3, 1)
            q, k = functional.normalize(q, dim=-1), functional.normalize(k, dim=-1)
            weights = (q @ k.transpose(1, 2) * self.temperature).softmax(-1)
            return self.project_out((weights @ v).view(b, c, h, w))

    class LargeKernelGate(nn.Module):
        """The SAL's attention (the file's `SDA`): a 1x1 to twice the width, one half filtered by a depth-wise
        5x5, a depth-wise 7x7 dilated 3 (a 19 px reach) and a 1x1, gating the other half; a 1x1 and a
        learned per-channel scale."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(1, width, 1, 1))
            self.DConvs = nn.Sequential(  # noqa: N815 - the file's name
                nn.Conv2d(width, width, 5, padding=2, groups=width),
                nn.Conv2d(width, width, 7, padding=9, groups=width, dilation=3),
                nn.Conv2d(width, width, 1),
            )
            self.proj_first = nn.Sequential(nn.Conv2d(width, 2 * width, 1))
            self.proj_last = nn.Sequential(nn.Conv2d(width, width, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate, value = self.proj_first(x).chunk(2, 1)
            return self.proj_last(value * self.DConvs(gate)) * self.scale

    class Layer(nn.Module):
        """An ITL (`attention` a ChannelAttention, the file's `attn`) or a SAL (a LargeKernelGate, `SDA`):
        each of attention and feed-forward sees tanh of the features through its own 1x1 and is added back."""

        def __init__(self, attention: str) -> None:
            super().__init__()
            self.attention = attention
            setattr(self, attention, ChannelAttention() if attention == "attn" else LargeKernelGate())
            self.conv1, self.conv2 = nn.Conv2d(width, width, 1), nn.Conv2d(width, width, 1)
            self.ffn = FeedForward()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + getattr(self, self.attention)(self.conv1(torch.tanh(x)))
            return x + self.ffn(self.conv2(torch.tanh(x)))

    class Unit(nn.Module):
        """UFONE: the ITLs on each 8x8 patch as its own image, then the SALs on the folded-back whole."""

        def __init__(self) -> None:
            super().__init__()
            self.ITLs = nn.Sequential(*(Layer("attn") for _ in range(shape.itl)))  # noqa: N815 - the file's name
            self.SALs = nn.Sequential(*(Layer("SDA") for _ in range(shape.sal)))  # noqa: N815 - the file's name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            rows, cols = h // PATCH, w // PATCH
            patches = x.view(b, c, rows, PATCH, cols, PATCH).permute(0, 2, 4, 1, 3, 5)
            patches = self.ITLs(patches.reshape(b * rows * cols, c, PATCH, PATCH))
            x = patches.view(b, rows, cols, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
            return self.SALs(x)

    class DITN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sft = nn.Conv2d(info.in_channels, width, 3, padding=1)
            self.UFONE = nn.Sequential(*(Unit() for _ in range(shape.units)))  # noqa: N815 - the file's name
            self.conv_after_body = nn.Conv2d(width, width, 3, padding=1)
            self.upsample = nn.Sequential(nn.Conv2d(width, info.out_channels * scale * scale, 3, padding=1),
                                          nn.PixelShuffle(scale))  # fmt: skip

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            shallow = self.sft(pad_to_multiple(image, PATCH))
            out = self.upsample(self.conv_after_body(self.UFONE(shallow)) + shallow)
            return out[..., : height * scale, : side * scale]

    return DITN()
