"""CRAFT upscalers (Cross-Refinement Adaptive Fusion Transformer), Marble's own implementation, built from
the shape the header tells (desktop.engine.library.upscaler_craft) so the file's tensors load strictly by
their published names.

The rectangle-window attention is DAT's branch (desktop.engine.backends.upscale_transformers.dat_parts):
the same position-bias MLP, windows and scaling; CRAFT shifts every second block by half a window and,
unlike DAT, masks nothing across the wrapped edge. What is CRAFT's own lives here: the high-frequency
block, the fusion block's channel attention and gated feed-forward, the groups and the frame.

The published network pads its input by mirroring to the next whole 16 px window past its size (a full
extra window when the size is already whole; the fusion attention spans the whole padded image, so the
amount matters) and crops the result. Marble pads the same way, to a multiple of the rectangle windows
too, and mirrors repeatedly when an image is shorter than the padding, so tiles of any size run.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from desktop.engine.backends.upscale_transformers import dat_parts
from desktop.engine.library.upscaler import UpscalerInfo

_WINDOW = 16  # the published padding window (not in the file: every CRAFT is run with it)
_DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # the training set's mean colour, taken off the input and put back
# The position tables the files carry (derived from the window): Marble's branches make their own.
DERIVED = ("relative_position_index_h", "relative_position_index_v", "biases_h", "biases_v")


def craft_split_from_biases(state: dict[str, Any], info: UpscalerInfo) -> UpscalerInfo:
    """`info` with the window's orientation the file's table holds: the last row of `biases_h` is
    (height - 1, width - 1) of the first branch's window; the header only gives the two sides."""
    shape, table = info.detail, state.get("biases_h")
    if table is None or not hasattr(shape, "fusion_hidden"):
        return info
    height, width = (int(v) + 1 for v in table[-1].tolist())
    if {height, width} != set(shape.split):  # type: ignore[union-attr]
        return info
    return dataclasses.replace(info, detail=dataclasses.replace(shape, split=(height, width)))


def mirror_pad(x: Any, multiple: int) -> Any:
    """(N, C, H, W) padded at the bottom and right to the next multiple of `multiple` past each side
    (always some padding) by mirroring, repeated while the image is shorter than its padding."""
    import torch

    height, width = x.shape[-2:]
    for dim, size in ((2, height), (3, width)):
        target = (size // multiple + 1) * multiple
        while x.shape[dim] < target:
            x = torch.cat([x, torch.flip(x, [dim])], dim)
        x = x.narrow(dim, 0, target)
    return x


def build_craft(info: UpscalerInfo) -> Any:
    """A CRAFT network for `info` (layout "craft"), its modules named as the published weights."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None and hasattr(shape, "fusion_hidden")
    dim, split = info.features, shape.split
    Branch = dat_parts().Branch

    class ChannelNorm(nn.Module):
        """LayerNorm over the channels of an image (N, C, H, W); `body` as the published name."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class WindowBlock(nn.Module):
        """Two-branch rectangle-window attention (half the channels each, the second branch's window
        turned a quarter) plus a depth-wise conv of v, then an MLP; `shifted` rolls the windows by half."""

        def __init__(self, heads: int, shifted: bool) -> None:
            super().__init__()
            self.shifted = shifted
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, dim * 3, bias=shape.qkv_bias)
            self.proj = nn.Linear(dim, dim)
            self.get_v = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
            self.attns = nn.ModuleList([
                Branch(dim // 2, heads // 2, split[0], split[1]), Branch(dim // 2, heads // 2, split[1], split[0])
            ])  # fmt: skip
            self.mlp = nn.Sequential()  # its parts by name: mlp.fc1, mlp.fc2
            self.mlp.fc1, self.mlp.act = nn.Linear(dim, shape.hidden), nn.GELU()
            self.mlp.fc2 = nn.Linear(shape.hidden, dim)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(self.norm1(x)).view(b, n, 3, c).permute(2, 0, 1, 3)
            grid = qkv.reshape(3, b, h, w, c)
            halves = []
            for i, branch in enumerate(self.attns):
                part = grid[..., i * c // 2 : (i + 1) * c // 2]
                shift = (branch.wh // 2, branch.ww // 2) if self.shifted else (0, 0)
                part = torch.roll(part, (-shift[0], -shift[1]), (2, 3))
                out = branch(part.reshape(3, b, n, c // 2), h, w, None)
                halves.append(torch.roll(out, shift, (1, 2)).reshape(b, n, c // 2))
            local = self.get_v(qkv[2].transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = x + self.proj(torch.cat(halves, 2) + local)
            return x + self.mlp(self.norm2(x))

    class HighFrequencyBlock(nn.Module):
        """Half the channels through a 3x3 conv, the other half through a 3x3 max-pool and a 1x1 conv
        (edges and textures), both GELU'd, mixed by a 1x1 conv and added back."""

        def __init__(self) -> None:
            super().__init__()
            half = dim // 2
            self.conv, self.fc = nn.Conv2d(half, half, 3, 1, 1), nn.Conv2d(half, half, 1)
            self.last_fc = nn.Conv2d(dim, dim, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            local, high = x.chunk(2, 1)
            high = nn.functional.max_pool2d(high, 3, 1, 1)
            mixed = torch.cat([nn.functional.gelu(self.conv(local)), nn.functional.gelu(self.fc(high))], 1)
            return x + self.last_fc(mixed)

    class ChannelAttention(nn.Module):
        """The high features query the low ones across channels: per head, a channels x channels map
        of cosine similarities over all pixels, scaled by a learned temperature."""

        def __init__(self, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
            self.q, self.kv = nn.Conv2d(dim, dim, 1, bias=False), nn.Conv2d(dim, dim * 2, 1, bias=False)
            self.q_dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
            self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, 1, 1, groups=dim * 2, bias=False)
            self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

        def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
            b, c, h, w = low.shape
            q = self.q_dwconv(self.q(high)).reshape(b, self.heads, c // self.heads, h * w)
            k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in self.kv_dwconv(self.kv(low)).chunk(2, 1))
            q, k = nn.functional.normalize(q, dim=-1), nn.functional.normalize(k, dim=-1)
            attention = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(-1)
            return self.project_out((attention @ v).reshape(b, c, h, w))

    class GatedFeedForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            wide = shape.fusion_hidden * 2
            self.project_in = nn.Conv2d(dim, wide, 1, bias=False)
            self.dwconv = nn.Conv2d(wide, wide, 3, 1, 1, groups=wide, bias=False)
            self.project_out = nn.Conv2d(shape.fusion_hidden, dim, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            value, gate = self.dwconv(self.project_in(x)).chunk(2, 1)
            return self.project_out(nn.functional.gelu(value) * gate)

    class FusionBlock(nn.Module):
        def __init__(self, heads: int) -> None:
            super().__init__()
            self.norm1, self.norm2 = ChannelNorm(), ChannelNorm()
            self.attn, self.ffn = ChannelAttention(heads), GatedFeedForward()

        def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
            x = low + self.attn(self.norm1(low), high)
            return x + self.ffn(self.norm2(x))

    class Units(nn.Module):
        """A group's units: the three kinds of block in parallel lists, as the published names keep them."""

        def __init__(self, depth: int, heads: int) -> None:
            super().__init__()
            self.srwa_blocks = nn.ModuleList(WindowBlock(heads, shifted=i % 2 == 1) for i in range(2 * depth))
            self.hfer_blocks = nn.ModuleList(HighFrequencyBlock() for _ in range(depth))
            self.hf_blocks = nn.ModuleList(FusionBlock(heads) for _ in range(depth))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            for i, (high_block, fusion) in enumerate(zip(self.hfer_blocks, self.hf_blocks, strict=True)):
                low = x.flatten(2).transpose(1, 2)
                low = self.srwa_blocks[2 * i + 1](self.srwa_blocks[2 * i](low, h, w), h, w)
                x = fusion(low.transpose(1, 2).reshape(b, c, h, w), high_block(x))
            return x

    class Group(nn.Module):
        def __init__(self, depth: int, heads: int) -> None:
            super().__init__()
            self.residual_group, self.conv = Units(depth, heads), nn.Conv2d(dim, dim, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(self.residual_group(x))

    # Whole rectangle windows of both orientations inside the published 16 px padding window.
    multiple = math.lcm(_WINDOW, *split)

    class CRAFT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mean = _DIV2K_MEAN if info.in_channels == 3 else (0.0,) * info.in_channels
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.conv_first = nn.Conv2d(info.in_channels, dim, 3, 1, 1)
            self.layers = nn.ModuleList(Group(d, h) for d, h in zip(shape.depths, shape.heads, strict=True))
            self.norm = ChannelNorm()
            self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1) if shape.body_conv else nn.Identity()
            self.upsample = nn.Sequential(
                nn.Conv2d(dim, info.out_channels * info.scale**2, 3, 1, 1), nn.PixelShuffle(info.scale)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = x.shape[2:]
            x = self.conv_first(mirror_pad(x, multiple) - self.mean)
            features = x
            for layer in self.layers:
                features = layer(features)
            x = self.upsample(self.conv_after_body(self.norm(features)) + x) + self.mean
            return x[:, :, : height * info.scale, : width * info.scale]

    return CRAFT()
