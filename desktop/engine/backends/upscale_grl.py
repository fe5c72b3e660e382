"""GRL upscalers, Marble's own implementation, built from the shape the header tells
(desktop.engine.library.upscaler_grl) so the file's tensors load strictly by their published names.

Each block's qkv projection is split in two halves. One half attends in square windows (shifted by half a
window in even blocks), the other in stripes through anchors, the image shrunk by the anchor projection:
every anchor first gathers from its stripe's pixels, then every pixel reads from its stripe's anchors
(stripes transposed in odd blocks, shifted by half a stripe in blocks 2 and 3 of every four). Both use
SwinV2's cosine attention -- a per-head temperature capped at 100 and position biases from an MLP over
log-spaced offsets, 16 * sigmoid -- with offsets between a stripe and its smaller anchor grid centred as
the published code centres them.

The image is padded to a multiple of the largest window or stripe as the published code pads it (mirrored,
or with zeros where the image is too small to mirror) and the output is cropped back, so any tile size runs.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

import math
from typing import Any

from desktop.engine.backends.upscale_transformers import (
    _RGB_MEAN,
    _closing_conv,
    _unwindow,
    _windows,
    region_ids,
    squeeze_attention,
    window_bias_rows,
    window_merge,
    window_partition,
    window_shift_mask,
)
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_grl import GRLShape

_LOGIT_CAP = math.log(100.0)  # SwinV2's cap on the log temperature
_BIAS_RANGE = 16.0  # the bias MLP's output squashed into (0, 16)


def _offset_table(wh: int, ww: int, down: int) -> Any:
    """(rows, cols, 2) log-spaced offsets for a wh x ww window attending to its (wh/down x ww/down) anchor
    window (down 1: a window to itself): offsets span -(a-1)-(w-a)//2 .. (w-1)-(w-a)//2 per axis, scaled to
    +-8 by the positive end, then sign * log2(1 + |offset|) / 3."""
    import torch

    axes = []
    for size in (wh, ww):
        anchor = size // down
        high = size - 1 - (size - anchor) // 2
        low = -(anchor - 1) - (size - anchor) // 2
        axes.append(torch.arange(low, high + 1, dtype=torch.float32) / high)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1) * 8
    return torch.sign(grid) * torch.log2(grid.abs() + 1.0) / 3.0


def _offset_rows(wh: int, ww: int, down: int, to_anchor: bool) -> Any:
    """For each (query, key) pair, the _offset_table entry (flattened) of their offset: pixels -> anchors
    when `to_anchor`, anchors -> pixels otherwise. Both grids start at (0, 0), as in the published code."""
    import torch

    def coords(h: int, w: int) -> torch.Tensor:
        return torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)

    ah, aw = wh // down, ww // down
    pixels, anchors = coords(wh, ww), coords(ah, aw)
    queries, keys, start = (pixels, anchors, (ah - 1, aw - 1)) if to_anchor else (anchors, pixels, (wh - 1, ww - 1))
    diff = queries[:, :, None] - keys[:, None, :]
    return (diff[0] + start[0]) * (aw + ww - 1) + diff[1] + start[1]


def _cross_mask(h: int, w: int, stripe: tuple[int, int], down: int) -> Any:
    """(windows, N pixels, N anchors): -100 between a shifted stripe's pixels and the anchors of its
    shifted anchor window that came from different regions of the unshifted image."""
    sh, sw = stripe
    pixels = region_ids(h, w, sh, sw, sh // 2, sw // 2)
    anchors = region_ids(h // down, w // down, sh // down, sw // down, sh // 2 // down, sw // 2 // down)
    return (pixels[:, :, None] != anchors[:, None, :]).float() * -100.0


def build_grl(info: UpscalerInfo) -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name
    from torch import nn

    shape = info.detail
    assert isinstance(shape, GRLShape)
    dim, half, down = info.features, info.features // 2, shape.down
    window, stripe = shape.window, shape.stripe

    def to_image(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    def to_tokens(image: torch.Tensor) -> torch.Tensor:
        return image.flatten(2).transpose(1, 2)

    def separable(cin: int, cout: int, kernel: int, stride: int, bias: bool) -> nn.Sequential:
        """A depth-wise conv then a 1x1 conv."""
        return nn.Sequential(
            nn.Conv2d(cin, cin, kernel, stride, kernel // 2, groups=cin, bias=bias), nn.Conv2d(cin, cout, 1, bias=bias)
        )

    class Transform(nn.Module):
        """Turns cosine similarities into attention logits: temperature, position bias, shift mask."""

        def __init__(self, heads: int) -> None:
            super().__init__()
            self.logit_scale = nn.Parameter(torch.zeros(heads, 1, 1))
            self.cpb_mlp = nn.Sequential(
                nn.Linear(2, shape.bias_width), nn.ReLU(inplace=True), nn.Linear(shape.bias_width, heads, bias=False)
            )

        def forward(self, scores: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, mask: Any) -> torch.Tensor:
            heads, n1, n2 = scores.shape[1:]
            scores = scores * torch.clamp(self.logit_scale, max=_LOGIT_CAP).exp()
            bias = self.cpb_mlp(table).view(-1, heads)[rows.reshape(-1)].view(n1, n2, heads).permute(2, 0, 1)
            scores = scores + _BIAS_RANGE * torch.sigmoid(bias)
            if mask is not None:
                windows = mask.shape[0]
                scores = (scores.view(-1, windows, heads, n1, n2) + mask[None, :, None]).view(-1, heads, n1, n2)
            return scores

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, transform: Transform, *bias: Any) -> torch.Tensor:
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        return torch.softmax(transform(scores, *bias), -1) @ v

    class WindowBranch(nn.Module):
        def __init__(self, heads: int, shifted: bool) -> None:
            super().__init__()
            self.heads, self.shift = heads, window // 2 if shifted else 0
            self.attn_transform = Transform(heads)

        def forward(self, qkv: torch.Tensor, h: int, w: int, buffers: dict) -> torch.Tensor:
            b = qkv.shape[0]
            grid = qkv.view(b, h, w, -1)
            if self.shift:
                grid = torch.roll(grid, (-self.shift, -self.shift), (1, 2))
            tokens = window_partition(grid, window)
            q, k, v = tokens.view(tokens.shape[0], tokens.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            mask = buffers["mask_w"] if self.shift else None
            out = attend(q, k, v, self.attn_transform, buffers["table_w"], buffers["rows_w"], mask)
            out = window_merge(out.transpose(1, 2).flatten(2), b, h, w, window)
            if self.shift:
                out = torch.roll(out, (self.shift, self.shift), (1, 2))
            return out.reshape(b, h * w, -1)

    class StripeBranch(nn.Module):
        def __init__(self, heads: int, transposed: bool, shifted: bool) -> None:
            super().__init__()
            self.heads, self.shifted = heads, shifted
            self.key = "v" if transposed else "h"
            self.stripe = stripe[::-1] if transposed else stripe
            self.attn_transform1 = Transform(heads)  # anchors gather from the stripe
            self.attn_transform2 = Transform(heads)  # the stripe reads the anchors

        def forward(self, qkv: torch.Tensor, anchor: torch.Tensor, h: int, w: int, buffers: dict) -> torch.Tensor:
            b = qkv.shape[0]
            (sh, sw), key = self.stripe, self.key
            grid = qkv.view(b, h, w, -1)
            if self.shifted:
                grid = torch.roll(grid, (-(sh // 2), -(sw // 2)), (1, 2))
                anchor = torch.roll(anchor, (-(sh // 2 // down), -(sw // 2 // down)), (1, 2))
            tokens = _windows(grid.permute(0, 3, 1, 2), sh, sw)
            anchors = _windows(anchor.permute(0, 3, 1, 2), sh // down, sw // down)
            q, k, v = tokens.view(tokens.shape[0], tokens.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            anchors = anchors.view(anchors.shape[0], anchors.shape[1], self.heads, -1).transpose(1, 2)
            table = buffers[f"table_{key}"]
            to_pixels = buffers[f"mask_{key}"].transpose(1, 2) if self.shifted else None
            to_anchors = buffers[f"mask_{key}"] if self.shifted else None
            gathered = attend(anchors, k, v, self.attn_transform1, table, buffers[f"rows_{key}_a2w"], to_pixels)
            out = attend(q, anchors, gathered, self.attn_transform2, table, buffers[f"rows_{key}_w2a"], to_anchors)
            out = _unwindow(out.transpose(1, 2).flatten(2), sh, sw, h, w)
            if self.shifted:
                out = torch.roll(out, (sh // 2, sw // 2), (1, 2))
            return out.reshape(b, h * w, -1)

    class Pooled(nn.Module):
        """Anchors by average pooling, then a linear projection to half the width."""

        def __init__(self) -> None:
            super().__init__()
            self.reduction = nn.Linear(dim, half)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.reduction(F.avg_pool2d(image, down, down).permute(0, 2, 3, 1))

    class Merge(nn.Module):
        """Patch merging: each 2x2 block's four pixels side by side, projected linearly (no bias)."""

        def __init__(self, cin: int) -> None:
            super().__init__()
            self.reduction = nn.Linear(4 * cin, half, bias=False)

        def forward(self, grid: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H/2, W/2, half)
            parts = (grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2])
            return self.reduction(torch.cat(parts, -1))

    class Anchor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            steps = []
            for step in range(shape.anchor_steps):
                cin = dim if step == 0 else half
                one = shape.anchor_steps == 1
                kernel, stride = (down + 1, down) if one else (3, 2)
                if shape.anchor == "avgpool":
                    steps.append(Pooled())
                elif shape.anchor == "patchmerging":
                    steps.append(Merge(cin))
                elif shape.anchor == "conv2d":
                    steps.append(nn.Conv2d(cin, half, kernel, stride, kernel // 2))
                else:
                    steps.append(separable(cin, half, kernel, stride, True))
            self.body = nn.ModuleList(steps)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:  # -> (B, h/down, w/down, half)
            if shape.anchor == "avgpool":
                return self.body[0](to_image(x, h, w))
            if shape.anchor == "patchmerging":
                grid = x.view(x.shape[0], h, w, -1)
                for step in self.body:
                    grid = step(grid)
                return grid
            image = to_image(x, h, w)
            for step in self.body:
                image = step(image)
            return image.permute(0, 2, 3, 1)

    class Projection(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if shape.qkv == "linear":
                self.body: nn.Module = nn.Linear(dim, 3 * dim, bias=shape.qkv_bias)
            else:
                self.body = separable(dim, 3 * dim, 3, 1, shape.qkv_bias)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            return self.body(x) if shape.qkv == "linear" else to_tokens(self.body(to_image(x, h, w)))

    class Mixed(nn.Module):
        def __init__(self, index: int, window_heads: int, stripe_heads: int) -> None:
            super().__init__()
            self.qkv = Projection()
            self.anchor = Anchor()
            self.window_attn = WindowBranch(window_heads, index % 2 == 0)
            self.stripe_attn = StripeBranch(stripe_heads, index % 2 == 1, index % 4 in (2, 3))
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor, h: int, w: int, buffers: dict) -> torch.Tensor:
            for_window, for_stripe = self.qkv(x, h, w).split(3 * half, -1)
            stripes = self.stripe_attn(for_stripe, self.anchor(x, h, w), h, w, buffers)
            return self.proj(torch.cat((self.window_attn(for_window, h, w, buffers), stripes), -1))

    class Local(nn.Module):
        """GRL-B's conv branch: two 3x3 convs (a quarter width between), then channel attention."""

        def __init__(self) -> None:
            super().__init__()
            self.cab = nn.Sequential(
                nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.GELU(), nn.Conv2d(dim // 4, dim, 3, 1, 1),
                squeeze_attention(dim, dim // 18),  # the published reduction
            )

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            return to_tokens(self.cab(to_image(x, h, w)))

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, shape.hidden), nn.GELU(), nn.Linear(shape.hidden, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        """Norms after each branch (SwinV2's order); GRL-B's conv branch added beside the attention."""

        def __init__(self, index: int, window_heads: int, stripe_heads: int) -> None:
            super().__init__()
            self.attn = Mixed(index, window_heads, stripe_heads)
            self.norm1 = nn.LayerNorm(dim)
            if shape.local:
                self.conv = Local()
            self.mlp = Mlp()
            self.norm2 = nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor, h: int, w: int, buffers: dict) -> torch.Tensor:
            y = x + self.norm1(self.attn(x, h, w, buffers))
            if shape.local:
                y = y + self.conv(x, h, w)
            return y + self.norm2(self.mlp(y))

    class ChannelLinear(nn.Linear):
        """The "linear" closing: one linear map over the channels of each pixel."""

        def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(image.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def closing() -> nn.Module:
        if shape.conv == "1conv1x1":
            return nn.Conv2d(dim, dim, 1)
        if shape.conv == "linear":
            return ChannelLinear(dim, dim)
        return _closing_conv(nn, dim, shape.conv)

    class Stage(nn.Module):
        def __init__(self, depth: int, window_heads: int, stripe_heads: int) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block(i, window_heads, stripe_heads) for i in range(depth))
            self.conv = closing()

        def forward(self, x: torch.Tensor, h: int, w: int, buffers: dict) -> torch.Tensor:
            y = x
            for block in self.blocks:
                y = block(y, h, w, buffers)
            return x + to_tokens(self.conv(to_image(y, h, w)))

    def position_buffers(h: int, w: int) -> dict:
        """The tables, offset rows and shift masks every block of an h x w image shares."""
        buffers = {
            "table_w": _offset_table(window, window, 1),
            "rows_w": window_bias_rows(window),
            "mask_w": window_shift_mask(h, w, window, window // 2),
        }
        for key, size in (("h", stripe), ("v", stripe[::-1])):
            buffers[f"table_{key}"] = _offset_table(*size, down)
            buffers[f"rows_{key}_a2w"] = _offset_rows(*size, down, False)
            buffers[f"rows_{key}_w2a"] = _offset_rows(*size, down, True)
            buffers[f"mask_{key}"] = _cross_mask(h, w, size, down)
        return buffers

    pad_to = max(window, *stripe)

    class GRL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mean = _RGB_MEAN if info.in_channels == 3 else (0.0,) * info.in_channels
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.conv_first = nn.Conv2d(info.in_channels, dim, 3, 1, 1)
            self.norm_start = nn.LayerNorm(dim)
            self.layers = nn.ModuleList(
                Stage(d, wh, sh)
                for d, wh, sh in zip(shape.depths, shape.window_heads, shape.stripe_heads, strict=True)
            )
            self.norm_end = nn.LayerNorm(dim)
            self.conv_after_body = closing()
            feat, out = shape.features, info.out_channels
            if shape.upsampler in ("pixelshuffle", "nearest+conv"):
                self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            if shape.upsampler == "pixelshuffle":
                stages: list[nn.Module] = []
                for factor in shape.stages:
                    stages += [nn.Conv2d(feat, feat * factor * factor, 3, 1, 1), nn.PixelShuffle(factor)]
                self.upsample = nn.Module()
                self.upsample.up = nn.Sequential(*stages)
                self.conv_last = nn.Conv2d(feat, out, 3, 1, 1)
            elif shape.upsampler == "pixelshuffledirect":
                self.upsample = nn.Module()
                scale = info.scale
                self.upsample.up = nn.Sequential(nn.Conv2d(dim, out * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
            elif shape.upsampler == "nearest+conv":
                self.conv_up1, self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1), nn.Conv2d(feat, feat, 3, 1, 1)
                self.conv_hr, self.conv_last = nn.Conv2d(feat, feat, 3, 1, 1), nn.Conv2d(feat, out, 3, 1, 1)
            else:
                self.conv_last = nn.Conv2d(dim, out, 3, 1, 1)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2:]
            need_h, need_w = -height % pad_to, -width % pad_to
            # The published code mirrors, and pads with zeros where the image is too small to mirror.
            fits = need_h < height and need_w < width
            x = F.pad(image, (0, need_w, 0, need_h), mode="reflect" if fits else "constant") - self.mean
            first = self.conv_first(x)
            h, w = first.shape[-2:]
            # Tables and masks in the network's float type (a half-precision run adds them to its scores).
            buffers = {
                key: value.to(x.device, x.dtype) if value.is_floating_point() else value.to(x.device)
                for key, value in position_buffers(h, w).items()
            }
            tokens = self.norm_start(to_tokens(first))
            for stage in self.layers:
                tokens = stage(tokens, h, w, buffers)
            features = self.conv_after_body(to_image(self.norm_end(tokens), h, w)) + first
            out = self._tail(x, features)
            return (out + self.mean)[:, :, : height * info.scale, : width * info.scale]

        def _tail(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            if shape.upsampler == "pixelshuffle":
                return self.conv_last(self.upsample.up(self.conv_before_upsample(features)))
            if shape.upsampler == "pixelshuffledirect":
                return self.upsample.up(features)
            if shape.upsampler == "nearest+conv":
                y = self.conv_before_upsample(features)
                for conv in (self.conv_up1, self.conv_up2):
                    y = F.leaky_relu(conv(F.interpolate(y, scale_factor=2, mode="nearest")), 0.2)
                return self.conv_last(F.leaky_relu(self.conv_hr(y), 0.2))
            # 1x restoration: a residual over the input where the channels match.
            return x + self.conv_last(features) if info.in_channels == info.out_channels else self.conv_last(features)

    return GRL()
