"""SAFMN and SAFMN-BCIE, Marble's own implementation, built from the shape desktop.engine.library.upscaler_safmn
reads; module and parameter names follow the file's (`feats.N.safm.mfr.I`, `feats.N.ccm.ccm.0`, ...) so a
strict load checks every tensor. Both networks are made of the same block (`safmn_block`); SAFMN-BCIE
groups them and runs them on a pixel-unshuffled input.

The network's pyramid max-pools the features down to an eighth (after SAFMN-BCIE's unshuffle by f, an
eighth of 1/f), so the input is padded at the bottom and right to a multiple of 8 (8f), mirrored as
spandrel's size requirement pads, and the result cropped back: any tile size runs, and a size that is
already a multiple runs exactly as published.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_efficient import channel_norm
from desktop.engine.backends.upscale_transformers import pad_to_multiple
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_safmn import LEVELS, SAFMNShape


def safmn_block(width: int, hidden: int) -> Any:
    """One SAFMN block (`norm1`, `safm`, `norm2`, `ccm`): the feature pyramid's modulation, then the conv
    feed-forward, each over channel-normalised features and added back."""
    import torch
    from torch import nn
    from torch.nn import functional

    class Pyramid(nn.Module):
        """Spatially-adaptive modulation: the channels in LEVELS groups; group i is max-pooled to 1/2^i of
        the size (group 0 not at all), filtered by its depth-wise 3x3 and brought back by nearest
        upsampling; a 1x1 mixes the groups into a GELU gate on the block's input."""

        def __init__(self) -> None:
            super().__init__()
            part = width // LEVELS
            self.mfr = nn.ModuleList(nn.Conv2d(part, part, 3, padding=1, groups=part) for _ in range(LEVELS))
            self.aggr = nn.Conv2d(width, width, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, side = x.shape[-2:]
            levels = []
            for level, (group, conv) in enumerate(zip(x.chunk(LEVELS, 1), self.mfr, strict=True)):
                if level:
                    pooled = functional.adaptive_max_pool2d(group, (height >> level, side >> level))
                    group = functional.interpolate(conv(pooled), size=(height, side), mode="nearest")
                else:
                    group = conv(group)
                levels.append(group)
            return functional.gelu(self.aggr(torch.cat(levels, 1))) * x

    class FeedForward(nn.Module):
        """A 3x3 conv out to `hidden`, GELU, a 1x1 back (the file's `ccm.0`, `ccm.2`)."""

        def __init__(self) -> None:
            super().__init__()
            self.ccm = nn.Sequential(nn.Conv2d(width, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, width, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ccm(x)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = channel_norm(width), channel_norm(width)
            self.safm, self.ccm = Pyramid(), FeedForward()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.safm(self.norm1(x))
            return x + self.ccm(self.norm2(x))

    return Block()


def build_safmn(info: UpscalerInfo) -> Any:
    """The SAFMN network for `info` (layout "safmn"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn

    assert isinstance(info.detail, SAFMNShape)
    shape, width, scale = info.detail, info.features, info.scale

    class SAFMN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.to_feat = nn.Conv2d(info.in_channels, width, 3, padding=1)
            self.feats = nn.Sequential(*(safmn_block(width, shape.hidden) for _ in range(shape.blocks)))
            self.to_img = nn.Sequential(nn.Conv2d(width, info.out_channels * scale * scale, 3, padding=1),
                                        nn.PixelShuffle(scale))  # fmt: skip

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            x = self.to_feat(pad_to_multiple(image, shape.padding_unit))
            out = self.to_img(self.feats(x) + x)
            return out[..., : height * scale, : side * scale]

    return SAFMN()


def build_safmn_bcie(info: UpscalerInfo) -> Any:
    """The SAFMN-BCIE network for `info` (layout "safmn-bcie"), untrained: SAFMN's blocks in groups, on the
    input pixel-unshuffled by the shape's factor and shuffled back; the output is the input's size."""
    import torch
    from torch import nn

    assert isinstance(info.detail, SAFMNShape)
    shape, width = info.detail, info.features
    factor = shape.unshuffle

    class Group(nn.Module):
        """`layers` SAFMN blocks and a closing 3x3 conv, with the group's own skip."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(*(safmn_block(width, shape.hidden) for _ in range(shape.layers)))
            self.conv = nn.Conv2d(width, width, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(self.layers(x))

    class SAFMNBCIE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # The parameter-free (un)shuffles keep their Sequential slots, so the convs keep the file's names
            # (`to_feat.1`, `to_img.0`, `to_img.2`).
            packed = info.in_channels * factor * factor
            self.to_feat = nn.Sequential(nn.PixelUnshuffle(factor), nn.Conv2d(packed, width, 3, padding=1))
            self.feats = nn.Sequential(*(Group() for _ in range(shape.blocks)))
            self.to_img = nn.Sequential(
                nn.Conv2d(width, width * factor * factor, 3, padding=1),
                nn.PixelShuffle(factor),
                nn.Conv2d(width, info.out_channels, 3, padding=1),
            )

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            x = self.to_feat(pad_to_multiple(image, shape.padding_unit))
            return self.to_img(self.feats(x) + x)[..., :height, :side]

    return SAFMNBCIE()
