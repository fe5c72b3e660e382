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
(`middle_blks.0.conv4`) and the lightweight variant (`conv11.1`'s kernel). KBNet's large network (KBNet-L,
a Restormer-style transformer: `patch_embed`, `encoder_level1`, `latent`, `refinement`) is recognised and
refused by name.
"""

from __future__ import annotations

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
# KBNet-L's attention convs in its refinement stage (Restormer's are `qkv_dwconv`, without the index).
LARGE_PROBE = "refinement.0.attn.dwconv.0.weight"
KERNEL = 3  # the basis kernels' size in every KBNet
GROUP = 4  # channels per group of the basis convs


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
