"""FFTformer, Marble's own implementation, built from the shape desktop.engine.library.upscaler_fftformer reads;
module and parameter names follow the file's (`encoder_level1.N.ffn.fft`, `decoder_level3.N.attn.to_hidden`,
`fuse2.att_channel...`) so a strict load checks every tensor.

Every block's feed-forward cuts its features into 8x8 patches and multiplies each patch's spectrum by a
learned table (a per-channel filter); the decoder's and refinement's blocks also "attend" by multiplying the
spectra of a query and a key patch (a circular correlation, cheaper than dot-product attention) and gating
the values with the normalised result. The network adds its input to its output.

Two halvings, then 8 px patches: the input is padded at the bottom and right to a multiple of 32 by
mirroring (as spandrel pads for its size requirement) and the result cropped back, so any tile size runs
and a multiple of 32 runs exactly as published.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_transformers import pad_to_multiple
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_fftformer import PATCH, FFTformerShape


def build_fftformer(info: UpscalerInfo) -> Any:
    """The FFTformer network for `info` (layout "fftformer"), untrained: load the file's tensors into it
    strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, FFTformerShape)
    shape, width = info.detail, info.features

    def to_patches(x: torch.Tensor) -> torch.Tensor:  # (b, c, H, W) -> (b, c, H/8, W/8, 8, 8)
        b, c, h, w = x.shape
        return x.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).transpose(3, 4)

    def from_patches(x: torch.Tensor) -> torch.Tensor:
        b, c, rows, cols = x.shape[:4]
        return x.transpose(3, 4).reshape(b, c, rows * PATCH, cols * PATCH)

    class ChannelNorm(nn.Module):
        """LayerNorm over each pixel's channels with a learned shift (eps 1e-5), its tensors under `body`."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.body = nn.Module()
            self.body.weight = nn.Parameter(torch.ones(dim))
            self.body.bias = nn.Parameter(torch.zeros(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(1, keepdim=True)
            variance = (x - mean).pow(2).mean(1, keepdim=True)
            normed = (x - mean) / torch.sqrt(variance + 1e-5)
            return normed * self.body.weight[:, None, None] + self.body.bias[:, None, None]

    class SpectralFeedForward(nn.Module):
        """1x1 out to twice `hidden`, each 8x8 patch filtered by the learned spectrum table, a depth-wise 3x3,
        a GELU gate of one half by the other, 1x1 back."""

        def __init__(self, dim: int, hidden: int, bias: bool) -> None:
            super().__init__()
            self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
            self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
            self.fft = nn.Parameter(torch.ones(hidden * 2, 1, 1, PATCH, PATCH // 2 + 1))
            self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            spectrum = torch.fft.rfft2(to_patches(self.project_in(x)).float()) * self.fft
            x = from_patches(torch.fft.irfft2(spectrum, s=(PATCH, PATCH)))
            gate, value = self.dwconv(x).chunk(2, dim=1)
            return self.project_out(functional.gelu(gate) * value)

    class SpectralAttention(nn.Module):
        """Queries, keys and values from a 1x1 and a depth-wise 3x3; per 8x8 patch, the product of the query's
        and key's spectra back in space, normalised, gates the values; 1x1 back."""

        def __init__(self, dim: int, bias: bool) -> None:
            super().__init__()
            self.to_hidden = nn.Conv2d(dim, dim * 6, 1, bias=bias)
            self.to_hidden_dw = nn.Conv2d(dim * 6, dim * 6, 3, padding=1, groups=dim * 6, bias=bias)
            self.project_out = nn.Conv2d(dim * 2, dim, 1, bias=bias)
            self.norm = ChannelNorm(dim * 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.to_hidden_dw(self.to_hidden(x)).chunk(3, dim=1)
            product = torch.fft.rfft2(to_patches(q).float()) * torch.fft.rfft2(to_patches(k).float())
            correlation = from_patches(torch.fft.irfft2(product, s=(PATCH, PATCH)))
            return self.project_out(v * self.norm(correlation))

    class Block(nn.Module):
        def __init__(self, dim: int, hidden: int, bias: bool, attend: bool) -> None:
            super().__init__()
            self.attend = attend
            if attend:
                self.norm1, self.attn = ChannelNorm(dim), SpectralAttention(dim, bias)
            self.norm2, self.ffn = ChannelNorm(dim), SpectralFeedForward(dim, hidden, bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.attend:
                x = x + self.attn(self.norm1(x))
            return x + self.ffn(self.norm2(x))

    def blocks(level: int, count: int, attend: bool) -> nn.Sequential:
        dim = width * 2**level
        return nn.Sequential(*(Block(dim, shape.hidden[level], shape.bias, attend) for _ in range(count)))

    class Fuse(nn.Module):
        """The upsampled decoder features and the encoder's skip, mixed (1x1), through one feed-forward block
        (its own width, no biases), mixed again, and the two halves summed."""

        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(dim * 2, dim * 2, 1)
            self.att_channel = Block(dim * 2, hidden, False, False)
            self.conv2 = nn.Conv2d(dim * 2, dim * 2, 1)

        def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            first, second = self.conv2(self.att_channel(self.conv(torch.cat((up, skip), 1)))).chunk(2, dim=1)
            return first + second

    class Resize(nn.Module):
        """Bilinear resizing by `factor` (no tensors): the first step of `down*`/`up*`'s `body`."""

        def __init__(self, factor: float) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return functional.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)

    def resample(dim: int, factor: float, out: int) -> nn.Module:
        module = nn.Module()
        module.body = nn.Sequential(Resize(factor), nn.Conv2d(dim, out, 3, padding=1, bias=False))
        return module

    class FFTformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(info.in_channels, width, 3, padding=1, bias=False)
            self.encoder_level1 = blocks(0, shape.blocks[0], False)
            self.down1_2 = resample(width, 0.5, width * 2)
            self.encoder_level2 = blocks(1, shape.blocks[1], False)
            self.down2_3 = resample(width * 2, 0.5, width * 4)
            self.encoder_level3 = blocks(2, shape.blocks[2], False)
            self.decoder_level3 = blocks(2, shape.blocks[2], True)
            self.up3_2 = resample(width * 4, 2.0, width * 2)
            # Present in the published files but unused by the published forward pass (the fusion block
            # replaced it); kept so a strict load accepts them.
            self.reduce_chan_level2 = nn.Conv2d(width * 4, width * 2, 1, bias=shape.bias)
            self.decoder_level2 = blocks(1, shape.blocks[1], True)
            self.up2_1 = resample(width * 2, 2.0, width)
            self.decoder_level1 = blocks(0, shape.blocks[0], True)
            self.refinement = blocks(0, shape.refinement, True)
            self.fuse2 = Fuse(width * 2, shape.fuse_hidden[1])
            self.fuse1 = Fuse(width, shape.fuse_hidden[0])
            self.output = nn.Conv2d(width, info.out_channels, 3, padding=1, bias=shape.bias)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            x = pad_to_multiple(image, shape.padding_unit)
            level1 = self.encoder_level1(self.patch_embed.proj(x))
            level2 = self.encoder_level2(self.down1_2.body(level1))
            level3 = self.decoder_level3(self.encoder_level3(self.down2_3.body(level2)))
            level2 = self.decoder_level2(self.fuse2(self.up3_2.body(level3), level2))
            level1 = self.decoder_level1(self.fuse1(self.up2_1.body(level2), level1))
            out = self.output(self.refinement(level1)) + x
            return out[..., :height, :side]

    return FFTformer()
