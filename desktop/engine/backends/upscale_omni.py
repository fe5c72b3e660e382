"""OmniSR, Marble's own implementation, built from the shape desktop.engine.library.upscaler_omni reads.

Module and parameter names follow the file's (`residual_layer.R.residual_layer.B.layer.I...`) so a strict
load checks every tensor. Each Omni-SA block mixes features three ways at two reaches: an inverted
bottleneck conv with squeeze-excitation, then for a local window and for a dilated grid spanning the
whole image in turn: spatial self-attention, a gated conv feed-forward, channel self-attention and
another feed-forward. The input is zero-padded to whole windows (at least 16 px: the ESA gate's strided
conv and 7 px pooling need that much) and the output cropped back.

torch is imported inside the functions: only the upscale path loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_efficient import channel_norm
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_omni import OmniSRShape

_HEADS = 4  # both attentions use four heads in every OmniSR (the width over 4 per head)
_MIN_SIDE = 16


def build_omnisr(info: UpscalerInfo) -> Any:
    """The OmniSR network for `info` (layout "omnisr"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, OmniSRShape)
    shape, width, scale = info.detail, info.features, info.scale
    window = shape.window

    class Residual(nn.Module):
        """x + fn(norm(x)); `norm` a LayerNorm on channels-last windows or a ChannelNorm on maps."""

        def __init__(self, norm: nn.Module, fn: nn.Module) -> None:
            super().__init__()
            self.norm, self.fn = norm, fn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fn(self.norm(x))

    class Squeeze(nn.Module):
        """Squeeze-excitation: a per-channel gate from the mean of the map (the file's `gate.1`, `gate.3`)."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            hidden = channels // 4
            self.gate = nn.ModuleDict({"1": nn.Linear(channels, hidden, bias=False),
                                       "3": nn.Linear(hidden, channels, bias=False)})  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weights = self.gate["3"](functional.silu(self.gate["1"](x.mean((2, 3)))))
            return x * torch.sigmoid(weights)[:, :, None, None]

    class Bottleneck(nn.Module):
        """The inverted bottleneck (expansion 1): 1x1, GELU, depthwise 3x3, GELU, squeeze, 1x1, plus x."""

        def __init__(self) -> None:
            super().__init__()
            self.fn = nn.ModuleDict({"0": nn.Conv2d(width, width, 1),
                                     "2": nn.Conv2d(width, width, 3, padding=1, groups=width),
                                     "4": Squeeze(width), "5": nn.Conv2d(width, width, 1)})  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.fn
            return x + f["5"](f["4"](functional.gelu(f["2"](functional.gelu(f["0"](x))))))

    class WindowAttention(nn.Module):
        """Self-attention among a window's pixels (tokens: B' x w*w x C), with the relative-position bias."""

        def __init__(self) -> None:
            super().__init__()
            self.to_qkv = nn.Linear(width, 3 * width, bias=False)
            self.to_out = nn.ModuleDict({"0": nn.Linear(width, width, bias=False)})
            if shape.position_bias:
                self.rel_pos_bias = nn.Embedding((2 * window - 1) ** 2, _HEADS)
                rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
                rows, cols = rows.flatten(), cols.flatten()
                # Pixel i to pixel j as (row offset, column offset), each shifted to 0..2w-2, one table row.
                offsets = (rows[:, None] - rows[None] + window - 1) * (2 * window - 1) + cols[:, None] - cols[None]
                self.register_buffer("table_rows", offsets + window - 1, persistent=False)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            count, length, _ = tokens.shape
            q, k, v = (t.reshape(count, length, _HEADS, -1).transpose(1, 2) for t in self.to_qkv(tokens).chunk(3, -1))
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            if shape.position_bias:
                scores = scores + self.rel_pos_bias(self.table_rows).permute(2, 0, 1)
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(count, length, width)
            return self.to_out["0"](out)

    class GatedFeedForward(nn.Module):
        """1x1 to twice the width, depthwise 3x3, GELU(one half) x the other half, 1x1 back (no biases)."""

        def __init__(self) -> None:
            super().__init__()
            self.project_in = nn.Conv2d(width, 2 * width, 1, bias=False)
            self.dwconv = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width, bias=False)
            self.project_out = nn.Conv2d(width, width, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate, value = self.dwconv(self.project_in(x)).chunk(2, 1)
            return self.project_out(functional.gelu(gate) * value)

    class ChannelAttention(nn.Module):
        """Attention among channels (cosine similarity x a learned temperature per head), each channel's
        features being a window's pixels (local) or one pixel per window at the same offset (grid)."""

        def __init__(self, grid: bool) -> None:
            super().__init__()
            self.grid = grid
            self.temperature = nn.Parameter(torch.ones(_HEADS, 1, 1))
            self.qkv = nn.Conv2d(width, 3 * width, 1, bias=False)
            self.qkv_dwconv = nn.Conv2d(3 * width, 3 * width, 3, padding=1, groups=3 * width, bias=False)
            self.project_out = nn.Conv2d(width, width, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, _, h, w = x.shape
            rows, cols = h // window, w // window

            def split(t: torch.Tensor) -> torch.Tensor:
                # n, heads, d, rows, window, cols, window -> groups of channels x features
                t = t.reshape(n, _HEADS, width // _HEADS, rows, window, cols, window)
                order = (0, 4, 6, 1, 2, 3, 5) if self.grid else (0, 3, 5, 1, 2, 4, 6)
                features = rows * cols if self.grid else window * window
                return t.permute(order).reshape(n, -1, _HEADS, width // _HEADS, features)

            q, k, v = (split(t) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, 1))
            q, k = functional.normalize(q, dim=-1), functional.normalize(k, dim=-1)
            out = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(-1) @ v
            if self.grid:
                out = out.reshape(n, window, window, _HEADS, width // _HEADS, rows, cols).permute(0, 3, 4, 5, 1, 6, 2)
            else:
                out = out.reshape(n, rows, cols, _HEADS, width // _HEADS, window, window).permute(0, 3, 4, 1, 5, 2, 6)
            return self.project_out(out.reshape(n, width, h, w))

    def to_windows(x: torch.Tensor, grid: bool) -> torch.Tensor:
        """NCHW -> (n * windows) x w*w x C tokens: a local window, or a grid of pixels H/w apart."""
        n, c, h, w = x.shape
        rows, cols = h // window, w // window
        if grid:  # pixel (i * rows + r): window (r, .), position i
            t = x.reshape(n, c, window, rows, window, cols).permute(0, 3, 5, 2, 4, 1)
        else:  # pixel (r * window + i)
            t = x.reshape(n, c, rows, window, cols, window).permute(0, 2, 4, 3, 5, 1)
        return t.reshape(n * rows * cols, window * window, c)

    def from_windows(t: torch.Tensor, like: torch.Tensor, grid: bool) -> torch.Tensor:
        n, c, h, w = like.shape
        rows, cols = h // window, w // window
        t = t.reshape(n, rows, cols, window, window, c)
        order = (0, 5, 3, 1, 4, 2) if grid else (0, 5, 1, 3, 2, 4)
        return t.permute(order).reshape(n, c, h, w)

    class Block(nn.Module):
        """One Omni-SA block; `layer` keeps the file's indices (1, 3, 7, 9 were parameter-free reshapes)."""

        def __init__(self) -> None:
            super().__init__()
            layer = {"0": Bottleneck()}
            for attention, start in ((False, 2), (True, 8)):
                layer[str(start)] = Residual(nn.LayerNorm(width), WindowAttention())
                layer[str(start + 2)] = Residual(channel_norm(width), GatedFeedForward())
                layer[str(start + 3)] = Residual(channel_norm(width), ChannelAttention(grid=attention))
                layer[str(start + 4)] = Residual(channel_norm(width), GatedFeedForward())
            self.layer = nn.ModuleDict(layer)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layer["0"](x)
            for grid, start in ((False, 2), (True, 8)):
                x = from_windows(self.layer[str(start)](to_windows(x, grid)), x, grid)
                for index in (start + 2, start + 3, start + 4):
                    x = self.layer[str(index)](x)
            return x

    class Gate(nn.Module):
        """ESA: a sigmoid mask from a strided, max-pooled, upsampled view of the features (global reach)."""

        def __init__(self) -> None:
            super().__init__()
            inner = max(width // 4, 16)
            self.conv1, self.conv_f = nn.Conv2d(width, inner, 1), nn.Conv2d(inner, inner, 1)
            self.conv2, self.conv3 = nn.Conv2d(inner, inner, 3, stride=2), nn.Conv2d(inner, inner, 3, padding=1)
            self.conv4 = nn.Conv2d(inner, width, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            reduced = self.conv1(x)
            coarse = self.conv3(functional.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3))
            coarse = functional.interpolate(coarse, x.shape[2:], mode="bilinear", align_corners=False)
            return x * torch.sigmoid(self.conv4(coarse + self.conv_f(reduced)))

    class Group(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            members: list[nn.Module] = [Block() for _ in range(shape.blocks)]
            self.residual_layer = nn.Sequential(*members, nn.Conv2d(width, width, 1, bias=shape.bias))
            self.esa = Gate()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.esa(x + self.residual_layer(x))

    class OmniSR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input = nn.Conv2d(info.in_channels, width, 3, padding=1, bias=shape.bias)
            self.residual_layer = nn.Sequential(*(Group() for _ in range(shape.groups)))
            self.output = nn.Conv2d(width, width, 3, padding=1, bias=shape.bias)
            self.up = nn.Sequential(nn.Conv2d(width, info.out_channels * scale * scale, 3, padding=1, bias=shape.bias),
                                    nn.PixelShuffle(scale))  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[2:]
            padded_h = max(-(-h // window) * window, -(-_MIN_SIDE // window) * window)
            padded_w = max(-(-w // window) * window, -(-_MIN_SIDE // window) * window)
            x = functional.pad(x, (0, padded_w - w, 0, padded_h - h))
            features = self.input(x)
            out = self.up(self.output(self.residual_layer(features)) + features)
            return out[:, :, : h * scale, : w * scale]

    return OmniSR()
