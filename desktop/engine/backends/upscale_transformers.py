"""Transformer upscalers (SwinIR), Marble's own implementation, built from the shape the header tells
(desktop.engine.library.upscaler_transformers) so the file's tensors load strictly by their published names.

The network takes any input size: it pads the image up to a multiple of the attention window by
mirroring it (as the official test script does), runs, and crops the result back, so tiles of any size,
smaller than one window too, go through desktop.engine.backends.upscale's tiling unchanged.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.library.upscaler import UpscalerInfo

# SwinIR subtracts the mean colour of its DIV2K training set from RGB input (and adds it back after).
_RGB_MEAN = (0.4488, 0.4371, 0.4040)
# Position buffers the file may carry: recomputed here from the window, so they are not loaded.
_DERIVED = ("relative_position_index", "attn_mask")


def loadable_state(state: dict[str, Any]) -> dict[str, Any]:
    """The tensors to load strictly: derived buffers left out (some files carry them, some do not)."""
    return {key: value for key, value in state.items() if key.rsplit(".", 1)[-1] not in _DERIVED}


def pad_to_multiple(x: Any, multiple: int) -> Any:
    """`x` (N, C, H, W) padded at the bottom and right to multiples of `multiple` by mirroring; an image
    narrower than the padding is mirrored repeatedly (then repeated at one pixel), never refused."""
    import torch.nn.functional as F  # noqa: N812 - the usual name

    while True:
        height, width = x.shape[-2:]
        need_h, need_w = -height % multiple, -width % multiple
        if not need_h and not need_w:
            return x
        # Reflection can add at most size - 1 pixels per pass.
        step_h, step_w = min(need_h, height - 1), min(need_w, width - 1)
        if (need_h and step_h == 0) or (need_w and step_w == 0):
            return F.pad(x, (0, need_w, 0, need_h), mode="replicate")
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")


def build_swinir(info: UpscalerInfo) -> Any:
    """A SwinIR network for `info` (layout "swinir"), its modules named as the published weights."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None
    dim, window = info.features, shape.window

    def partition(x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B * windows, window * window, C), windows in row-major order."""
        b, h, w, c = x.shape
        x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, window * window, c)

    def merge(windows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        c = windows.shape[-1]
        x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, c)

    def relative_index() -> torch.Tensor:
        """For each (query, key) pair in a window, the row of the bias table for their offset."""
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[:, None] - ys[None, :] + window - 1
        dx = xs[:, None] - xs[None, :] + window - 1
        return dy * (2 * window - 1) + dx

    def shift_mask(h: int, w: int, shift: int) -> torch.Tensor:
        """(windows, N, N): -100 between tokens that the cyclic shift brought together from different
        regions of the image, so a shifted window attends only within one region."""
        regions = torch.zeros(1, h, w, 1)
        bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        label = 0
        for rows in bounds:
            for cols in bounds:
                regions[:, rows, cols, :] = label
                label += 1
        ids = partition(regions).squeeze(-1)
        return (ids[:, None, :] != ids[:, :, None]).float() * -100.0

    class Attention(nn.Module):
        def __init__(self, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
            self.register_buffer("index", relative_index(), persistent=False)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            n_windows, tokens, _ = x.shape
            qkv = self.qkv(x).view(n_windows, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            bias = self.relative_position_bias_table[self.index.reshape(-1)].view(tokens, tokens, -1)
            scores = scores + bias.permute(2, 0, 1)[None]
            if mask is not None:
                # The same mask for every image of the batch: windows are grouped per image.
                scores = (scores.view(-1, mask.shape[0], self.heads, tokens, tokens) + mask[None, :, None])
                scores = scores.view(n_windows, self.heads, tokens, tokens)
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n_windows, tokens, dim)
            return self.proj(out)

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hidden = round(dim * shape.mlp_ratio)
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, heads: int, shift: int) -> None:
            super().__init__()
            self.shift = shift
            self.norm1, self.attn = nn.LayerNorm(dim), Attention(heads)
            self.norm2, self.mlp = nn.LayerNorm(dim), Mlp()

        def forward(self, x: torch.Tensor, h: int, w: int, masks: dict[int, torch.Tensor]) -> torch.Tensor:
            b = x.shape[0]
            y = self.norm1(x).view(b, h, w, dim)
            if self.shift:
                y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
            if self.shift and self.shift not in masks:
                masks[self.shift] = shift_mask(h, w, self.shift).to(x.device, x.dtype)
            y = merge(self.attn(partition(y), masks.get(self.shift) if self.shift else None), b, h, w)
            if self.shift:
                y = torch.roll(y, (self.shift, self.shift), (1, 2))
            x = x + y.reshape(b, h * w, dim)
            return x + self.mlp(self.norm2(x))

    def closing_conv(width: int) -> nn.Module:
        """The conv after each group and after the body: one 3x3, or 3x3 -> 1x1 -> 3x3 at a quarter width."""
        if shape.residual == "1conv":
            return nn.Conv2d(width, width, 3, 1, 1)
        return nn.Sequential(
            nn.Conv2d(width, width // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 4, width // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 4, width, 3, 1, 1),
        )  # fmt: skip

    class Blocks(nn.Module):
        def __init__(self, depth: int, heads: int) -> None:
            super().__init__()
            half = window // 2 if shape.shifted else 0
            self.blocks = nn.ModuleList(Block(heads, half if i % 2 else 0) for i in range(depth))

    class Group(nn.Module):
        """A residual Swin Transformer group: blocks, then a conv over the image-shaped features."""

        def __init__(self, depth: int, heads: int) -> None:
            super().__init__()
            self.residual_group, self.conv = Blocks(depth, heads), closing_conv(dim)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            masks: dict[int, torch.Tensor] = {}
            y = x
            for block in self.residual_group.blocks:
                y = block(y, h, w, masks)
            y = self.conv(to_image(y, h, w))
            return x + y.flatten(2).transpose(1, 2)

    def to_image(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], dim, h, w)

    class PatchNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim)

    class SwinIR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mean = _RGB_MEAN if info.in_channels == 3 else (0.0,) * info.in_channels
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.conv_first = nn.Conv2d(info.in_channels, dim, 3, 1, 1)
            self.patch_embed = PatchNorm()
            self.layers = nn.ModuleList(Group(d, h) for d, h in zip(shape.depths, shape.heads, strict=True))
            self.norm = nn.LayerNorm(dim)
            self.conv_after_body = closing_conv(dim)
            feat = shape.features
            if shape.upsampler in ("pixelshuffle", "nearest+conv"):
                self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            if shape.upsampler == "pixelshuffle":
                stages: list[nn.Module] = []
                for factor in shape.stages:
                    stages += [nn.Conv2d(feat, feat * factor * factor, 3, 1, 1), nn.PixelShuffle(factor)]
                self.upsample = nn.Sequential(*stages)
                self.conv_last = nn.Conv2d(feat, info.out_channels, 3, 1, 1)
            elif shape.upsampler == "pixelshuffledirect":
                factor = info.scale
                self.upsample = nn.Sequential(
                    nn.Conv2d(dim, info.out_channels * factor * factor, 3, 1, 1), nn.PixelShuffle(factor)
                )
            elif shape.upsampler == "nearest+conv":
                for step in range(len(shape.stages)):
                    setattr(self, f"conv_up{step + 1}", nn.Conv2d(feat, feat, 3, 1, 1))
                self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
                self.conv_last = nn.Conv2d(feat, info.out_channels, 3, 1, 1)
            else:
                self.conv_last = nn.Conv2d(dim, info.out_channels, 3, 1, 1)

        def body(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            tokens = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
            for group in self.layers:
                tokens = group(tokens, h, w)
            return self.conv_after_body(to_image(self.norm(tokens), h, w)) + x

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2:]
            x = (pad_to_multiple(image, window) - self.mean) * shape.image_range
            first = self.conv_first(x)
            features = self.body(first)
            if shape.upsampler == "pixelshuffle":
                out = self.conv_last(self.upsample(self.conv_before_upsample(features)))
            elif shape.upsampler == "pixelshuffledirect":
                out = self.upsample(features)
            elif shape.upsampler == "nearest+conv":
                y = self.conv_before_upsample(features)
                for step in range(len(shape.stages)):
                    conv = getattr(self, f"conv_up{step + 1}")
                    y = nn.functional.interpolate(y, scale_factor=2, mode="nearest")
                    y = nn.functional.leaky_relu(conv(y), 0.2)
                out = self.conv_last(nn.functional.leaky_relu(self.conv_hr(y), 0.2))
            else:
                # Restoration models learn the correction to their (normalised) input.
                out = x + self.conv_last(features)
            out = out / shape.image_range + self.mean
            return out[:, :, : height * info.scale, : width * info.scale]

    return SwinIR()
