"""RGT upscalers (Recursive Generalization Transformer, and RGT-S), Marble's own implementation, built
from the shape the header tells (desktop.engine.library.upscaler_rgt) so the file's tensors load strictly
by their published names.

What RGT shares with DAT is DAT's code (desktop.engine.backends.upscale_transformers): the two-branch
window attention with its position-bias MLP, the spatial-gate feed-forward network, the closing convs.
What is RGT's own lives here: the local attention's depth-wise conv on v (in place of DAT's interaction
maps), the recursive-generalization attention (RG-SA) of the odd blocks, and the per-block `gamma`.

RG-SA shrinks the image by a strided 4x4 depth-wise conv applied at least twice (more on large inputs:
the count grows with log4 of the size), so an input is padded to at least 16 px a side (as spandrel's
size requirement does: mirrored, then repeated) and, when one side is far longer than the other, the short
side up to what the recursion needs; the result is cropped back. Tiles of any size therefore run.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

import math
from typing import Any

from desktop.engine.backends.upscale_transformers import dat_frame, dat_parts, dual_window_attention
from desktop.engine.library.upscaler import UpscalerInfo

# RG-SA's summary: each recursion a 4x4 stride-4 depth-wise conv; at least this many, as the published
# test configuration fixes (training used fewer; fewer at test time would change what the summary is).
_MIN_RECURSIONS = 2
_MIN_SIDE = 16  # one recursion's worth of 4 x 4 at the smallest count: the network's size requirement


def recursions(height: int, width: int) -> int:
    """How many times RG-SA shrinks an image of this size: log4 of each side over 16, rounded down, the
    larger of the two, at least 2 (the published evaluation rule)."""
    return max(int(math.log(height // _MIN_SIDE, 4)), int(math.log(width // _MIN_SIDE, 4)), _MIN_RECURSIONS)


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The smallest size >= (height, width) the network runs on: 16 px a side, and each side at least
    4^recursions so that every recursion has a pixel left to shrink."""
    height, width = max(height, _MIN_SIDE), max(width, _MIN_SIDE)
    side = 4 ** recursions(height, width)
    return max(height, side), max(width, side)


def build_rgt(info: UpscalerInfo) -> Any:
    """An RGT network for `info` (layout "rgt"), its modules named as the published weights."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None and hasattr(shape, "reduced")
    dim, split = info.features, shape.split
    parts = dat_parts()

    class LocalAttention(nn.Module):
        """L-SA: DAT's two-branch window attention, plus a 3x3 depth-wise conv of v added to its output."""

        def __init__(self, heads: int, shifted: bool) -> None:
            super().__init__()
            self.shifted = shifted
            self.qkv = nn.Linear(dim, dim * 3, bias=shape.qkv_bias)
            self.proj = nn.Linear(dim, dim)
            # The second branch's window is the first's turned a quarter.
            self.attns = nn.ModuleList([
                parts.Branch(dim // 2, heads // 2, split[0], split[1]),
                parts.Branch(dim // 2, heads // 2, split[1], split[0]),
            ])  # fmt: skip
            self.get_v = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(x).view(b, n, 3, c).permute(2, 0, 1, 3)
            attended = dual_window_attention(self.attns, qkv, h, w, split, self.shifted)
            local = self.get_v(qkv[2].transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            return self.proj(attended + local)

    class RecursiveAttention(nn.Module):
        """RG-SA: every pixel attends to a small summary of the whole image (the image shrunk 4x per
        recursion, then a depth-wise and a 1x1 conv to `reduced` channels), whose values get a
        depth-wise conv position encoding (cpe) on the summary's grid."""

        def __init__(self, heads: int) -> None:
            super().__init__()
            reduced, self.heads = shape.reduced, heads
            # The published temperature: (head width x reduced / width) ** -0.5, the query's head width.
            self.scale = (dim // heads * (reduced / dim)) ** -0.5
            self.reduction1 = nn.Conv2d(dim, dim, 4, 4, groups=dim)
            self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
            self.conv = nn.Conv2d(dim, reduced, 1)
            self.norm_act = nn.Sequential(nn.LayerNorm(reduced), nn.GELU())
            self.q = nn.Linear(dim, reduced, bias=shape.qkv_bias)
            self.k = nn.Linear(reduced, reduced, bias=shape.qkv_bias)
            self.v = nn.Linear(reduced, dim, bias=shape.qkv_bias)
            self.cpe = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            b, n, c = x.shape
            summary = x.transpose(1, 2).reshape(b, c, h, w)
            for _ in range(recursions(h, w)):  # the same conv each time: the recursion of the name
                summary = self.reduction1(summary)
            sh, sw = summary.shape[-2:]
            summary = self.norm_act(self.conv(self.dwconv(summary)).flatten(2).transpose(1, 2))  # (B, n', reduced)
            heads = self.heads
            q = self.q(x).view(b, n, heads, -1).transpose(1, 2)
            k = self.k(summary).view(b, sh * sw, heads, -1).transpose(1, 2)
            v = self.v(summary).view(b, sh * sw, heads, -1).transpose(1, 2)  # (B, heads, n', C / heads)
            weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
            grid = v.transpose(1, 2).reshape(b, sh * sw, c).transpose(1, 2).reshape(b, c, sh, sw)
            v = v + self.cpe(grid).view(b, heads, c // heads, sh * sw).transpose(-1, -2)
            return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))

    class Block(nn.Module):
        def __init__(self, group: int, index: int, heads: int) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.mlp = parts.FeedForward(dim, shape.hidden)
            if index % 2:
                self.attn: nn.Module = RecursiveAttention(heads)
            else:
                # DAT's shift pattern: blocks 2, 6, 10, ... of even groups, 0, 4, 8, ... of odd ones.
                shifted = (index - 2) % 4 == 0 and index > 0 if group % 2 == 0 else index % 4 == 0
                self.attn = LocalAttention(heads, shifted)
            self.gamma = nn.Parameter(torch.zeros(dim))

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            y = x + self.attn(self.norm1(x), h, w)
            y = y + self.mlp(self.norm2(y), h, w)
            # The block's input re-injected, weighted per channel (the paper's hybrid adaptive integration).
            return y + x * self.gamma

    return dat_frame(info, Block, pad=lambda image: pad_to_size(image, *padded_size(*image.shape[-2:])))


def pad_to_size(x: Any, height: int, width: int) -> Any:
    """`x` (N, C, H, W) padded at the bottom and right to (height, width): mirrored as far as the image
    allows, the rest repeats the edge (spandrel's padding for a size requirement; DCTLSA's too)."""
    import torch.nn.functional as F  # noqa: N812 - the usual name

    need_h, need_w = height - x.shape[-2], width - x.shape[-1]
    if not need_h and not need_w:
        return x
    mirror_h, mirror_w = min(need_h, x.shape[-2] - 1), min(need_w, x.shape[-1] - 1)
    x = F.pad(x, (0, mirror_w, 0, mirror_h), mode="reflect")
    return F.pad(x, (0, need_w - mirror_w, 0, need_h - mirror_h), mode="replicate")
