"""ATD and ATD-light upscalers (Adaptive Token Dictionary), Marble's own implementation, built from the
shape the header tells (desktop.engine.library.upscaler_atd) so the file's tensors load strictly by their
published names.

Each block projects its normalised tokens to one q, k, v and sums three attentions over them with the
block's input: Swin window attention (the window helpers of desktop.engine.backends.upscale_transformers,
odd blocks shifted by half a window), a cross-attention from every pixel to the group's token dictionary
(cosine scores, sharpened per token), and a category attention: pixels sorted by the dictionary token they
match best and attending within runs of `category` of them. After the ConvFFN, every block but a group's
last refines the dictionary towards the pixels that chose each token.

The published network pads its input to whole windows by mirroring with the edge pixel repeated (a flip
appended, not a reflection); this one does the same, repeatedly for inputs narrower than the padding, and
crops the result, so tiles of any size run.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

import math
from typing import Any

from desktop.engine.backends.upscale_transformers import (
    _LOGIT_CAP,
    _RGB_MEAN,
    _closing_conv,
    window_bias_rows,
    window_merge,
    window_partition,
    window_shift_mask,
)
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_atd import ATDShape


def build_atd(info: UpscalerInfo) -> Any:
    """The ATD network for `info` (layout "atd"), untrained: load the file's tensors into it strictly
    (after desktop.engine.backends.upscale_transformers.loadable_state drops the derived buffers)."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, ATDShape)
    shape, dim = info.detail, info.features
    window, shift, tokens = shape.window, shape.window // 2, shape.tokens

    def to_image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def to_tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)

    class WindowAttention(nn.Module):
        """Swin's window attention over the block's shared qkv, with a learned bias per offset and head."""

        def __init__(self, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
            self.proj = nn.Linear(dim, dim)
            self.register_buffer("rows", window_bias_rows(window), persistent=False)

        def forward(self, qkv: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
            b = qkv.shape[0]
            grid = qkv.view(b, h, w, -1)
            if mask is not None:
                grid = torch.roll(grid, (-shift, -shift), (1, 2))
            windows = window_partition(grid, window)
            count, n, _ = windows.shape
            q, k, v = windows.reshape(count, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            scores = scores + self.relative_position_bias_table[self.rows].permute(2, 0, 1)
            if mask is not None:  # (windows, N, N), the same for each image of the batch
                scores = (scores.view(-1, mask.shape[0], self.heads, n, n) + mask[None, :, None]).flatten(0, 1)
            out = self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(count, n, dim))
            out = window_merge(out, b, h, w, window)
            if mask is not None:
                out = torch.roll(out, (shift, shift), (1, 2))
            return out.reshape(b, h * w, dim)

    class DictionaryAttention(nn.Module):
        """Every pixel attends to the dictionary's tokens; the weights (the pixel's similarity to each
        token) also choose its category and refine the dictionary."""

        def __init__(self) -> None:
            super().__init__()
            self.wq = nn.Linear(dim, shape.reduced, bias=shape.qkv_bias)
            self.wk = nn.Linear(dim, shape.reduced, bias=shape.qkv_bias)
            self.wv = nn.Linear(dim, dim, bias=shape.qkv_bias)
            self.scale = nn.Parameter(torch.ones(tokens))

        def forward(self, x: torch.Tensor, td: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = functional.normalize(self.wq(x), dim=-1)
            k = functional.normalize(self.wk(td), dim=-1)
            # Cosine scores sharpened per token by up to log(tokens): a softmax over many tokens needs it.
            sharpen = 1 + self.scale.clamp(0, 1) * math.log(tokens)
            similarity = ((q @ k.transpose(-2, -1)) * sharpen).softmax(-1)
            return similarity @ self.wv(td), similarity

    class CategoryAttention(nn.Module):
        """Pixels sorted by their best dictionary token, cut into runs of `category` (the last run filled
        up with the sorted sequence's tail mirrored), each run attending within itself; unsorted back."""

        def __init__(self, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.logit_scale = nn.Parameter(torch.zeros(1, 1))
            self.proj = nn.Linear(dim, dim, bias=shape.qkv_bias)

        def forward(self, qkv: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
            b, n, width3 = qkv.shape
            size = min(n, shape.category)
            runs = -(-n // size)
            fill = runs * size - n
            # The published network sorts unstably: the order within a category is torch's sort's, so
            # the same call is made here (a stable sort groups the pixels of a large category differently).
            order = torch.sort(similarity.argmax(-1), dim=-1, stable=False).indices
            inverse = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=order.device).expand(b, n))
            ordered = torch.gather(qkv, 1, order[..., None].expand(b, n, width3))
            ordered = torch.cat((ordered, ordered[:, n - fill :].flip(1)), 1)
            q, k, v = ordered.view(b, runs, size, 3, self.heads, -1).permute(3, 0, 1, 4, 2, 5)
            scores = (q @ k.transpose(-2, -1)) * self.logit_scale.clamp(max=math.log(_LOGIT_CAP)).exp()
            out = (scores.softmax(-1) @ v).permute(0, 1, 3, 2, 4).reshape(b, runs * size, dim)[:, :n]
            return self.proj(torch.gather(out, 1, inverse[..., None].expand(b, n, dim)))

    class DepthwiseConv(nn.Module):
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.depthwise_conv = nn.Sequential(
                nn.Conv2d(hidden, hidden, shape.kernel, 1, (shape.kernel - 1) // 2, groups=hidden), nn.GELU()
            )

    class ConvFFN(nn.Module):
        """An MLP with a depth-wise conv over the image added to its hidden activations (local detail)."""

        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(dim, shape.hidden), nn.Linear(shape.hidden, dim)
            self.dwconv = DepthwiseConv(shape.hidden)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            y = functional.gelu(self.fc1(x))
            y = y + to_tokens(self.dwconv.depthwise_conv(to_image(y, h, w)))
            return self.fc2(y)

    class Block(nn.Module):
        def __init__(self, heads: int, shifted: bool, last: bool) -> None:
            super().__init__()
            self.shifted, self.last = shifted, last
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            if not last:  # the dictionary refinement, which a group's last block has no use for
                self.norm3 = nn.InstanceNorm1d(tokens, affine=True)
                self.sigma = nn.Parameter(torch.zeros(tokens, 1))
            self.wqkv = nn.Linear(dim, 3 * dim, bias=shape.qkv_bias)
            self.attn_win = WindowAttention(heads)
            self.attn_atd = DictionaryAttention()
            self.attn_aca = CategoryAttention(heads)
            self.convffn = ConvFFN()

        def forward(
            self, x: torch.Tensor, td: torch.Tensor, h: int, w: int, mask: torch.Tensor | None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            normed = self.norm1(x)
            qkv = self.wqkv(normed)
            from_dictionary, similarity = self.attn_atd(normed, td)
            by_category = self.attn_aca(qkv, similarity)
            local = self.attn_win(qkv, h, w, mask if self.shifted else None)
            x = x + local + from_dictionary + by_category
            x = x + self.convffn(self.norm2(x), h, w)
            if not self.last:
                # Each token moves towards the pixels most similar to it (a softmax over the pixels of its
                # normalised similarities), by a learned per-token share.
                weights = self.norm3(similarity.transpose(1, 2)).softmax(-1)
                keep = torch.sigmoid(self.sigma)
                td = keep * td + (1 - keep) * (weights @ x)
            return x, td

    class Blocks(nn.Module):
        def __init__(self, depth: int, heads: int) -> None:
            super().__init__()
            self.layers = nn.ModuleList(Block(heads, i % 2 == 1, i == depth - 1) for i in range(depth))
            self.td = nn.Parameter(torch.zeros(tokens, dim))

        def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
            td = self.td.expand(x.shape[0], -1, -1)
            for layer in self.layers:
                x, td = layer(x, td, h, w, mask)
            return x

    class Group(nn.Module):
        def __init__(self, depth: int, heads: int) -> None:
            super().__init__()
            self.residual_group = Blocks(depth, heads)
            self.conv = _closing_conv(nn, dim, shape.residual)

        def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
            return to_tokens(self.conv(to_image(self.residual_group(x, h, w, mask), h, w))) + x

    class PatchNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim) if shape.patch_norm else nn.Identity()

    class ATD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mean = _RGB_MEAN if info.in_channels == 3 and shape.mean else (0.0,) * info.in_channels
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            if not shape.mean:  # the file's marker for "no mean colour": kept so the load stays strict
                self.register_buffer("no_norm", torch.zeros(1))
            self.conv_first = nn.Conv2d(info.in_channels, dim, 3, 1, 1)
            self.patch_embed = PatchNorm()
            self.layers = nn.ModuleList(Group(d, h) for d, h in zip(shape.depths, shape.heads, strict=True))
            self.norm = nn.LayerNorm(dim)
            self.conv_after_body = _closing_conv(nn, dim, shape.residual)
            out, feat = info.out_channels, shape.features
            if shape.upsampler == "pixelshuffledirect":  # ATD-light's one conv and pixel shuffle
                self.upsample = nn.Sequential(nn.Conv2d(dim, out * info.scale**2, 3, 1, 1), nn.PixelShuffle(info.scale))
            elif shape.upsampler:  # classical (pixel-shuffle stages) or real-world (nearest 2x, twice)
                self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
                if shape.upsampler == "pixelshuffle":
                    stages: list[nn.Module] = []
                    for factor in shape.stages:
                        stages += [nn.Conv2d(feat, feat * factor * factor, 3, 1, 1), nn.PixelShuffle(factor)]
                    self.upsample = nn.Sequential(*stages)
                else:
                    self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
                    self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
                    self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
                self.conv_last = nn.Conv2d(feat, out, 3, 1, 1)
            else:  # 1x restoration: the residual over the input
                self.conv_last = nn.Conv2d(dim, out, 3, 1, 1)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2:]
            x = mirror_to_multiple(image, window) - self.mean
            first = self.conv_first(x)
            h, w = first.shape[-2:]
            # One mask for every shifted block: it depends only on the padded size.
            mask = window_shift_mask(h, w, window, shift).to(first) if max(shape.depths) > 1 else None
            tokens_ = self.patch_embed.norm(to_tokens(first))
            for group in self.layers:
                tokens_ = group(tokens_, h, w, mask)
            features = self.conv_after_body(to_image(self.norm(tokens_), h, w)) + first
            out = self._tail(x, features)
            return (out + self.mean)[:, :, : height * info.scale, : width * info.scale]

        def _tail(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            if shape.upsampler == "pixelshuffledirect":
                return self.upsample(features)
            if shape.upsampler == "pixelshuffle":
                return self.conv_last(self.upsample(self.conv_before_upsample(features)))
            if shape.upsampler == "nearest+conv":
                y = self.conv_before_upsample(features)
                for conv in (self.conv_up1, self.conv_up2):
                    y = functional.leaky_relu(conv(functional.interpolate(y, scale_factor=2, mode="nearest")), 0.2)
                return self.conv_last(functional.leaky_relu(self.conv_hr(y), 0.2))
            return x + self.conv_last(features)

    return ATD()


def mirror_to_multiple(x: Any, multiple: int) -> Any:
    """`x` (N, C, H, W) extended at the bottom and right to multiples of `multiple` by appending its mirror
    image (the edge pixel repeated, as the published network pads), again while it is still short."""
    import torch

    height, width = x.shape[-2:]
    target_h, target_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    while x.shape[-2] < target_h:
        x = torch.cat((x, x.flip(-2)), -2)
    while x.shape[-1] < target_w:
        x = torch.cat((x, x.flip(-1)), -1)
    return x[:, :, :target_h, :target_w]
