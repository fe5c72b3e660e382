"""DRCT, Marble's own implementation, built from the shape desktop.engine.library.upscaler_drct reads.

Module and parameter names follow the file's (`layers.G.swinK...`, `layers.G.adjustK`) so a strict load
checks every tensor. SwinIR's frame (desktop.engine.backends.upscale_transformers) with dense groups:
block k of a group reads the group's input concatenated with the earlier blocks' outputs, each squeezed
to gc channels by a 1x1 conv and a leaky ReLU; the fifth squeeze goes back to the full width and is
added to the group's input at 0.2. Its blocks differ in width, heads and MLP width, so they are built
here rather than by SwinIR's builder (one width throughout).

The published network needs inputs in whole windows; this one pads the image by mirroring up to a
multiple of the window (as SwinIR's here does) and crops the result, so any tile size runs.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_transformers import (
    _RGB_MEAN,
    pad_to_multiple,
    window_bias_rows,
    window_merge,
    window_partition,
    window_shift_mask,
)
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_drct import BLOCKS, DRCTShape

_DENSE_SCALE = 0.2  # the weight of a group's dense output added back to its input, fixed by the architecture


def build_drct(info: UpscalerInfo) -> Any:
    """The DRCT network for `info` (layout "drct"), untrained: load the file's tensors into it strictly
    (after desktop.engine.backends.upscale_transformers.loadable_state drops the derived buffers)."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, DRCTShape)
    shape, dim = info.detail, info.features
    window, shift = shape.window, shape.window // 2

    def partition(x: torch.Tensor) -> torch.Tensor:
        return window_partition(x, window)

    def merge(windows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        return window_merge(windows, b, h, w, window)

    class Attention(nn.Module):
        def __init__(self, width: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
            self.qkv = nn.Linear(width, 3 * width, bias=shape.qkv_bias)
            self.proj = nn.Linear(width, width)
            self.register_buffer("rows", window_bias_rows(window), persistent=False)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            count, tokens, width = x.shape
            q, k, v = self.qkv(x).reshape(count, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            scores = scores + self.relative_position_bias_table[self.rows].permute(2, 0, 1)
            if mask is not None:  # (windows, N, N), the same for each image of the batch
                scores = scores.view(-1, mask.shape[0], self.heads, tokens, tokens) + mask[None, :, None]
                scores = scores.flatten(0, 1)
            return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(count, tokens, width))

    class Mlp(nn.Module):
        def __init__(self, width: int, hidden: int) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(functional.gelu(self.fc1(x)))

    class Block(nn.Module):
        """A Swin block: windowed attention (shifted by half a window in `shifted` ones), then an MLP."""

        def __init__(self, width: int, heads: int, hidden: int, shifted: bool) -> None:
            super().__init__()
            self.shifted = shifted
            self.norm1, self.attn = nn.LayerNorm(width), Attention(width, heads)
            self.norm2, self.mlp = nn.LayerNorm(width), Mlp(width, hidden)

        def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
            b, _, c = x.shape
            y = self.norm1(x).view(b, h, w, c)
            if self.shifted:
                y = torch.roll(y, (-shift, -shift), (1, 2))
            y = merge(self.attn(partition(y), mask if self.shifted else None), b, h, w)
            if self.shifted:
                y = torch.roll(y, (shift, shift), (1, 2))
            x = x + y.reshape(b, h * w, c)
            return x + self.mlp(self.norm2(x))

    def to_image(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    class DenseGroup(nn.Module):
        """Five blocks of growing width (dim + k * gc), their outputs squeezed and carried densely."""

        def __init__(self, heads: tuple[int, ...]) -> None:
            super().__init__()
            for k in range(BLOCKS):
                width = dim + k * shape.growth
                # Blocks 2 and 4 (1-based) shift, when the file was trained with shifting at all.
                block = Block(width, heads[k], shape.hidden[k], shifted=shape.shifted and k % 2 == 1)
                self.add_module(f"swin{k + 1}", block)
                self.add_module(f"adjust{k + 1}", nn.Conv2d(width, dim if k == BLOCKS - 1 else shape.growth, 1))

        def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
            seen = [x]
            for k in range(1, BLOCKS + 1):
                block, adjust = getattr(self, f"swin{k}"), getattr(self, f"adjust{k}")
                squeezed = adjust(to_image(block(torch.cat(seen, -1), h, w, mask), h, w))
                if k < BLOCKS:
                    squeezed = functional.leaky_relu(squeezed, 0.2)
                seen.append(squeezed.flatten(2).transpose(1, 2))
            return seen[-1] * _DENSE_SCALE + x

    class PatchNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim) if shape.patch_norm else nn.Identity()

    class DRCT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(_RGB_MEAN).view(1, 3, 1, 1), persistent=False)
            self.conv_first = nn.Conv2d(info.in_channels, dim, 3, 1, 1)
            self.patch_embed = PatchNorm()
            self.layers = nn.ModuleList(DenseGroup(heads) for heads in shape.heads)
            self.norm = nn.LayerNorm(dim)
            self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1) if shape.residual == "1conv" else nn.Identity()
            feat = shape.features
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            stages: list[nn.Module] = []
            for factor in shape.stages:
                stages += [nn.Conv2d(feat, feat * factor * factor, 3, 1, 1), nn.PixelShuffle(factor)]
            self.upsample = nn.Sequential(*stages)
            self.conv_last = nn.Conv2d(feat, info.out_channels, 3, 1, 1)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2:]
            x = self.conv_first(pad_to_multiple(image, window) - self.mean)
            h, w = x.shape[-2:]
            # One mask for every shifted block: it depends only on the padded size.
            mask = window_shift_mask(h, w, window, shift).to(x) if shape.shifted else None
            tokens = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
            for group in self.layers:
                tokens = group(tokens, h, w, mask)
            features = self.conv_after_body(to_image(self.norm(tokens), h, w)) + x
            out = self.conv_last(self.upsample(self.conv_before_upsample(features))) + self.mean
            return out[:, :, : height * info.scale, : width * info.scale]

    return DRCT()
