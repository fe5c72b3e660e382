"""SPAN and (Real)PLKSR, Marble's own implementations, built from the shape
desktop.engine.library.upscaler_efficient reads.

Each Conv3XC keeps the file's tensors under the file's names (so a strict load checks every one) and runs
as the single 3x3 convolution they fuse into: skip (1x1, centred in 3x3) + chain (1x1 -> 3x3 -> 1x1).
The fusion is exact algebra on the weights, done once on the first call, so a tiled upscale does not
redo it per tile. The file's stored `eval_conv` is its own earlier fusion; like the reference
implementation, Marble recomputes the kernel from the branches rather than trust it.

The channel LayerNorm (`channel_norm`) and DySample (`dysample`) are module-level builders: MoSR
(desktop.engine.backends.upscale_mosr) uses them too.

torch is imported inside the functions: only the upscale path loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_efficient import PLKSR_NORM_GROUPS, PLKSRShape, SPANShape, dysample_groups

# The training set's mean colour (DIV2K), subtracted from the input (SPAN's, SeemoRe's); not in the file.
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
_SPAN_RANGE = 255.0


def build_span(info: UpscalerInfo) -> Any:
    """The SPAN network for `info` (layout "span"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, SPANShape)
    normalised = info.detail.normalised

    class Conv3XC(nn.Module):
        """A 1x1 skip beside a 1x1 -> 3x3 -> 1x1 chain twice as wide inside; runs as their fused 3x3 conv."""

        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            self.sk = nn.Conv2d(c_in, c_out, 1)
            self.conv = nn.Sequential(nn.Conv2d(c_in, 2 * c_in, 1), nn.Conv2d(2 * c_in, 2 * c_out, 3),
                                      nn.Conv2d(2 * c_out, c_out, 1))  # fmt: skip
            self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)  # the file's own fusion; loaded, not used
            self._fused: tuple[torch.Tensor, torch.Tensor] | None = None

        def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
            if self._fused is None:
                first, middle, last = self.conv
                w1, w2, w3 = first.weight[:, :, 0, 0], middle.weight, last.weight[:, :, 0, 0]
                # out = w3 . (w2 * (w1 . x + b1) + b2) + b3, with x zero-padded before the first 1x1 (as the
                # chain is trained): the b1 term then reaches every tap of the 3x3, border included.
                kernel = torch.einsum("on,nmhw,mi->oihw", w3, w2, w1)
                kernel[:, :, 1, 1] += self.sk.weight[:, :, 0, 0]
                inner = middle.bias + torch.einsum("nmhw,m->n", w2, first.bias)
                bias = last.bias + w3 @ inner + self.sk.bias
                self._fused = (kernel.detach(), bias.detach())
            return self._fused

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            kernel, bias = self.fused()
            return functional.conv2d(x, kernel, bias, padding=1)

    class Block(nn.Module):
        """SPAN's attention block: three convs with SiLU between, the output gated by sigmoid(out) - 0.5."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.c1_r, self.c2_r, self.c3_r = Conv3XC(width, width), Conv3XC(width, width), Conv3XC(width, width)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # The first conv's output leaves the block *after* its SiLU: the published code activates it in
            # place, and the trained merge layer expects it so.
            first = functional.silu(self.c1_r(x))
            third = self.c3_r(functional.silu(self.c2_r(first)))
            return (third + x) * (torch.sigmoid(third) - 0.5), first

    class SPAN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            width = info.features
            if not normalised:
                self.register_buffer("no_norm", torch.zeros(1))
            self.conv_1 = Conv3XC(info.in_channels, width)
            for index in range(1, 7):
                setattr(self, f"block_{index}", Block(width))
            self.conv_cat = nn.Conv2d(4 * width, width, 1)
            self.conv_2 = Conv3XC(width, width)
            self.upsampler = nn.Sequential(nn.Conv2d(width, info.out_channels * info.scale**2, 3, padding=1),
                                           nn.PixelShuffle(info.scale))  # fmt: skip
            self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if normalised:
                x = (x - self.mean.to(x.dtype)) * _SPAN_RANGE
            features = self.conv_1(x)
            out, _ = self.block_1(features)
            first_block = out
            for index in range(2, 6):
                out, _ = getattr(self, f"block_{index}")(out)
            out, sixth_first = self.block_6(out)
            merged = self.conv_cat(torch.cat([features, self.conv_2(out), first_block, sixth_first], 1))
            # No denormalisation: the published models are trained to output 0..1 directly.
            return self.upsampler(merged)

    return SPAN()


def build_plksr(info: UpscalerInfo) -> Any:
    """The PLKSR or RealPLKSR network for `info` (layout "plksr"), untrained: load the file's tensors strictly."""
    import torch
    from torch import nn

    shape = info.detail
    assert isinstance(shape, PLKSRShape)
    width = info.features

    class LargeKernel(nn.Module):
        """One large-kernel conv over the first `partial` channels; the others pass through."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(shape.partial, shape.partial, shape.kernel, padding=shape.kernel // 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.conv(x[:, : shape.partial]), x[:, shape.partial :]], 1)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.Sigmoid())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.f(x)

    def mixer() -> nn.Sequential:
        first, last = {"CCM": (3, 1), "ICCM": (1, 3), "DCCM": (3, 3)}[shape.mixer]
        return nn.Sequential(nn.Conv2d(width, 2 * width, first, padding=first // 2),
                             nn.Mish() if shape.real else nn.GELU(),
                             nn.Conv2d(2 * width, width, last, padding=last // 2))  # fmt: skip

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if shape.real and shape.layer_norm:
                self.layer_norm = channel_norm(width)
            # The paper's code spells it "channe_mixer"; RealPLKSR's does not: the files follow each.
            setattr(self, "channel_mixer" if shape.real else "channe_mixer", mixer())
            self.lk = LargeKernel()
            if shape.attention:
                self.attn = Attention()
            self.refine = nn.Conv2d(width, width, 1)
            if shape.real and not shape.layer_norm:
                self.norm = nn.GroupNorm(PLKSR_NORM_GROUPS, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.layer_norm(x) if hasattr(self, "layer_norm") else x
            out = getattr(self, "channel_mixer" if shape.real else "channe_mixer")(out)
            out = self.lk(out)
            if shape.attention:
                out = self.attn(out)
            out = self.refine(out)
            if hasattr(self, "norm"):
                out = self.norm(out)
            return out + x

    class PLKSR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(info.in_channels, width, 3, padding=1)]
            layers += [Block() for _ in range(info.blocks)]
            if shape.real:
                layers.append(nn.Identity())  # the training dropout's place: the last conv keeps its index
            layers.append(nn.Conv2d(width, info.out_channels * info.scale**2, 3, padding=1))
            self.feats = nn.Sequential(*layers)
            channels, scale = info.out_channels * info.scale**2, info.scale
            # RealPLKSR samples its 3 x scale^2 output channels and has no closing conv at 1x.
            self.to_img = (
                dysample(channels, info.out_channels, scale, dysample_groups(scale), end_conv=scale != 1)
                if shape.dysample else nn.PixelShuffle(scale)
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # The network learns the residual over the input repeated into every sub-pixel (nearest upscale).
            return self.to_img(self.feats(x) + x.repeat_interleave(info.scale**2, dim=1))

    return PLKSR()


def channel_norm(width: int) -> Any:
    """A LayerNorm over the channels of each pixel of an NCHW map (eps 1e-6), as RealPLKSR and MoSR train it;
    its tensors are `weight` and `bias`."""
    import torch
    from torch import nn

    class ChannelNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(width))
            self.bias = nn.Parameter(torch.zeros(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centred = x - x.mean(1, keepdim=True)
            normed = centred / torch.sqrt(centred.pow(2).mean(1, keepdim=True) + 1e-6)
            return self.weight[:, None, None] * normed + self.bias[:, None, None]

    return ChannelNorm()


def dysample(channels: int, out_channels: int, scale: int, groups: int, end_conv: bool = True) -> Any:
    """DySample ("Learning to Upsample by Learning to Sample", 2023), as RealPLKSR, MoSR, MoESR and FDAT use it: each of
    `groups` groups of the `channels` input channels is sampled at scale x scale points per input pixel,
    placed at learned offsets around the sub-pixel centres; then (`end_conv`) a 1x1 conv to `out_channels`.
    Its tensors are named as both architectures' files name them (offset, scope, end_conv, init_pos)."""
    import torch
    from torch import nn
    from torch.nn import functional

    class DySample(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            points = 2 * groups * scale**2  # an (x, y) offset per group and sub-pixel
            self.offset = nn.Conv2d(channels, points, 1)
            self.scope = nn.Conv2d(channels, points, 1, bias=False)
            if end_conv:
                self.end_conv = nn.Conv2d(channels, out_channels, 1)
            # The sub-pixel centres relative to the pixel's, x then y, repeated per group; the file stores the
            # same values, which the strict load then puts here.
            centres = (torch.arange(scale) - (scale - 1) / 2) / scale
            grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"))  # (2, scale, scale): x, y
            self.register_buffer("init_pos", grid.reshape(2, 1, -1).repeat(1, groups, 1).reshape(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, _, height, width = x.shape
            offset = self.offset(x) * self.scope(x).sigmoid() * 0.5 + self.init_pos
            # Pixel centres in pixels, x then y, plus the offsets; then to grid_sample's -1..1 units.
            ys, xs = torch.meshgrid(torch.arange(height, dtype=x.dtype) + 0.5, torch.arange(width, dtype=x.dtype) + 0.5,
                                    indexing="ij")  # fmt: skip
            base = torch.stack([xs, ys]).to(x.device)[None, :, None]  # (1, 2, 1, H, W)
            size = torch.tensor([width, height], dtype=x.dtype, device=x.device).view(1, 2, 1, 1, 1)
            where = 2 * (base + offset.view(batch, 2, -1, height, width)) / size - 1
            # Each group's scale x scale points per pixel become its own pixels of the output grid.
            where = functional.pixel_shuffle(where.reshape(batch, -1, height, width), scale)
            where = where.view(batch, 2, groups, scale * height, scale * width).permute(0, 2, 3, 4, 1)
            sampled = functional.grid_sample(
                x.reshape(batch * groups, -1, height, width), where.reshape(batch * groups, scale * height,
                                                                            scale * width, 2),
                mode="bilinear", padding_mode="border", align_corners=False,
            ).view(batch, -1, scale * height, scale * width)  # fmt: skip
            return self.end_conv(sampled) if end_conv else sampled

    return DySample()
