"""RetinexFormer, Marble's own implementation, built from the shape desktop.engine.library.upscaler_retinexformer
reads; module and parameter names follow the file's (`body.S.estimator.conv1`,
`body.S.denoiser.encoder_layers.L.0.blocks.N.0.to_q`, ...) so a strict load checks every tensor.

Each stage lights the image up by an estimated map (image x map + image) and hands the result, with the
estimator's illumination features, to a two-level U-Net of illumination-guided attention blocks; the U-Net
adds its output to what it was given. The attention is across channels (a d x d map per head, over the whole
image), so a tile's result depends on all of the tile; the blended overlap hides the difference.

The U-Net halves the size twice, so the input is padded at the bottom and right to a multiple of 8 by
mirroring (spandrel's size requirement; the network needs 4) and the result cropped back: any tile size runs,
and a size that is already a multiple runs exactly as published.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_transformers import pad_to_multiple
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_retinexformer import LEVELS, RetinexFormerShape


def build_retinexformer(info: UpscalerInfo) -> Any:
    """The RetinexFormer network for `info` (layout "retinexformer"), untrained: load the file's tensors into it
    strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, RetinexFormerShape)
    shape, width = info.detail, info.features

    class Estimator(nn.Module):
        """The image and its channel mean -> illumination features (1x1, then a 5x5 in four groups) and a
        3-channel light-up map (1x1)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, width, 1)
            self.depth_conv = nn.Conv2d(width, width, 5, padding=2, groups=4)
            self.conv2 = nn.Conv2d(width, 3, 1)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.depth_conv(self.conv1(torch.cat((image, image.mean(1, keepdim=True)), 1)))
            return features, self.conv2(features)

    class GuidedAttention(nn.Module):
        """Attention across channels: per head, the d x d similarity of L2-normalised keys and queries (each
        channel a vector over all pixels), scaled by the head's learned `rescale`, mixes the values, which the
        illumination features weight first. A depth-wise conv branch on the unweighted values adds position."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.heads = dim // width  # each head is `width` channels wide
            self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
            self.rescale = nn.Parameter(torch.ones(self.heads, 1, 1))
            self.proj = nn.Linear(dim, dim)
            self.pos_emb = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False, groups=dim), nn.GELU(),
                                         nn.Conv2d(dim, dim, 3, padding=1, bias=False, groups=dim))  # fmt: skip

        def forward(self, x: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
            b, h, w, c = x.shape
            tokens = x.reshape(b, h * w, c)
            values = self.to_v(tokens)

            def per_head(t: torch.Tensor) -> torch.Tensor:  # (b, n, c) -> (b, heads, d, n)
                return t.reshape(b, h * w, self.heads, width).permute(0, 2, 3, 1)

            q = functional.normalize(per_head(self.to_q(tokens)), dim=-1)
            k = functional.normalize(per_head(self.to_k(tokens)), dim=-1)
            v = per_head(values * light.reshape(b, h * w, c))
            attention = ((k @ q.transpose(-2, -1)) * self.rescale).softmax(-1)
            mixed = (attention @ v).permute(0, 3, 1, 2).reshape(b, h * w, c)
            position = self.pos_emb(values.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return self.proj(mixed).view(b, h, w, c) + position

    class FeedForward(nn.Module):
        """LayerNorm over channels (`norm`), then 1x1 out to 4x, GELU, depth-wise 3x3, GELU, 1x1 back
        (`fn.net`)."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.fn = nn.Module()
            self.fn.net = nn.Sequential(
                nn.Conv2d(dim, dim * 4, 1, bias=False), nn.GELU(),
                nn.Conv2d(dim * 4, dim * 4, 3, padding=1, bias=False, groups=dim * 4), nn.GELU(),
                nn.Conv2d(dim * 4, dim, 1, bias=False),
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fn.net(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    class Blocks(nn.Module):
        """`count` (attention, feed-forward) pairs, each added back, on channels-last features."""

        def __init__(self, dim: int, count: int) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.ModuleList((GuidedAttention(dim), FeedForward(dim))) for _ in range(count))

        def forward(self, x: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
            x, light = x.permute(0, 2, 3, 1), light.permute(0, 2, 3, 1)
            for attention, feed_forward in self.blocks:  # type: ignore[misc]
                x = x + attention(x, light)
                x = x + feed_forward(x)
            return x.permute(0, 3, 1, 2)

    def down(dim: int) -> nn.Conv2d:
        return nn.Conv2d(dim, dim * 2, 4, stride=2, padding=1, bias=False)

    class UNet(nn.Module):
        """Per level: attention blocks, then the features and the illumination features each downsampled by
        their own conv; the bottleneck's blocks; per level back up: a transposed conv, a 1x1 fusing the
        encoder's features at that level, attention blocks guided by that level's illumination features."""

        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Conv2d(info.in_channels, width, 3, padding=1, bias=False)
            dims = [width * 2**level for level in range(LEVELS + 1)]
            self.encoder_layers = nn.ModuleList(
                nn.ModuleList((Blocks(dims[level], shape.blocks[level]), down(dims[level]), down(dims[level])))
                for level in range(LEVELS)
            )
            self.bottleneck = Blocks(dims[LEVELS], shape.blocks[-1])
            self.decoder_layers = nn.ModuleList(
                nn.ModuleList((
                    nn.ConvTranspose2d(dims[level + 1], dims[level], 2, stride=2),
                    nn.Conv2d(dims[level + 1], dims[level], 1, bias=False),
                    Blocks(dims[level], shape.blocks[level]),
                ))
                for level in reversed(range(LEVELS))
            )
            self.mapping = nn.Conv2d(width, info.out_channels, 3, padding=1, bias=False)

        def forward(self, x: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
            features, skips = self.embedding(x), []
            for blocks, down_features, down_light in self.encoder_layers:  # type: ignore[misc]
                features = blocks(features, light)
                skips.append((features, light))
                features, light = down_features(features), down_light(light)
            features = self.bottleneck(features, light)
            for up, fuse, blocks in self.decoder_layers:  # type: ignore[misc]
                skip, light = skips.pop()
                features = blocks(fuse(torch.cat((up(features), skip), 1)), light)
            return self.mapping(features) + x

    class Stage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.estimator, self.denoiser = Estimator(), UNet()

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            light, lift = self.estimator(image)
            return self.denoiser(image * lift + image, light)

    class RetinexFormer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*(Stage() for _ in range(shape.stages)))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            return self.body(pad_to_multiple(image, shape.padding_unit))[..., :height, :side]

    return RetinexFormer()
