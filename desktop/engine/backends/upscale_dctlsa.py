"""DCTLSA upscalers (Densely Connected Transformer with Linear Self-Attention), Marble's own implementation,
built from the shape the header tells (desktop.engine.library.upscaler_dctlsa) so the file's tensors load
strictly by their published names.

Its Swin-style layers reuse SwinIR's window split and merge and mirror padding to a multiple
(desktop.engine.backends.upscale_transformers): each layer mirrors its input out to whole 16 px windows and
crops back, as the published network does. Inputs under 16 px a side are first padded up to 16 (mirrored,
then the edge repeated: spandrel's padding for this network's size requirement, RGT's helper) and the
result cropped, so tiles of any size run.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_rgt import pad_to_size
from desktop.engine.backends.upscale_transformers import pad_to_multiple, window_merge, window_partition
from desktop.engine.library.upscaler import UpscalerInfo

_WINDOW = 16  # the published window (and the smallest side the network runs on)
_SLOPE = 0.05  # the LeakyReLU after each merging 1x1 conv


def build_dctlsa(info: UpscalerInfo) -> Any:
    """A DCTLSA network for `info` (layout "dctlsa"), its modules named as the published weights."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None and hasattr(shape, "hidden")
    dim, heads = info.features, shape.heads

    class Local(nn.Sequential):
        """The conv module before each attention: BN, 1x1, depth-wise 3x3, BN, 1x1 (no biases)."""

        def __init__(self) -> None:
            super().__init__()
            self.pointwise_prenorm_0 = nn.BatchNorm2d(dim)
            self.pointwise_conv_0 = nn.Conv2d(dim, dim, 1, bias=False)
            self.depthwise_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
            self.pointwise_prenorm_1 = nn.BatchNorm2d(dim)
            self.pointwise_conv_1 = nn.Conv2d(dim, dim, 1, bias=False)

    class LinearAttention(nn.Module):
        """Window attention in linear form: keys softmaxed over the window's pixels, k^T v (head width
        squared) formed first and applied to the scaled queries; the local conv module's output (plus its
        input) is what q, k and v are made from, and is added back after."""

        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj, self.local = nn.Linear(dim, dim * 3), nn.Linear(dim, dim), Local()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, c = x.shape
            image = x.permute(0, 3, 1, 2)
            local = (self.local(image) + image).permute(0, 2, 3, 1)
            windows = window_partition(self.qkv(local), _WINDOW)
            qkv = windows.view(-1, _WINDOW * _WINDOW, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1].softmax(-2), qkv[2]
            out = (q @ (k.transpose(-2, -1) @ v)).transpose(1, 2).reshape(-1, _WINDOW * _WINDOW, c)
            return window_merge(self.proj(out), b, h, w, _WINDOW) + local

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, shape.hidden), nn.GELU(), nn.Linear(shape.hidden, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        """No norms and no residual around the attention (its local branch carries the input); odd
        blocks roll the image half a window first, without a mask, as published."""

        def __init__(self, shift: int) -> None:
            super().__init__()
            self.shift, self.attn, self.mlp = shift, LinearAttention(), Mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.shift:
                x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
            x = self.attn(x)
            if self.shift:
                x = torch.roll(x, (self.shift, self.shift), (1, 2))
            return x + self.mlp(x)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Block(0), Block(_WINDOW // 2)])
            self.patch_embed = nn.Module()
            self.patch_embed.norm = nn.LayerNorm(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = x.shape[-2:]
            x = pad_to_multiple(x, _WINDOW)
            b, c, h, w = x.shape
            tokens = self.patch_embed.norm(x.flatten(2).transpose(1, 2)).view(b, h, w, c)
            for block in self.blocks:
                tokens = block(tokens)
            return tokens.permute(0, 3, 1, 2)[:, :, :height, :width]

    class SwinLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer_body = nn.Sequential(Layer())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.transformer_body(x)

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(SwinLayer(), SwinLayer())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    def merge(modules: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(dim * modules, dim, 1), nn.LeakyReLU(_SLOPE))

    class DCTLSA(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fea_conv = nn.Conv2d(info.in_channels, dim, 3, 1, 1)
            for index in range(1, 7):
                setattr(self, f"B{index}", Module())
            for index in range(1, 6):  # c1..c5 merge the first conv and modules 1..index before module index + 1
                setattr(self, f"c{index}", merge(index + 1))
            self.c = merge(6)
            self.LR_conv = nn.Conv2d(dim, dim, 3, 1, 1)
            self.upsampler = nn.Sequential(
                nn.Conv2d(dim, info.out_channels * info.scale**2, 3, 1, 1), nn.PixelShuffle(info.scale)
            )

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2:]
            image = pad_to_size(image, max(height, _WINDOW), max(width, _WINDOW))
            first = self.fea_conv(image)
            seen, outputs, x = [first], [], first
            for index in range(1, 7):
                out = getattr(self, f"B{index}")(x)
                outputs.append(out)
                seen.append(out)
                if index < 6:
                    x = getattr(self, f"c{index}")(torch.cat(seen, 1))
            merged = self.c(torch.cat(outputs, 1))
            out = self.upsampler(self.LR_conv(merged) + first)
            return out[:, :, : height * info.scale, : width * info.scale]

    return DCTLSA()
