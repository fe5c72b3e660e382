"""FDAT upscalers (a community "Fast DAT"), Marble's own implementation, built from the shape the header tells
(desktop.engine.library.upscaler_fdat) so the file's tensors load strictly by their published names.

What FDAT shares with other networks is their code here: the square-window split and merge of SwinIR's
(desktop.engine.backends.upscale_transformers), its mirror padding to a multiple (for the unshuffled input),
and RealPLKSR's DySample (desktop.engine.backends.upscale_efficient). Its blocks are its own: DAT's two
attentions without DAT's position MLP and interaction convs, each gated against a depth-wise conv branch.

The window attention zero-pads its input to whole windows, as the published network does, so any input size
runs (tiles of any size too).

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_efficient import dysample
from desktop.engine.backends.upscale_transformers import pad_to_multiple, window_merge, window_partition
from desktop.engine.library.upscaler import UpscalerInfo

# Settings the published network fixes rather than stores: the LeakyReLU slopes of its upsamplers.
_SLOPE_PIXELSHUFFLE = 0.01  # torch's default, as the pixel-shuffle and DySample upsamplers use it
_SLOPE = 0.2


def build_fdat(info: UpscalerInfo) -> Any:
    """An FDAT network for `info` (layout "fdat"), its modules named as the published weights."""
    import torch
    from torch import nn

    shape = info.detail
    assert shape is not None and hasattr(shape, "unshuffle")
    dim, heads, window = info.features, shape.heads, shape.window

    def tokens_to_image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)

    class WindowAttention(nn.Module):
        """Attention in square windows (zero-padded at the bottom and right), with a learned bias for every
        head and pair of window positions (no relative-offset table)."""

        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, dim * 3, bias=False)
            self.proj = nn.Linear(dim, dim)
            self.bias = nn.Parameter(torch.zeros(heads, window * window, window * window))

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            b, n, c = x.shape
            grid = nn.functional.pad(x.view(b, h, w, c), (0, 0, 0, -w % window, 0, -h % window))
            hp, wp = grid.shape[1:3]
            windows = window_partition(grid, window)
            qkv = self.qkv(windows).view(-1, window * window, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1) + self.bias
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, window * window, c)
            return window_merge(self.proj(out), b, hp, wp, window)[:, :h, :w].reshape(b, n, c)

    class ChannelAttention(nn.Module):
        """DAT's attention between channels (per head: head width x head width over the whole image), its
        queries and keys unit-normalised over the pixels, a learned temperature per head."""

        def __init__(self) -> None:
            super().__init__()
            self.temp = nn.Parameter(torch.ones(heads, 1, 1))
            self.qkv = nn.Linear(dim, dim * 3, bias=False)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(x).view(b, n, 3, heads, c // heads).permute(2, 0, 3, 4, 1)  # 3, B, heads, d, N
            q, k, v = nn.functional.normalize(qkv[0], dim=-1), nn.functional.normalize(qkv[1], dim=-1), qkv[2]
            weights = ((q @ k.transpose(-2, -1)) * self.temp).softmax(-1)
            return self.proj((weights @ v).permute(0, 3, 1, 2).reshape(b, n, c))

    class Gates(nn.Module):
        """The two gates between an attention and its conv branch: `sg` a per-pixel map, `cg` a
        per-channel one (pooled, squeezed to the gate width and back)."""

        def __init__(self) -> None:
            super().__init__()
            self.sg = nn.Sequential(nn.Conv2d(dim, 1, 1, bias=False), nn.Sigmoid())
            self.cg = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, shape.gate, 1, bias=False), nn.GELU(),
                nn.Conv2d(shape.gate, dim, 1, bias=False), nn.Sigmoid(),
            )  # fmt: skip

    class FeedForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hidden = shape.hidden
            self.fc1, self.act = nn.Linear(dim, hidden, bias=False), nn.GELU()
            self.fc2 = nn.Linear(hidden, dim, bias=False)
            self.smix = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            return self.fc2(image_to_tokens(self.smix(tokens_to_image(self.act(self.fc1(x)), h, w))))

    class Block(nn.Module):
        def __init__(self, spatial: bool) -> None:
            super().__init__()
            self.spatial = spatial
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.attn = WindowAttention() if spatial else ChannelAttention()
            self.conv = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False), nn.GELU())
            self.inter = Gates()
            self.ffn = FeedForward()

        def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
            normed = self.n1(x)
            attended = self.attn(normed, h, w)
            conv = self.conv(tokens_to_image(normed, h, w))
            if self.spatial:  # the conv branch's channel summary gates the window attention
                fused = attended * image_to_tokens(self.inter.cg(conv)) + image_to_tokens(conv)
            else:  # the channel attention's per-pixel map gates the conv branch
                fused = attended + image_to_tokens(conv * self.inter.sg(tokens_to_image(attended, h, w)))
            x = x + fused
            return x + self.ffn(self.n2(x), h, w)

    class Group(nn.Module):
        def __init__(self, depth: int) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block(i % 2 == 0) for i in range(depth))
            self.conv = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            tokens = image_to_tokens(x)
            for block in self.blocks:
                tokens = block(tokens, h, w)
            return self.conv(tokens_to_image(tokens, h, w)) + x

    class FDAT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            factor = shape.unshuffle
            first = nn.Conv2d(info.in_channels * factor**2, dim, 3, 1, 1)
            self.conv_first = nn.Sequential(nn.PixelUnshuffle(factor), first) if factor > 1 else first
            self.groups = nn.Sequential(*(Group(depth) for depth in shape.depths))
            self.conv_after = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
            self.upsampler = _upsampler(info)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, width = image.shape[-2:]
            if shape.unshuffle > 1:  # whole unshuffle cells, mirrored out as the published network does
                image = pad_to_multiple(image, shape.unshuffle)
            shallow = self.conv_first(image)
            out = self.upsampler(self.conv_after(self.groups(shallow)) + shallow)
            return out[:, :, : height * info.scale, : width * info.scale]

    return FDAT()


def _upsampler(info: UpscalerInfo) -> Any:
    """FDAT's upsampler of the kind and factor its settings name, its layers at the published indices."""
    from torch import nn

    shape = info.detail
    assert shape is not None and hasattr(shape, "upsampler")
    kind, scale, width, mid, out = shape.upsampler, shape.upsampler_scale, info.features, shape.mid, info.out_channels
    # The factor-of-two steps of the stepwise kinds; 3x is one step of three.
    steps = [3] if scale == 3 else [2] * (scale.bit_length() - 1)

    def conv(cin: int, cout: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, 1, 1)

    layers: list[nn.Module] = []
    if kind == "conv":
        layers = [conv(width, out)]
    elif kind == "pixelshuffledirect":
        layers = [conv(width, out * scale**2), nn.PixelShuffle(scale)]
    elif kind == "pixelshuffle":
        layers = [conv(width, mid), nn.LeakyReLU(_SLOPE_PIXELSHUFFLE)]
        for step in steps:
            layers += [conv(mid, step * step * mid), nn.PixelShuffle(step)]
        layers.append(conv(mid, out))
    elif kind == "nearest+conv":
        for step in steps:
            layers += [conv(width, width), nn.Upsample(scale_factor=step), nn.LeakyReLU(_SLOPE)]
        layers += [conv(width, width), nn.LeakyReLU(_SLOPE), conv(width, out)]
    elif kind == "dysample":
        if mid != width:
            layers = [conv(width, mid), nn.LeakyReLU(_SLOPE_PIXELSHUFFLE)]
        layers.append(dysample(mid, out, scale, shape.sample_groups, True))
    elif kind == "transpose+conv":
        if scale == 4:
            layers = [nn.ConvTranspose2d(width, width, 4, 2, 1), nn.GELU(), nn.ConvTranspose2d(width, out, 4, 2, 1)]
        else:  # 2x: a 4x4 kernel at stride 2; 3x: 3x3 at stride 3
            layers = [nn.ConvTranspose2d(width, out, 4, 2, 1) if scale == 2 else nn.ConvTranspose2d(width, out, 3, 3)]
        layers.append(conv(out, out))
    elif kind == "pa_up":
        cin = width
        for step in steps:
            layers += [nn.Upsample(scale_factor=step), conv(cin, mid), _PixelAttention(mid), nn.LeakyReLU(_SLOPE),
                       conv(mid, mid), nn.LeakyReLU(_SLOPE)]  # fmt: skip
            cin = mid
        layers.append(conv(mid, out))
    else:  # "lda"
        if mid != width:
            layers = [conv(width, mid), nn.LeakyReLU(_SLOPE_PIXELSHUFFLE)]
        layers += [_LDASampling(mid, scale), conv(mid, out)]
    return nn.Sequential(*layers)


def _PixelAttention(width: int) -> Any:  # noqa: N802 - reads as the module it makes
    """Pixel attention: the features times a sigmoid map of themselves from a 1x1 conv."""
    from torch import nn

    class PixelAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(width, width, 1), nn.Sigmoid())

        def forward(self, x: Any) -> Any:
            return x * self.conv(x)

    return PixelAttention()


# LDA sampling's fixed settings (constructor defaults every FDAT uses, stored nowhere): the query/key width
# is a quarter of the channels, split in 2 offset groups; each output pixel attends to 3 x 3 sampled points,
# their offsets at most 11 output pixels (tanh x 11) from a 3 x 3 grid around it.
_LDA_REDUCTION, _LDA_GROUPS, _LDA_POINTS, _LDA_RANGE = 4, 2, 3, 11.0


def _LDASampling(channels: int, scale: int) -> Any:  # noqa: N802 - reads as the module it makes
    """LDA sampling ("learnable deformable attention" upsampling): each output pixel's query, bilinearly
    upsampled from the features, predicts 3 x 3 points around it (per offset group); the keys and values
    are the features sampled there, and a softmax over the nine points (with a learned bias per point and
    key channel) weights the values."""
    import torch
    from torch import nn
    from torch.nn import functional

    hidden = channels // _LDA_REDUCTION
    points = _LDA_POINTS * _LDA_POINTS

    class ChannelNorm(nn.Module):
        """LayerNorm over the channels of an image (eps 1e-6, as published)."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return functional.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, 1e-6).permute(
                0, 3, 1, 2
            )

    class LDASampling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            group = hidden // _LDA_GROUPS
            self.proj_q = nn.Conv2d(channels, hidden, 1, bias=False)
            self.proj_k = nn.Conv2d(channels, hidden, 1, bias=False)
            self.conv_offset = nn.Sequential(
                nn.Conv2d(group, group, 3, 1, 1, groups=group, bias=False), ChannelNorm(group), nn.SiLU(),
                nn.Conv2d(group, 2 * points, 3, 1, 1),
            )  # fmt: skip
            self.layer_norm = ChannelNorm(channels)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(1, 1, 1, points, hidden))
            # The 3 x 3 grid's (dy, dx) per point, row by row: where the offsets start from.
            steps = torch.arange(_LDA_POINTS, dtype=torch.float32) - (_LDA_POINTS - 1) // 2
            grid = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), -1).reshape(1, -1, 1, 1)
            self.register_buffer("base", grid, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            oh, ow, g = h * scale, w * scale, _LDA_GROUPS
            normed = self.layer_norm(x)
            q = functional.interpolate(self.proj_q(normed), (oh, ow), mode="bilinear", align_corners=True)
            offset = self.conv_offset(q.reshape(b * g, -1, oh, ow)).tanh() * _LDA_RANGE + self.base
            offset = offset.view(b * g, points, 2, oh, ow)
            # Output-pixel coordinates of each point, then grid_sample's -1..1 over the output's extent (the
            # corner pixels' centres at -1 and 1), which maps onto the input's extent the same way.
            rows = offset[:, :, 0] + torch.arange(oh, dtype=x.dtype, device=x.device).view(oh, 1)
            cols = offset[:, :, 1] + torch.arange(ow, dtype=x.dtype, device=x.device).view(1, ow)
            where = torch.stack((2 * cols / (ow - 1) - 1, 2 * rows / (oh - 1) - 1), -1)
            where = where.reshape(b * g, points * oh, ow, 2)

            def sampled(t: torch.Tensor) -> torch.Tensor:
                """(B, C', H, W) at every point: (B, oh * ow, points, C'), each group's channels in turn."""
                part = t.shape[1] // g
                out = functional.grid_sample(t.reshape(b * g, part, h, w), where, mode="bilinear",
                                             padding_mode="zeros", align_corners=True)  # fmt: skip
                out = out.view(b, g, part, points, oh * ow).permute(0, 4, 3, 1, 2)
                return out.reshape(b, oh * ow, points, g * part)

            keys = sampled(self.proj_k(normed)) + self.relative_position_bias_table[0]
            query = q.flatten(2).transpose(1, 2)[:, :, None] * hidden**-0.5  # (B, oh * ow, 1, hidden)
            weights = (query @ keys.transpose(-2, -1)).softmax(-1)
            out = (weights @ sampled(x)).squeeze(2)  # the values: the features themselves, not normalised
            return out.transpose(1, 2).reshape(b, c, oh, ow)

    return LDASampling()
