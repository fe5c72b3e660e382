"""SeemoRe upscalers, Marble's own implementation, built from the shape the header tells
(desktop.engine.library.upscaler_seemore) so the file's tensors load strictly by their published names.

Shared with other networks here: the channel LayerNorm and the DIV2K mean colour (RealPLKSR's and SPAN's,
desktop.engine.backends.upscale_efficient), and the mirror-then-repeat padding (RGT's) that lets an input
smaller than the calibration's shrinks run: 16 px a side (4 for SeemoRe-L), padded and cropped back.

The router picks one expert per image from the whole image's mean features, so a tiled upscale routes
each tile on its own (as the reference does for each input it is given). Experts are chosen per image of
a batch; the reference's evaluation path assumes a batch of one.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_efficient import DIV2K_MEAN, channel_norm
from desktop.engine.backends.upscale_rgt import pad_to_size
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_seemore import SeemoReShape

_SHRINK = 4  # the calibration's depth-wise conv: 4x4, stride 4, no padding
_FEED_FORWARD_RATIO = 2  # the gated feed-forward's inner width over the features (fixed by the architecture)


def build_seemore(info: UpscalerInfo) -> Any:
    """The SeemoRe network for `info` (layout "seemore"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    shape = info.detail
    assert isinstance(shape, SeemoReShape)
    width = info.features

    class Striped(nn.Module):
        """A depth-wise 1 x k conv then a k x 1 one (`conv.0`, `conv.1`): a k x k reach at 2k weights."""

        def __init__(self, kernel: int) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(width, width, (1, kernel), padding=(0, kernel // 2), groups=width),
                nn.Conv2d(width, width, (kernel, 1), padding=(kernel // 2, 0), groups=width),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    class FeedForward(nn.Module):
        """1x1 conv to twice the width, GELU, halves: one gated by a 3x3 depth-wise conv of the other; 1x1, GELU."""

        def __init__(self) -> None:
            super().__init__()
            inner = _FEED_FORWARD_RATIO * width
            self.fn_1 = nn.Sequential(nn.Conv2d(width, inner, 1), nn.GELU())
            self.fn_2 = nn.Sequential(nn.Conv2d(inner // 2, width, 1), nn.GELU())
            self.gate = nn.Conv2d(inner // 2, inner // 2, 3, padding=1, groups=inner // 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            value, gate = self.fn_1(x).chunk(2, 1)
            return self.fn_2(value * self.gate(gate))

    class Expert(nn.Module):
        """A low-rank product: rank-r projections of the features and of the calibration map, multiplied, back."""

        def __init__(self, rank: int) -> None:
            super().__init__()
            self.conv_1, self.conv_2 = nn.Conv2d(width, rank, 1), nn.Conv2d(width, rank, 1)
            self.conv_3 = nn.Conv2d(rank, width, 1)

        def forward(self, x: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
            return self.conv_3(self.conv_1(x) * self.conv_2(calibration))

    class Experts(nn.Module):
        """The router (mean-pooled features, a bias-free linear layer, softmax) picks one expert per image,
        whose output, weighted by its probability, is added to the features."""

        def __init__(self) -> None:
            super().__init__()
            self.experts = nn.ModuleList(Expert(rank) for rank in shape.ranks)
            self.gate = nn.Module()
            # The router's linear layer sits at body.2 after a pooling and a reshape, which hold no tensors.
            self.gate.body = nn.Sequential(nn.Identity(), nn.Identity(), nn.Linear(width, len(shape.ranks), bias=False))

        def forward(self, x: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
            scores = self.gate.body(x.mean((2, 3))).float().softmax(1).to(x.dtype)
            weight, chosen = scores.max(1)
            picked = [self.experts[int(index)](x[i : i + 1], calibration[i : i + 1]) for i, index in enumerate(chosen)]
            return x + torch.cat(picked) * weight[:, None, None, None]

    class LocalMixer(nn.Module):
        """The mixture-of-experts block: features split into what the experts transform and what calibrates them."""

        def __init__(self) -> None:
            super().__init__()
            self.conv_1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                                        nn.Conv2d(width, 2 * width, 1))  # fmt: skip
            self.agg_conv = nn.Sequential(nn.Conv2d(width, width, _SHRINK, stride=_SHRINK, groups=width), nn.GELU())
            self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, width, 1))
            self.conv_2 = nn.Sequential(Striped(3), nn.GELU())
            self.moe_layer = Experts()
            self.proj = nn.Conv2d(width, width, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv_1(x)
            if shape.shuffle:  # interleave the two halves' channels before splitting them
                x = x.view(x.shape[0], 2, width, *x.shape[2:]).transpose(1, 2).reshape(x.shape)
            features, calibration = x.chunk(2, 1)
            summary = calibration
            for _ in range(shape.shrinks):
                summary = self.agg_conv(summary)
            summary = functional.interpolate(self.conv(summary), size=calibration.shape[2:], mode="bilinear",
                                             align_corners=False)  # fmt: skip
            return self.proj(self.moe_layer(self.conv_2(features), calibration + summary))

    class GlobalMixer(nn.Module):
        """A striped large-kernel depth-wise conv of one half of a 1x1 projection gating the other half."""

        def __init__(self) -> None:
            super().__init__()
            self.to_qv = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU())
            self.attn = Striped(shape.kernel)
            self.proj = nn.Conv2d(width, width, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            query, value = self.to_qv(x).chunk(2, 1)
            return self.proj(self.attn(query) * value)

    class Stage(nn.Module):
        """Pre-norm residual: x + mixer(norm(x)), then x + feed-forward(norm(x))."""

        def __init__(self, mixer: nn.Module) -> None:
            super().__init__()
            self.norm_1, self.block = channel_norm(width), mixer
            self.norm_2, self.ffn = channel_norm(width), FeedForward()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.block(self.norm_1(x))
            return x + self.ffn(self.norm_2(x))

    class Group(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.local_block, self.global_block = Stage(LocalMixer()), Stage(GlobalMixer())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.global_block(self.local_block(x))

    class SeemoRe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_1 = nn.Conv2d(info.in_channels, width, 3, padding=1)
            self.body = nn.ModuleList(Group() for _ in range(info.blocks))
            self.norm = channel_norm(width)
            self.conv_2 = nn.Conv2d(width, width, 3, padding=1)
            self.upsampler = nn.Sequential(nn.Conv2d(width, info.out_channels * info.scale**2, 3, padding=1),
                                           nn.PixelShuffle(info.scale))  # fmt: skip
            self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width_px = x.shape[2:]
            side = _SHRINK**shape.shrinks  # what the calibration's shrinks need to leave a pixel
            x = pad_to_size(x, max(height, side), max(width_px, side)) - self.mean.to(x.dtype)
            features = self.conv_1(x)
            out = features
            for group in self.body:
                out = group(out)
            out = self.upsampler(self.conv_2(self.norm(out)) + features) + self.mean.to(x.dtype)
            return out[:, :, : height * info.scale, : width_px * info.scale]

    return SeemoRe()
