"""Transformer upscalers (SwinIR, Swin2SR, HAT, DAT), Marble's own implementations, built from the shape the
header tells (desktop.engine.library.upscaler_transformers) so the file's tensors load strictly by their published
names.

All take any input size, so tiles of any size, smaller than one window too, go through
desktop.engine.backends.upscale's tiling unchanged: SwinIR and HAT pad the image up to a multiple of
their window by mirroring it (as the official test scripts do) and crop the result back; DAT's spatial
attention pads its own windows with zeros, as the published network does.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Any

from desktop.engine.library.upscaler import UpscalerInfo

# SwinIR subtracts the mean colour of its DIV2K training set from RGB input (and adds it back after).
_RGB_MEAN = (0.4488, 0.4371, 0.4040)
# Swin2SR's cap on the per-head attention temperature exp(logit_scale): SwinV2 clamps the log at log(100).
_LOGIT_CAP = 100.0
# Swin2SR's position-bias MLP maps offsets into (0, 16): 16 * sigmoid, as SwinV2 does.
_CPB_RANGE = 16.0
# HAT's weight on its conv branch: a constructor argument, not in the file; every published model uses it.
_HAT_CONV_SCALE = 0.01
# Position buffers the file may carry: recomputed here from the window, so they are not loaded.
_DERIVED = (
    "relative_position_index", "attn_mask", "rpe_biases", "attn_mask_0", "attn_mask_1",
    "relative_position_index_SA", "relative_position_index_OCA", "relative_coords_table",
)  # fmt: skip


def loadable_state(state: dict[str, Any]) -> dict[str, Any]:
    """The tensors to load strictly: derived buffers left out (some files carry them, some do not)."""
    return {key: value for key, value in state.items() if key.rsplit(".", 1)[-1] not in _DERIVED}


def pad_to_multiple(x: Any, multiple: int, minimum: int = 0) -> Any:
    """`x` (N, C, H, W) padded at the bottom and right to multiples of `multiple` (and to at least `minimum`)
    by mirroring; an image narrower than the padding is mirrored repeatedly (then repeated at one pixel),
    never refused."""
    import torch.nn.functional as F  # noqa: N812 - the usual name

    while True:
        height, width = x.shape[-2:]
        need_h, need_w = max(-height % multiple, minimum - height), max(-width % multiple, minimum - width)
        if not need_h and not need_w:
            return x
        # Reflection can add at most size - 1 pixels per pass.
        step_h, step_w = min(need_h, height - 1), min(need_w, width - 1)
        if (need_h and step_h == 0) or (need_w and step_w == 0):
            return F.pad(x, (0, need_w, 0, need_h), mode="replicate")
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")


def squeeze_attention(dim: int, inner: int) -> Any:
    """Channel attention as HAT's and GRL-B's conv branches close it: the channels re-weighted by a sigmoid of
    their means through a 1x1 bottleneck of `inner` channels; its tensors are `attention.1` and `attention.3`."""
    from torch import nn

    class SqueezeAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, inner, 1), nn.ReLU(), nn.Conv2d(inner, dim, 1), nn.Sigmoid()
            )

        def forward(self, x: Any) -> Any:
            return x * self.attention(x)

    return SqueezeAttention()


def window_partition(x: Any, window: int) -> Any:
    """(B, H, W, C) -> (B * windows, window * window, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows: Any, b: int, h: int, w: int, window: int) -> Any:
    """window_partition's inverse: (B * windows, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def window_bias_rows(window: int) -> Any:
    """For each (query, key) pair in a window, the row of the relative-position bias table for their offset."""
    import torch

    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def window_shift_mask(h: int, w: int, window: int, shift: int) -> Any:
    """(windows, N, N): -100 between tokens that the cyclic shift brought together from different regions
    of the image (the last window's width and the last `shift`, on each axis), so a shifted window attends
    only within one region."""
    import torch

    regions = torch.zeros(1, h, w, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[:, rows, cols, :] = label
            label += 1
    ids = window_partition(regions, window).squeeze(-1)
    return (ids[:, None, :] != ids[:, :, None]).float() * -100.0


def build_swinir(info: UpscalerInfo) -> Any:
    """A SwinIR network for `info` (layout "swinir"), or a HAT (layout "hat": SwinIR's layout with a
    conv branch in every block and an overlapping cross-attention after each group's blocks), its
    modules named as the published weights."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None
    dim, window = info.features, shape.window
    hat = info.layout == "hat"
    # Swin2SR: SwinV2 blocks (cosine attention, a bias MLP, norms after each branch), 1x1 patch convs.
    v2 = info.layout == "swin2sr"
    qkv_bias = getattr(shape, "qkv_bias", True)

    def partition(x: torch.Tensor) -> torch.Tensor:
        return window_partition(x, window)

    def merge(windows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        return window_merge(windows, b, h, w, window)

    def relative_index() -> torch.Tensor:
        return window_bias_rows(window)

    def shift_mask(h: int, w: int, shift: int) -> torch.Tensor:
        return window_shift_mask(h, w, window, shift)

    def log_offsets() -> torch.Tensor:
        """SwinV2's MLP input: every (dy, dx) offset in a window, scaled to [-8, 8] and log-spaced, so
        that near offsets are told apart finely and far ones coarsely; ((2w-1)^2, 2) in table order."""
        steps = torch.arange(-(window - 1), window, dtype=torch.float32) / max(1, window - 1) * 8
        grid = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2)
        return torch.sign(grid) * torch.log2(grid.abs() + 1.0) / math.log2(8)

    class Attention(nn.Module):
        def __init__(self, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias and not v2)
            self.proj = nn.Linear(dim, dim)
            if v2:
                self.logit_scale = nn.Parameter(torch.zeros(heads, 1, 1))
                self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, heads, bias=False))
                self.register_buffer("offsets", log_offsets(), persistent=False)
                if qkv_bias:  # k has no bias in SwinV2: the softmax ignores a per-query constant anyway
                    self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
            else:
                self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
            self.register_buffer("index", relative_index(), persistent=False)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            n_windows, tokens, _ = x.shape
            if v2 and qkv_bias:
                bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
                qkv = nn.functional.linear(x, self.qkv.weight, bias)
            else:
                qkv = self.qkv(x)
            qkv = qkv.view(n_windows, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if v2:
                cosine = nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(k, dim=-1).transpose(-2, -1)
                scores = cosine * self.logit_scale.clamp(max=math.log(_LOGIT_CAP)).exp()
                table = _CPB_RANGE * torch.sigmoid(self.cpb_mlp(self.offsets))
            else:
                scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
                table = self.relative_position_bias_table
            bias = table[self.index.reshape(-1)].view(tokens, tokens, -1)
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

    class ConvBranch(nn.Module):
        """HAT's channel-attention block: two convs, then the channels re-weighted by their means."""

        def __init__(self) -> None:
            super().__init__()
            inner = shape.conv_hidden  # type: ignore[union-attr]
            self.cab = nn.Sequential(
                nn.Conv2d(dim, inner, 3, 1, 1), nn.GELU(), nn.Conv2d(inner, dim, 3, 1, 1),
                squeeze_attention(dim, shape.squeeze_hidden),  # type: ignore[union-attr]
            )

    class Block(nn.Module):
        def __init__(self, heads: int, shift: int) -> None:
            super().__init__()
            self.shift = shift
            self.norm1, self.attn = nn.LayerNorm(dim), Attention(heads)
            self.norm2, self.mlp = nn.LayerNorm(dim), Mlp()
            if hat:
                self.conv_block = ConvBranch()

        def forward(self, x: torch.Tensor, h: int, w: int, masks: dict[int, torch.Tensor]) -> torch.Tensor:
            b = x.shape[0]
            y = (x if v2 else self.norm1(x)).view(b, h, w, dim)
            if hat:
                # The conv branch sees the normalised, unshifted features; HAT adds it at a fixed 0.01.
                x = x + self.conv_block.cab(y.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2) * _HAT_CONV_SCALE
            if self.shift:
                y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
            if self.shift and self.shift not in masks:
                masks[self.shift] = shift_mask(h, w, self.shift).to(x.device, x.dtype)
            y = merge(self.attn(partition(y), masks.get(self.shift) if self.shift else None), b, h, w)
            if self.shift:
                y = torch.roll(y, (self.shift, self.shift), (1, 2))
            if v2:  # SwinV2's residual post-norm: each branch's output normalised before it is added
                x = x + self.norm1(y.reshape(b, h * w, dim))
                return x + self.norm2(self.mlp(x))
            x = x + y.reshape(b, h * w, dim)
            return x + self.mlp(self.norm2(x))

    class OverlapAttention(nn.Module):
        """HAT's overlapping cross-attention: queries from each window, keys and values from a larger
        window centred on it (zero-padded at the image's edges), then an MLP; both residual."""

        def __init__(self, heads: int) -> None:
            super().__init__()
            self.heads, outer = heads, shape.overlap_window  # type: ignore[union-attr]
            self.outer = outer
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.proj, self.mlp = nn.Linear(dim, dim), Mlp()
            side = window + outer - 1
            self.relative_position_bias_table = nn.Parameter(torch.zeros(side * side, heads))
            qy, qx = (t.flatten() for t in torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
            ky, kx = (t.flatten() for t in torch.meshgrid(torch.arange(outer), torch.arange(outer), indexing="ij"))
            offset = window - outer + 1
            index = (ky[None] - qy[:, None] + offset) * side + (kx[None] - qx[:, None] + offset)
            # The published index goes negative for some pairs and so counts from the table's end (Python
            # indexing); the trained tables rely on that, so it is kept.
            self.register_buffer("index", index % (side * side), persistent=False)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(self.norm1(x)).view(b, h, w, 3, c).permute(3, 0, 4, 1, 2)  # 3, B, C, H, W
            q = partition(qkv[0].permute(0, 2, 3, 1))
            kv = nn.functional.unfold(
                torch.cat((qkv[1], qkv[2]), 1), self.outer, stride=window, padding=(self.outer - window) // 2
            )  # B, 2C * outer^2, windows
            kv = kv.view(b, 2, c, self.outer * self.outer, -1).permute(1, 0, 4, 3, 2).reshape(2, -1, self.outer**2, c)
            heads, d = self.heads, c // self.heads
            q = q.view(q.shape[0], -1, heads, d).transpose(1, 2)
            k, v = (t.view(t.shape[0], -1, heads, d).transpose(1, 2) for t in kv)
            scores = (q * d**-0.5) @ k.transpose(-2, -1)
            bias = self.relative_position_bias_table[self.index.reshape(-1)].view(window * window, self.outer**2, -1)
            scores = scores + bias.permute(2, 0, 1)[None]
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, window * window, c)
            x = self.proj(merge(out, b, h, w).reshape(b, n, c)) + x
            return x + self.mlp(self.norm2(x))

    class Blocks(nn.Module):
        def __init__(self, depth: int, heads: int) -> None:
            super().__init__()
            half = window // 2 if shape.shifted else 0
            self.blocks = nn.ModuleList(Block(heads, half if i % 2 else 0) for i in range(depth))
            if hat:
                self.overlap_attn = OverlapAttention(heads)

    class Group(nn.Module):
        """A residual Swin Transformer group: blocks, then a conv over the image-shaped features."""

        def __init__(self, depth: int, heads: int) -> None:
            super().__init__()
            self.residual_group, self.conv = Blocks(depth, heads), _closing_conv(nn, dim, shape.residual)
            if v2:  # the group's own 1x1 patch conv, without a norm
                self.patch_embed = nn.Module()
                self.patch_embed.proj = nn.Conv2d(dim, dim, 1)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            masks: dict[int, torch.Tensor] = {}
            y = x
            for block in self.residual_group.blocks:
                y = block(y, h, w, masks)
            if hat:
                y = self.residual_group.overlap_attn(y, h, w)
            y = self.conv(to_image(y, h, w))
            if v2:
                y = self.patch_embed.proj(y)
            return x + y.flatten(2).transpose(1, 2)

    def to_image(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], dim, h, w)

    class PatchNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim) if getattr(shape, "patch_norm", True) else nn.Identity()
            if v2:  # Swin2SR's 1x1 "patch" conv (patch size 1, the only one Marble reads)
                self.proj = nn.Conv2d(dim, dim, 1)

    class SwinIR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mean = _RGB_MEAN if info.in_channels == 3 else (0.0,) * info.in_channels
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.conv_first = nn.Conv2d(info.in_channels, dim, 3, 1, 1)
            self.patch_embed = PatchNorm()
            self.layers = nn.ModuleList(Group(d, h) for d, h in zip(shape.depths, shape.heads, strict=True))
            self.norm = nn.LayerNorm(dim)
            self.conv_after_body = _closing_conv(nn, dim, shape.residual)
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
            embedded = self.patch_embed.proj(x) if v2 else x
            tokens = self.patch_embed.norm(embedded.flatten(2).transpose(1, 2))
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


def dat_split_from_biases(state: dict[str, Any], info: UpscalerInfo) -> UpscalerInfo:
    """`info` with the window's orientation the file's position table holds: its last row is
    (H_sp - 1, W_sp - 1) of the first branch. The header gives the two sides but not which is the height."""
    import dataclasses

    shape = info.detail
    table = state.get("layers.0.blocks.0.attn.attns.0.rpe_biases")
    if table is None or not hasattr(shape, "split"):
        return info
    height, width = (int(v) + 1 for v in table[-1].tolist())
    if {height, width} != set(shape.split) or (height, width) == shape.split:  # type: ignore[union-attr]
        return info
    return dataclasses.replace(info, detail=dataclasses.replace(shape, split=(height, width)))


def dual_window_attention(branches: Any, qkv: Any, h: int, w: int, split: tuple[int, int], shifted: bool) -> Any:
    """DAT's (and RGT's) spatial window attention: qkv (3, B, h * w, C) -> (B, h * w, C), the first half
    of the channels attended in split[0] x split[1] windows by branches[0], the second half in the
    quarter-turned windows by branches[1] (dat_parts().Branch), shifted by half a window when asked."""
    import torch
    from torch import nn

    _, b, n, c = qkv.shape
    # Zero-pad q, k and v (after the projection) to whole windows; the padding takes part in the
    # attention as zero vectors, as in the published network, and is cropped after.
    side = max(split)
    ph, pw = -h % side, -w % side
    grid = nn.functional.pad(qkv.reshape(3 * b, h, w, c).permute(0, 3, 1, 2), (0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    grid = grid.reshape(3, b, c, hp, wp)
    halves = []
    for i, branch in enumerate(branches):
        part = grid[:, :, i * c // 2 : (i + 1) * c // 2]
        mask = None
        if shifted:
            sh, sw = branch.wh // 2, branch.ww // 2
            part = torch.roll(part, (-sh, -sw), (3, 4))
            mask = _region_mask(hp, wp, branch.wh, branch.ww, sh, sw).to(qkv.device, qkv.dtype)
        out = branch(part.flatten(3).transpose(2, 3), hp, wp, mask)
        if shifted:
            out = torch.roll(out, (sh, sw), (1, 2))
        halves.append(out[:, :h, :w].reshape(b, n, c // 2))
    return torch.cat(halves, 2)


def _windows(x: Any, wh: int, ww: int) -> Any:
    """(B, C, H, W) -> (B * windows, wh * ww, C), windows in row-major order."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // wh, wh, w // ww, ww).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, wh * ww, c)


def _unwindow(x: Any, wh: int, ww: int, h: int, w: int) -> Any:
    """(B * windows, wh * ww, C) -> (B, H, W, C)."""
    b = x.shape[0] // ((h // wh) * (w // ww))
    x = x.view(b, h // wh, w // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def _region_mask(h: int, w: int, wh: int, ww: int, sh: int, sw: int) -> Any:
    """(windows, N, N): -100 between tokens the cyclic shift brought together from different regions."""
    ids = region_ids(h, w, wh, ww, sh, sw)
    return (ids[:, None, :] != ids[:, :, None]).float() * -100.0


def region_ids(h: int, w: int, wh: int, ww: int, sh: int, sw: int) -> Any:
    """(windows, wh * ww): for each token of each wh x ww window of an h x w image cyclically shifted by
    (sh, sw), which of the nine regions of the unshifted image it came from (GRL compares the ids of two
    window grids of different sizes, so it needs them rather than _region_mask)."""
    import torch

    regions = torch.zeros(1, 1, h, w)
    label = 0
    for rows in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for cols in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            regions[:, :, rows, cols] = label
            label += 1
    return _windows(regions, wh, ww).squeeze(-1)


@functools.cache
def dat_parts() -> Any:
    """The modules DAT and RGT share, defined once torch is imported: `Branch(width, heads, wh, ww)`, one
    window attention over `width` channels with its position-bias MLP, and `FeedForward(dim, hidden)`,
    the spatial-gate feed-forward network (fc1, GELU, gate over half the hidden channels, fc2)."""
    import torch
    from torch import nn

    def mlp_step(width: int, out: int) -> nn.Sequential:
        return nn.Sequential(nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, out))

    class PositionBias(nn.Module):
        """The learned relative position bias: a small MLP from (dy, dx) offsets to one bias per head."""

        def __init__(self, width: int, heads: int) -> None:
            super().__init__()
            self.pos_proj = nn.Linear(2, width)
            self.pos1, self.pos2, self.pos3 = mlp_step(width, width), mlp_step(width, width), mlp_step(width, heads)

        def forward(self, offsets: torch.Tensor) -> torch.Tensor:
            return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))

    class Branch(nn.Module):
        """Window attention over `width` channels, in wh x ww rectangles."""

        def __init__(self, width: int, heads: int, wh: int, ww: int) -> None:
            super().__init__()
            self.heads, self.wh, self.ww = heads, wh, ww
            # The bias MLP is a sixteenth of the branch's width wide (the published dim // 4 of dim // 4).
            self.pos = PositionBias(width // 4 // 4, heads)
            dy, dx = torch.meshgrid(torch.arange(1 - wh, wh), torch.arange(1 - ww, ww), indexing="ij")
            self.register_buffer("offsets", torch.stack([dy.flatten(), dx.flatten()], 1).float(), persistent=False)
            ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            index = (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None, :] + ww - 1)
            self.register_buffer("index", index, persistent=False)

        def forward(self, qkv: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
            """qkv (3, B, h * w, C/2) -> (B, h, w, C/2)."""
            b, _, c = qkv[0].shape
            tokens = self.wh * self.ww

            def split_heads(t: torch.Tensor) -> torch.Tensor:
                t = _windows(t.transpose(1, 2).reshape(b, c, h, w), self.wh, self.ww)
                return t.reshape(-1, tokens, self.heads, c // self.heads).permute(0, 2, 1, 3)

            q, k, v = (split_heads(t) for t in qkv)
            scores = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
            bias = self.pos(self.offsets)[self.index.reshape(-1)].view(tokens, tokens, -1)
            scores = scores + bias.permute(2, 0, 1)[None]
            if mask is not None:
                n = mask.shape[0]
                scores = (scores.view(-1, n, self.heads, tokens, tokens) + mask[None, :, None])
                scores = scores.view(-1, self.heads, tokens, tokens)
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, tokens, c)
            return _unwindow(out, self.wh, self.ww, h, w)

    class SpatialGate(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.norm, self.conv = nn.LayerNorm(width), nn.Conv2d(width, width, 3, 1, 1, groups=width)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            kept, gate = x.chunk(2, -1)
            b, n, c = gate.shape
            gate = self.conv(self.norm(gate).transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            return kept * gate

    class FeedForward(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.fc1, self.act = nn.Linear(dim, hidden), nn.GELU()
            self.sg, self.fc2 = SpatialGate(hidden // 2), nn.Linear(hidden // 2, dim)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            return self.fc2(self.sg(self.act(self.fc1(x)), h, w))

    return SimpleNamespace(Branch=Branch, FeedForward=FeedForward)


def build_dat(info: UpscalerInfo) -> Any:
    """A DAT network for `info` (layout "dat"), its modules named as the published weights."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None and hasattr(shape, "split")
    dim = info.features
    split = shape.split

    parts = dat_parts()
    Branch, FeedForward = parts.Branch, parts.FeedForward

    def interaction(reduce: int, out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(dim, dim // reduce, 1), nn.BatchNorm2d(dim // reduce), nn.GELU(),
                             nn.Conv2d(dim // reduce, out, 1))

    class Mixer(nn.Module):
        """What both attentions share: the depth-wise conv branch and the maps that gate one branch by
        the other (a per-channel map from one, a per-pixel map from the other)."""

        def __init__(self) -> None:
            super().__init__()
            self.dwconv = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim), nn.GELU())
            self.channel_interaction = nn.Sequential(nn.AdaptiveAvgPool2d(1), *interaction(8, dim))
            self.spatial_interaction = interaction(16, 1)

    class SpatialAttention(Mixer):
        def __init__(self, heads: int, shifted: bool) -> None:
            super().__init__()
            self.shifted = shifted
            self.qkv = nn.Linear(dim, dim * 3, bias=shape.qkv_bias)
            self.proj = nn.Linear(dim, dim)
            # The second branch's window is the first's turned a quarter.
            self.attns = nn.ModuleList(
                [Branch(dim // 2, heads // 2, split[0], split[1]), Branch(dim // 2, heads // 2, split[1], split[0])]
            )

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(x).view(b, n, 3, c).permute(2, 0, 1, 3)
            v = qkv[2].transpose(1, 2).reshape(b, c, h, w)
            attended = dual_window_attention(self.attns, qkv, h, w, split, self.shifted)
            conv = self.dwconv(v)
            channel_map = self.channel_interaction(conv).view(b, 1, c)
            spatial_map = self.spatial_interaction(attended.transpose(1, 2).reshape(b, c, h, w))
            conv = (torch.sigmoid(spatial_map) * conv).flatten(2).transpose(1, 2)
            return self.proj(attended * torch.sigmoid(channel_map) + conv)

    class ChannelAttention(Mixer):
        """Attention between channels (per head: head_dim x head_dim), over the whole image."""

        def __init__(self, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
            self.qkv = nn.Linear(dim, dim * 3, bias=shape.qkv_bias)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, head_dim, N)
            q, k = nn.functional.normalize(q, dim=-1), nn.functional.normalize(k, dim=-1)
            weights = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(-1)
            attended = (weights @ v).permute(0, 3, 1, 2).reshape(b, n, c)
            conv = self.dwconv(v.reshape(b, c, h, w))
            channel_map = self.channel_interaction(attended.transpose(1, 2).reshape(b, c, h, w))
            spatial_map = self.spatial_interaction(conv).flatten(2).transpose(1, 2)
            conv = (conv * torch.sigmoid(channel_map)).flatten(2).transpose(1, 2)
            return self.proj(attended * torch.sigmoid(spatial_map) + conv)

    class Block(nn.Module):
        def __init__(self, group: int, index: int, heads: int) -> None:
            super().__init__()
            self.norm1, self.norm2, self.ffn = (nn.LayerNorm(dim), nn.LayerNorm(dim),
                                              FeedForward(dim, int(dim * shape.expansion)))
            if index % 2:
                self.attn: nn.Module = ChannelAttention(heads)
            else:
                # Every other spatial block is shifted, the pattern offset by one between even and odd
                # groups: blocks 2, 6, 10, ... of even groups, 0, 4, 8, ... of odd ones.
                shifted = (index - 2) % 4 == 0 and index > 0 if group % 2 == 0 else index % 4 == 0
                self.attn = SpatialAttention(heads, shifted)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            x = x + self.attn(self.norm1(x), h, w)
            return x + self.ffn(self.norm2(x), h, w)

    return dat_frame(info, Block)


def dat_frame(info: UpscalerInfo, block: Any, pad: Any = None) -> Any:
    """DAT's network around its blocks, shared with RGT: the first conv, groups of `block(group, index, heads)`
    each closed by a conv, the body conv, the upsampler; mean colour off before, back after. `pad(image)`
    (RGT: a size its recursion needs) pads the input; the output is cropped back to the input's size."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None
    dim = info.features
    direct = getattr(shape, "upsampler", "pixelshuffle") != "pixelshuffle"

    class Group(nn.Module):
        def __init__(self, group: int, depth: int, heads: int) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(block(group, i, heads) for i in range(depth))
            self.conv = _closing_conv(nn, dim, shape.residual)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            y = x
            for layer in self.blocks:
                y = layer(y, h, w)
            y = self.conv(y.transpose(1, 2).reshape(x.shape[0], dim, h, w))
            return x + y.flatten(2).transpose(1, 2)

    class Frame(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mean = _RGB_MEAN if info.in_channels == 3 else (0.0,) * info.in_channels
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.conv_first = nn.Conv2d(info.in_channels, dim, 3, 1, 1)
            self.before_RG = nn.Sequential(nn.Identity(), nn.LayerNorm(dim))  # [0] flattens (no weights)
            self.layers = nn.ModuleList(
                Group(i, d, h) for i, (d, h) in enumerate(zip(shape.depths, shape.heads, strict=True))
            )
            self.norm = nn.LayerNorm(dim)
            self.conv_after_body = _closing_conv(nn, dim, shape.residual)
            if direct:  # the lightweight models' one conv and pixel shuffle
                self.upsample = nn.Sequential(
                    nn.Conv2d(dim, info.out_channels * info.scale**2, 3, 1, 1), nn.PixelShuffle(info.scale)
                )
                return
            feat = shape.features
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            stages: list[nn.Module] = []
            for factor in shape.stages:
                stages += [nn.Conv2d(feat, feat * factor * factor, 3, 1, 1), nn.PixelShuffle(factor)]
            self.upsample = nn.Sequential(*stages)
            self.conv_last = nn.Conv2d(feat, info.out_channels, 3, 1, 1)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2:]
            x = self.conv_first((pad(image) if pad is not None else image) - self.mean)
            h, w = x.shape[-2:]
            tokens = self.before_RG[1](x.flatten(2).transpose(1, 2))
            for group in self.layers:
                tokens = group(tokens, h, w)
            features = self.conv_after_body(self.norm(tokens).transpose(1, 2).reshape(x.shape[0], dim, h, w)) + x
            if direct:
                out = self.upsample(features)
            else:
                out = self.conv_last(self.upsample(self.conv_before_upsample(features)))
            return (out + self.mean)[:, :, : height * info.scale, : width * info.scale]

    return Frame()


def _closing_conv(nn: Any, width: int, residual: str) -> Any:
    """The conv after each group and after the body: one 3x3, or 3x3 -> 1x1 -> 3x3 at a quarter width."""
    if residual == "1conv":
        return nn.Conv2d(width, width, 3, 1, 1)
    if residual == "identity":  # HAT's option without the conv
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(width, width // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(width // 4, width // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(width // 4, width, 3, 1, 1),
    )  # fmt: skip
