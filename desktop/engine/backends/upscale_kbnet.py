"""KBNet-S, Marble's own implementation, built from the shape desktop.engine.library.upscaler_kbnet reads: its
kernel-basis blocks in NAFNet's U-Net frame (desktop.engine.backends.upscale_nafnet's `unet_frame`, which pads
with zeros to a multiple of 2^levels as the published network does and crops back). Parameter names follow
the file's (`conv11.1`, `conv2.2`, `w`, `b`, `ga1`, `attgamma`, ...) so a strict load checks every tensor.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_efficient import channel_norm
from desktop.engine.backends.upscale_nafnet import unet_frame
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_kbnet import GROUP, KERNEL, LARGE_GROUP, KBNetLShape, KBNetShape


def mixed_kernels(x: Any, weights: Any, kernels: Any, biases: Any, groups: int) -> Any:
    """Each pixel's own grouped 3x3 conv of `x` (N, C, H, W) in `groups` groups: the kernel sets `kernels`
    (1, bases, C x C/groups x 9) and `biases` (1, bases, C) summed with that pixel's `weights` (N, bases, H, W)."""
    from torch.nn import functional

    batch, width, height, side = x.shape
    per_group = width // groups
    taps = per_group * KERNEL * KERNEL  # one output channel's weights within its group
    mix = weights.flatten(2).transpose(1, 2)  # (N, HW, bases)
    kernel = (mix @ kernels[0]).view(batch, height * side, groups, per_group, taps)
    # Each pixel's 3x3 neighbourhood, grouped as the kernel is: (N, HW, groups, taps, 1).
    patches = functional.unfold(x, KERNEL, padding=KERNEL // 2).view(batch, groups, taps, height * side)
    out = kernel @ patches.permute(0, 3, 1, 2)[..., None]
    out = out.reshape(batch, height * side, width) + mix @ biases[0]
    return out.transpose(1, 2).reshape(batch, width, height, side)


def kbnet_block(width: int, shape: KBNetShape) -> Any:
    """One KBNet-S block: the kernel-basis branch gated by the large-kernel branch and the channel attention,
    then NAFNet's gated feed-forward, each added back scaled per channel (`beta`, `gamma`)."""
    import torch
    from torch import nn

    groups = width // GROUP
    per_group = width // groups  # input (and output) channels of each basis conv group
    taps = per_group * KERNEL * KERNEL  # one output channel's weights in a group
    bases, inner = shape.bases, min(width, 32)
    hidden = int(width * shape.ffn_ratio)

    class Gate(nn.Module):
        """One half of the channels times the other (a parameter-free slot in `conv2`)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first, second = x.chunk(2, dim=1)
            return first * second

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = channel_norm(width), channel_norm(width)
            self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1))
            if shape.lightweight:
                large = nn.Conv2d(width, width, 3, padding=1, groups=width)
            else:
                large = nn.Conv2d(width, width, 5, padding=2, groups=width // 4)
            self.conv11 = nn.Sequential(nn.Conv2d(width, width, 1), large)
            self.conv1 = nn.Conv2d(width, width, 1)
            self.conv21 = nn.Conv2d(width, width, 3, padding=1, groups=width)
            # The per-pixel basis weights: a depth-wise 3x3, a gate, a 1x1 to the bases; plus a plain 1x1.
            self.conv2 = nn.Sequential(
                nn.Conv2d(width, inner, 3, padding=1, groups=inner), Gate(), nn.Conv2d(inner // 2, bases, 1)
            )
            self.conv211 = nn.Conv2d(width, bases, 1)
            self.conv3 = nn.Conv2d(width, width, 1)
            self.conv4 = nn.Conv2d(width, hidden, 1)
            self.conv5 = nn.Conv2d(hidden // 2, width, 1)
            self.w = nn.Parameter(torch.zeros(1, bases, width * taps))
            self.b = nn.Parameter(torch.zeros(1, bases, width))
            self.ga1 = nn.Parameter(torch.zeros(1, width, 1, 1))
            self.attgamma = nn.Parameter(torch.zeros(1, bases, 1, 1))
            self.beta = nn.Parameter(torch.zeros(1, width, 1, 1))
            self.gamma = nn.Parameter(torch.zeros(1, width, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            normed = self.norm1(x)
            weights = self.conv2(normed) * self.attgamma + self.conv211(normed)
            projected = self.conv21(self.conv1(normed))
            branch = mixed_kernels(projected, weights, self.w, self.b, groups) * self.ga1 + projected
            branch = branch * self.conv11(normed) * self.sca(normed)
            y = x + self.conv3(branch) * self.beta
            first, second = self.conv4(self.norm2(y)).chunk(2, dim=1)
            return y + self.conv5(first * second) * self.gamma

    return Block()


def build_kbnet(info: UpscalerInfo) -> Any:
    """The KBNet-S network for `info` (layout "kbnet"), untrained: load the file's tensors into it strictly."""
    assert isinstance(info.detail, KBNetShape)
    shape = info.detail
    return unet_frame(info, shape.unet, lambda width: kbnet_block(width, shape))


def build_kbnet_l(info: UpscalerInfo) -> Any:
    """The KBNet-L network for `info` (layout "kbnet-l"), untrained: load the file's tensors into it strictly.
    The file's block names are swapped (`attn` is the kernel-basis feed-forward, `ffn` the attention): kept."""
    import torch
    from torch import nn
    from torch.nn import functional

    from desktop.engine.backends.upscale_transformers import pad_to_multiple

    assert isinstance(info.detail, KBNetLShape)
    shape, dim, bias = info.detail, info.features, info.detail.bias

    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first, second = x.chunk(2, dim=1)
            return first * second

    def pointwise_then_depthwise(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=bias), nn.Conv2d(cout, cout, 3, padding=1, groups=cout,
                                                                             bias=bias))  # fmt: skip

    class ChannelAttention(nn.Module):
        """Restormer's "transposed" attention: per head, channels attend to channels over the whole image
        (queries and keys L2-normalised along the pixels, scaled by a learnt temperature)."""

        def __init__(self, width: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
            self.qkv = nn.Conv2d(width, width * 3, 1, bias=bias)
            self.qkv_dwconv = nn.Conv2d(width * 3, width * 3, 3, padding=1, groups=width * 3, bias=bias)
            self.project_out = nn.Conv2d(width, width, 1, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, width, height, side = x.shape
            q, k, v = (t.reshape(batch, self.heads, width // self.heads, height * side)
                       for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))  # fmt: skip
            q, k = functional.normalize(q, dim=-1), functional.normalize(k, dim=-1)
            weights = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
            return self.project_out((weights @ v).reshape(batch, width, height, side))

    class BasisFeedForward(nn.Module):
        """The kernel-basis feed-forward: a GELU'd depth-wise branch times the per-pixel mixed kernels' branch
        (groups of two channels), scaled by a channel attention, projected back."""

        def __init__(self, width: int) -> None:
            super().__init__()
            hidden = int(width * shape.ffn_ratio)
            inner = min(width, 24)
            self.dwconv = pointwise_then_depthwise(width, hidden)
            self.project_out = nn.Conv2d(hidden, width, 1, bias=bias)
            self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, hidden, 1))
            self.conv1 = pointwise_then_depthwise(width, hidden)
            self.groups = hidden // LARGE_GROUP
            self.w = nn.Parameter(torch.zeros(1, shape.bases, hidden * (hidden // self.groups) * KERNEL * KERNEL))
            self.b = nn.Parameter(torch.zeros(1, shape.bases, hidden))
            self.conv2 = nn.Sequential(nn.Conv2d(width, inner, 3, padding=1, groups=inner), Gate(),
                                       nn.Conv2d(inner // 2, shape.bases, 1))  # fmt: skip
            self.conv211 = nn.Conv2d(width, shape.bases, 1)
            self.attgamma = nn.Parameter(torch.zeros(1, shape.bases, 1, 1))
            self.ga1 = nn.Parameter(torch.zeros(1, hidden, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weights = self.conv2(x) * self.attgamma + self.conv211(x)
            projected = self.conv1(x)
            mixed = mixed_kernels(projected, weights, self.w, self.b, self.groups) * self.ga1 + projected
            return self.project_out(functional.gelu(self.dwconv(x)) * mixed * self.sca(x))

    class Block(nn.Module):
        def __init__(self, width: int, heads: int) -> None:
            super().__init__()
            self.norm1, self.norm2 = channel_norm(width), channel_norm(width)
            self.attn, self.ffn = BasisFeedForward(width), ChannelAttention(width, heads)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x))
            return x + self.ffn(self.norm2(x))

    def run(count: int, width: int, heads: int) -> nn.Sequential:
        return nn.Sequential(*(Block(width, heads) for _ in range(count)))

    class Resample(nn.Module):
        """A bias-free 3x3 conv, then a 2x pixel (un)shuffle: down halves the conv's width and unshuffles
        (twice the width out), up doubles it and shuffles (half the width out)."""

        def __init__(self, width: int, down: bool) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(width, width // 2 if down else width * 2, 3, padding=1, bias=False),
                nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    class PatchEmbed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # Never a bias, whatever the other convs do (as published).
            self.proj = nn.Conv2d(info.in_channels, dim, 3, padding=1, bias=False)

    (b1, b2, b3, b4), (h1, h2, h3, h4) = shape.blocks, shape.heads

    class KBNetL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = PatchEmbed()
            self.encoder_level1, self.down1_2 = run(b1, dim, h1), Resample(dim, True)
            self.encoder_level2, self.down2_3 = run(b2, 2 * dim, h2), Resample(2 * dim, True)
            self.encoder_level3, self.down3_4 = run(b3, 4 * dim, h3), Resample(4 * dim, True)
            self.latent = run(b4, 8 * dim, h4)
            self.up4_3, self.reduce_chan_level3 = Resample(8 * dim, False), nn.Conv2d(8 * dim, 4 * dim, 1, bias=bias)
            self.decoder_level3 = run(b3, 4 * dim, h3)
            self.up3_2, self.reduce_chan_level2 = Resample(4 * dim, False), nn.Conv2d(4 * dim, 2 * dim, 1, bias=bias)
            self.decoder_level2 = run(b2, 2 * dim, h2)
            # The top level is not reduced: it and the refinement run at twice the width.
            self.up2_1, self.decoder_level1 = Resample(2 * dim, False), run(b1, 2 * dim, h1)
            self.refinement = run(shape.refinement, 2 * dim, h1)
            self.output = nn.Conv2d(2 * dim, info.out_channels, 3, padding=1, bias=bias)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            # Mirrored to spandrel's 16 px multiple (the published network does not pad; its test script
            # and spandrel mirror), cropped back.
            padded = pad_to_multiple(image, shape.padding_unit)
            level1 = self.encoder_level1(self.patch_embed.proj(padded))
            level2 = self.encoder_level2(self.down1_2(level1))
            level3 = self.encoder_level3(self.down2_3(level2))
            x = self.latent(self.down3_4(level3))
            x = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(x), level3], 1)))
            x = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x), level2], 1)))
            x = self.refinement(self.decoder_level1(torch.cat([self.up2_1(x), level1], 1)))
            return (self.output(x) + padded)[..., :height, :side]

    return KBNetL()
