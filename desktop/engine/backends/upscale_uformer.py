"""Uformer, Marble's own implementation, built from the shape desktop.engine.library.upscaler_uformer reads;
module and parameter names follow the file's (`encoderlayer_0.blocks.N.attn.qkv.to_q`, `dowsample_0.conv.0`,
`upsample_0.deconv.0`, ...) so a strict load checks every tensor (the position-index buffers some files
carry are recomputed here, not loaded).

A four-level U-Net over channels-last features: each level's blocks attend within windows (odd blocks'
windows shifted by half, as Swin does, with the shared shift mask) and feed forward through a plain MLP or a
depth-wise (LeFF) or full (FastLeFF) 3x3 conv between two linears; halving is a 4x4 stride-2 conv, doubling
a 2x2 transposed conv whose result is concatenated with the encoder's level. The network adds its input to
its output.

The published network reads its tokens back as a square image, and every level's windows must tile it:
the input is padded at the bottom and right to a square whose side is a multiple of 128 (and of every
layer's window times its downsampling) by mirroring, as spandrel pads for its size requirement, and the
result cropped back. A whole image is therefore padded to its longer side; tiles keep the cost bounded.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_transformers import (
    pad_to_multiple,
    window_bias_rows,
    window_merge,
    window_partition,
    window_shift_mask,
)
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_uformer import LAYERS, UformerShape


def build_uformer(info: UpscalerInfo) -> Any:
    """The Uformer network for `info` (layout "uformer"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, UformerShape)
    shape, width = info.detail, info.features

    def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:  # (b, n, c) -> (b, heads, n, c / heads)
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        b, heads, n, d = v.shape[0], q.shape[1], q.shape[2], v.shape[-1]
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, heads * d)

    class LinearProjection(nn.Module):
        """Queries from one linear, keys and values from another (interleaved per token: k then v)."""

        def __init__(self, dim: int, bias: bool) -> None:
            super().__init__()
            self.to_q = nn.Linear(dim, dim, bias=bias)
            self.to_kv = nn.Linear(dim, dim * 2, bias=bias)

        def forward(self, x: torch.Tensor, source: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
            k, v = self.to_kv(source).chunk(2, dim=-1)
            return split_heads(self.to_q(x), heads), split_heads(k, heads), split_heads(v, heads)

    class SeparableConv(nn.Module):
        """A depth-wise 3x3, ReLU, a 1x1: each of the conv projection's queries, keys and values."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.pointwise = nn.Conv2d(dim, dim, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pointwise(functional.relu(self.depthwise(x)))

    class ConvProjection(nn.Module):
        """Queries, keys and values each from a separable conv over the (square) window."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.to_q, self.to_k, self.to_v = SeparableConv(dim), SeparableConv(dim), SeparableConv(dim)

        def forward(self, x: torch.Tensor, source: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
            b, n, c = x.shape
            side = int(n**0.5)

            def run(conv: nn.Module, t: torch.Tensor) -> torch.Tensor:
                image = t.transpose(1, 2).reshape(b, c, side, side)
                return split_heads(conv(image).flatten(2).transpose(1, 2), heads)

            return run(self.to_q, x), run(self.to_k, source), run(self.to_v, source)

    class WindowAttention(nn.Module):
        def __init__(self, dim: int, heads: int, window: int) -> None:
            super().__init__()
            self.heads, self.window = heads, window
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
            self.register_buffer("rows", window_bias_rows(window), persistent=False)
            self.qkv = ConvProjection(dim) if shape.projection == "conv" else LinearProjection(dim, shape.qkv_bias)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            q, k, v = self.qkv(x, source, self.heads)
            bias = self.relative_position_bias_table[self.rows].permute(2, 0, 1)[None]  # (1, heads, N, N)
            if mask is not None:  # (windows, N, N), repeated over the batch
                bias = (bias + mask[:, None]).repeat(x.shape[0] // mask.shape[0], 1, 1, 1)
            return self.proj(attend(q, k, v, bias))

    class CrossAttention(nn.Module):
        """Every pixel attends to a learned set of tokens (the cross modulator); linear projections always."""

        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.qkv = LinearProjection(dim, shape.qkv_bias)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x, tokens[None], self.heads)
            return self.proj(attend(q, k, v, None))

    class FeedForward(nn.Module):
        """A plain MLP (`fc1`, `fc2`), or LeFF / FastLeFF: linear, GELU, a 3x3 conv over the image (depth-wise
        or full), GELU, linear."""

        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            if shape.mlp == "mlp":
                self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
            else:
                groups = hidden if shape.mlp == "leff" else 1
                self.linear1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
                self.dwconv = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=groups), nn.GELU())
                self.linear2 = nn.Sequential(nn.Linear(hidden, dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, h, w, c)
            if shape.mlp == "mlp":
                return self.fc2(functional.gelu(self.fc1(x)))
            image = self.linear1(x).permute(0, 3, 1, 2)
            return self.linear2(self.dwconv(image).permute(0, 2, 3, 1))

    class Block(nn.Module):
        def __init__(self, layer: int, index: int) -> None:
            super().__init__()
            dim, heads, window = width * LAYERS[layer][1], shape.heads[layer], shape.windows[layer]
            self.window, self.shift = window, window // 2 if shape.shifted(layer, index) else 0
            decoder = LAYERS[layer][0].startswith("decoder")
            if decoder and shape.modulator:
                self.modulator = nn.Embedding(window * window, dim)
            if decoder and shape.cross_modulator:
                self.cross_modulator = nn.Embedding(window * window, dim)
                self.cross_attn = CrossAttention(dim, heads)
                # In the published files but unused: the published forward pass attends from the un-normed x.
                self.norm_cross = nn.LayerNorm(dim)
            self.norm1 = nn.LayerNorm(dim)
            self.attn = WindowAttention(dim, heads, window)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = FeedForward(dim, shape.hidden[layer])

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, h, w, c)
            b, h, w, c = x.shape
            if hasattr(self, "cross_attn"):
                x = x + self.cross_attn(x.reshape(b, h * w, c), self.cross_modulator.weight).view(b, h, w, c)
            y = self.norm1(x)
            mask = None
            if self.shift:
                y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
                mask = window_shift_mask(h, w, self.window, self.shift).to(x)
            windows = window_partition(y, self.window)
            query = windows + self.modulator.weight if hasattr(self, "modulator") else windows
            # The modulator offsets the attention's input only; with the conv projection keys and values come
            # from it too, as published.
            y = window_merge(self.attn(query, query, mask), b, h, w, self.window)
            if self.shift:
                y = torch.roll(y, (self.shift, self.shift), (1, 2))
            x = x + y
            return x + self.mlp(self.norm2(x))

    class Layer(nn.Module):
        def __init__(self, layer: int) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block(layer, index) for index in range(shape.depths[layer]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    def sequential(name: str, module: nn.Module) -> nn.Module:
        holder = nn.Module()
        setattr(holder, name, nn.Sequential(module))
        return holder

    def channels_last(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    class Uformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_proj = sequential("proj", nn.Conv2d(info.in_channels, width, 3, padding=1))
            self.output_proj = sequential("proj", nn.Conv2d(2 * width, info.out_channels, 3, padding=1))
            for index, (name, _, _) in enumerate(LAYERS):
                setattr(self, name, Layer(index))
            for level in range(4):
                self.add_module(
                    f"dowsample_{level}",
                    sequential("conv", nn.Conv2d(width * 2**level, width * 2 ** (level + 1), 4, 2, 1)),
                )
            # Up from the bottleneck (16x) and then from each decoder level (twice its encoder's width).
            ups = ((16, 8), (16, 4), (8, 2), (4, 1))
            for index, (cin, cout) in enumerate(ups):
                self.add_module(f"upsample_{index}",
                                sequential("deconv", nn.ConvTranspose2d(width * cin, width * cout, 2, 2)))  # fmt: skip

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            unit = shape.padding_unit
            square = max(-(-height // unit), -(-side // unit)) * unit
            x = pad_to_multiple(image, unit, minimum=square)
            features = functional.leaky_relu(self.input_proj.proj(x), 0.01).permute(0, 2, 3, 1)
            skips = []
            for level in range(4):
                features = getattr(self, f"encoderlayer_{level}")(features)
                skips.append(features)
                features = channels_last(getattr(self, f"dowsample_{level}").conv, features)
            features = self.conv(features)
            for level in range(4):
                up = channels_last(getattr(self, f"upsample_{level}").deconv, features)
                features = getattr(self, f"decoderlayer_{level}")(torch.cat((up, skips.pop()), -1))
            out = self.output_proj.proj(features.permute(0, 3, 1, 2)) + x
            return out[..., :height, :side]

    return Uformer()
