"""KBNet restoration models without torch: what a KBNet file is, judged from its tensor names and shapes.

KBNet (Zhang et al. 2023, "KBNet: Kernel Basis Network for Image Restoration") comes in two networks. Its
small one, KBNet-S (the published SIDD denoising and deblurring models), is NAFNet's U-Net frame
(desktop.engine.library.upscaler_nafnet: `intro`, `encoders`, `downs`, `middle_blks`, `ups`, `decoders`,
`ending`) around kernel-basis blocks: each block learns `bases` kernel sets (`w`, `b`: 3x3 grouped convs
with four channels per group) and, per pixel, mixes them by weights predicted from the features
(`conv2`, `conv211`, scaled by `attgamma`), applying the mixed kernel to a projection of the features; a
1x1 + large-kernel depth-wise branch (`conv11`: 5x5 over four-channel groups, or a 3x3 per channel in the
"lightweight" variant) and NAFNet's channel attention (`sca`) gate the result; a gated feed-forward
(`conv4`, `conv5`) follows, whose hidden width is a ratio of the block's width.

The header tells the frame's levels and width, the basis count (`attgamma`), the feed-forward ratio
(`middle_blks.0.conv4`) and the lightweight variant (`conv11.1`'s kernel).

KBNet's large network, KBNet-L, is a Restormer-style four-level U-Net (`patch_embed`, `encoder_level1..3`,
`latent`, `decoder_level3..1`, `refinement`, `output`) whose blocks pair a channel attention with a
kernel-basis feed-forward; its header tells the width, the blocks per level, the heads (the temperatures),
the feed-forward ratio, the basis count and whether the convs carry biases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError
from desktop.engine.library.upscaler_nafnet import NAFNetShape, inspect_unet, nafnet_label


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


# The kernel-basis gain beside NAFNet's names: KBNet-S's alone.
_PROBES = ("middle_blks.0.attgamma", "middle_blks.0.w", "intro.weight", "ending.weight")
# KBNet-L's feed-forward (named `attn` in the file) in its refinement stage; Restormer's attention has
# `qkv_dwconv`, never `dwconv.0`.
LARGE_PROBE = "refinement.0.attn.dwconv.0.weight"
KERNEL = 3  # the basis kernels' size in every KBNet
GROUP = 4  # channels per group of the basis convs (KBNet-S)
LARGE_GROUP = 2  # channels per group of KBNet-L's basis convs


@dataclass(frozen=True)
class KBNetShape:
    """What a KBNet-S header says beyond its width."""

    unet: NAFNetShape  # the levels and blocks of NAFNet's frame
    bases: int  # kernel sets each block mixes per pixel
    ffn_ratio: float  # the feed-forward's hidden width over the block's width (read at the bottom level)
    lightweight: bool  # conv11 is a 3x3 per channel (not a 5x5 over four-channel groups)


def looks_like_kbnet(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_kbnet(tensors: Mapping[str, _Shaped], name: str) -> tuple[KBNetShape, int, int, int, int]:
    """(shape, scale 1, width, in channels, out channels) of a KBNet-S header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a KBNet-S restoration model but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    unet, width, in_channels, out_channels = inspect_unet(tensors, name, "KBNet-S")
    if width < GROUP:
        raise ModelError(f"{name} is a KBNet-S {width} features wide; its kernel bases need at least {GROUP}.")
    bases = shape("middle_blks.0.attgamma")[1]
    hidden, bottom = shape("middle_blks.0.conv4.weight")[:2]
    lightweight = shape("encoders.0.0.conv11.1.weight")[2] == KERNEL
    return KBNetShape(unet, bases, hidden / bottom, lightweight), 1, width, in_channels, out_channels


def kbnet_label(info: KBNetShape, width: int) -> str:
    return nafnet_label(info.unet, width, "KBNet-S light" if info.lightweight else "KBNet-S")


# KBNet-L's level names, top to bottom: each is a run of blocks whose attention temperatures give its heads.
LARGE_LEVELS = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")


@dataclass(frozen=True)
class KBNetLShape:
    """What a KBNet-L header says beyond its width: a four-level Restormer-style U-Net whose blocks are a
    kernel-basis feed-forward (`attn`, named so in the file) and a channel ("transposed") attention (`ffn`)."""

    blocks: tuple[int, int, int, int]  # per level, top first (the decoder mirrors the encoder's counts)
    refinement: int  # blocks after the decoder, at twice the width
    heads: tuple[int, int, int, int]  # attention heads per level
    ffn_ratio: float  # the feed-forward's hidden width over the block's width
    bias: bool  # the convs other than the kernel-basis branch's carry biases
    bases: int  # kernel sets each feed-forward mixes per pixel

    @property
    def padding_unit(self) -> int:
        """Three 2x downsamplings: multiples of 8 run; spandrel asks for 16, and Marble pads as it does."""
        return 16


def looks_like_kbnet_l(tensors: Mapping[str, _Shaped]) -> bool:
    return LARGE_PROBE in tensors and "patch_embed.proj.weight" in tensors


def inspect_kbnet_l(tensors: Mapping[str, _Shaped], name: str) -> tuple[KBNetLShape, int, int, int, int]:
    """(shape, scale 1, width, in channels, out channels) of a KBNet-L header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a KBNet-L restoration model but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    def count(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.norm1\.weight")
        found = sorted({int(m[1]) for key in tensors if (m := pattern.fullmatch(key))})
        if not found or found != list(range(len(found))):
            raise ModelError(f"{name}: its KBNet-L {prefix} blocks are numbered {found}, with gaps: the file is "
                             "incomplete.")  # fmt: skip
        return len(found)

    width, in_channels = shape("patch_embed.proj.weight")[:2]
    b1, b2, b3, b4 = (count(level) for level in LARGE_LEVELS)
    h1, h2, h3, h4 = (shape(f"{level}.0.ffn.temperature")[0] for level in LARGE_LEVELS)
    hidden = shape("encoder_level1.0.attn.ga1")[1]
    bias = "encoder_level1.0.ffn.qkv.bias" in tensors
    bases = shape("encoder_level1.0.attn.attgamma")[1]
    info = KBNetLShape((b1, b2, b3, b4), count("refinement"), (h1, h2, h3, h4), hidden / width, bias, bases)
    return info, 1, width, in_channels, shape("output.weight")[0]


def kbnet_l_label(info: KBNetLShape, width: int) -> str:
    counts = "-".join(str(n) for n in info.blocks)
    return f"KBNet-L 1x restoration ({width} features, {counts} + {info.refinement} blocks)"
