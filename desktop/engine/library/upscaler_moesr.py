"""MoESR upscalers without torch: what a MoESR file is, judged from its tensor names and shapes.

MoESR ("Mamba out Excitation Super-Resolution", a community architecture) is an input conv, G groups and
an upsampler, the groups' output added to the input conv's. A group is B gated-convolution blocks
(MambaOut's unit, as MoSR's, with an Inception depth-wise mixer: a 3x3, a 1 x 11 and an 11 x 1 conv, each
over an eighth of the channels, the rest untouched, and a per-channel `gamma` on the residual) and a
half-resolution stage (`msg`: conv to a quarter width, pixel unshuffle, three more gated blocks, conv,
pixel shuffle, added back).

The header tells the width and colours (`in_to_dim`), the groups and blocks (`blocks.G.blocks.B`), the
gates' hidden widths (each `fc1` makes twice it), the Inception branches' width and kernels, and the
upsampler from its convolutions: one conv (1x, or a direct pixel shuffle whose outputs give the scale),
a conv, then shuffle convs every two indices ("pixelshuffle": 4 or 9 times the middle width per 2x or 3x
stage), convs every three indices ("nearest+conv": a nearest 2x upsample after each), or DySample
(`init_pos`). One nearest+conv stage is 2x or 3x alike in shapes: the file's `upscale.MetaUpsample`
(seven bytes: version, kind, scale, widths, groups) tells which, read from the file when it is given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import SafetensorsHeader
from desktop.engine.library.upscaler_transformers import counted

_PROBES = ("in_to_dim.weight", "blocks.0.blocks.0.gamma", "blocks.0.blocks.0.conv.dwconv_hw.weight",
           "blocks.0.msg.gated.0.fc1.weight", "upscale.MetaUpsample")  # fmt: skip
_GROUP = re.compile(r"blocks\.(\d+)\.")
_BLOCK = re.compile(r"blocks\.0\.blocks\.(\d+)\.")
_UPSCALE_CONV = re.compile(r"upscale\.(\d+)\.weight")
_META_KINDS = ("conv", "pixelshuffledirect", "pixelshuffle", "nearest+conv", "dysample")  # MetaUpsample's order
MOESR_DYSAMPLE_GROUPS = 4  # MoESR's DySample always samples in 4 groups
_UPSAMPLER_NAMES = {"conv": "", "pixelshuffledirect": "", "pixelshuffle": ", pixel shuffle",
                    "nearest+conv": ", nearest + conv", "dysample": ", DySample"}  # fmt: skip


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class MoESRShape:
    """What a MoESR header says beyond scale and width."""

    groups: int
    blocks: int  # gated blocks per group (besides the half-resolution stage's three)
    hidden: int  # the groups' gated blocks' hidden width
    stage_hidden: int  # the half-resolution stage's gated blocks' hidden width
    branch: int  # channels each Inception branch convolves
    square: int  # the Inception square kernel
    band: int  # the Inception band kernels' length
    upsampler: str  # "conv" (1x) | "pixelshuffledirect" | "pixelshuffle" | "nearest+conv" | "dysample"
    middle: int  # "pixelshuffle": its convs' width; else 0


def looks_like_moesr(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_moesr(
    tensors: Mapping[str, _Shaped], name: str, meta: tuple[int, ...] | None = None
) -> tuple[MoESRShape, int, int, int, int]:
    """(shape, scale, width, input channels, output channels) of a MoESR header; ModelError otherwise.
    `meta`: the file's MetaUpsample values (read_meta_upsample), which settle a nearest+conv model's scale."""
    width, in_channels = tuple(tensors["in_to_dim.weight"].shape[:2])
    groups = sorted({int(m[1]) for key in tensors if (m := _GROUP.match(key))})
    blocks = sorted({int(m[1]) for key in tensors if (m := _BLOCK.match(key))})
    for kind, found in (("groups", groups), ("blocks in its first group", blocks)):
        if found != list(range(len(found))):
            raise ModelError(f"{name} is a MoESR with {kind} {found}: the file is damaged.")
    if width % 4:
        raise ModelError(f"{name} is a MoESR {width} features wide; its half-resolution stage needs a multiple of 4.")
    hidden = _dim(tensors, "blocks.0.blocks.0.fc1.weight", name) // 2
    stage_hidden = _dim(tensors, "blocks.0.msg.gated.0.fc1.weight", name) // 2
    hw, band = (tuple(tensors[f"blocks.0.blocks.0.conv.dwconv_{part}.weight"].shape) for part in ("hw", "w"))
    if min(hidden, stage_hidden) < width or 3 * hw[0] > width:
        raise ModelError(f"{name}'s MoESR gates ({hidden}, {stage_hidden} hidden) or Inception branches ({hw[0]} "
                         f"channels) do not fit its {width} features.")  # fmt: skip
    upsampler, scale, middle, out_channels = _upsampler(tensors, name, in_channels, meta)
    shape = MoESRShape(len(groups), len(blocks), hidden, stage_hidden, hw[0], hw[2], band[3], upsampler, middle)
    return shape, scale, width, in_channels, out_channels


def _dim(tensors: Mapping[str, _Shaped], key: str, name: str) -> int:
    if key not in tensors:
        raise ModelError(f"{name} is a MoESR without {key}: the file is damaged.")
    return tensors[key].shape[0]


def _upsampler(
    tensors: Mapping[str, _Shaped], name: str, in_channels: int, meta: tuple[int, ...] | None
) -> tuple[str, int, int, int]:
    """(kind, scale, middle width, output channels) from the upsampler's tensors (and MetaUpsample's values)."""
    if "upscale.0.init_pos" in tensors:
        offsets = _dim(tensors, "upscale.0.offset.weight", name)
        scale = math.isqrt(offsets // (2 * MOESR_DYSAMPLE_GROUPS))
        if scale < 1 or 2 * MOESR_DYSAMPLE_GROUPS * scale**2 != offsets:
            raise ModelError(f"{name}'s MoESR DySample makes {offsets} offsets, which fits no scale.")
        return "dysample", scale, 0, _dim(tensors, "upscale.0.end_conv.weight", name)
    convs = sorted(int(m[1]) for key in tensors if (m := _UPSCALE_CONV.fullmatch(key)))
    if not convs or convs[0] != 0:
        raise ModelError(f"{name} is a MoESR without its upsampler's first conv (upscale.0): the file is damaged.")
    last = tensors[f"upscale.{convs[-1]}.weight"].shape[0]
    if len(convs) == 1:  # one conv: 1x, or a direct pixel shuffle (the colours are the input's)
        scale = math.isqrt(last // in_channels)
        if scale < 1 or scale * scale * in_channels != last:
            raise ModelError(f"{name}'s MoESR upsampler makes {last} channels, which fits no scale of {in_channels} "
                             "channels.")  # fmt: skip
        return ("conv" if scale == 1 else "pixelshuffledirect"), scale, 0, in_channels
    if convs[1] == 2:  # conv + LeakyReLU, then (conv, shuffle) per stage, then the last conv
        middle = tensors["upscale.0.weight"].shape[0]
        stages = [tensors[f"upscale.{index}.weight"].shape[0] // middle for index in convs[1:-1]]
        if convs != list(range(0, 2 * len(convs), 2)) or stages not in ([9], [4] * len(stages)):
            raise ModelError(f"{name}'s MoESR pixel-shuffle upsampler has convs {convs} of {stages} x its width; the "
                             "file is damaged.")  # fmt: skip
        return "pixelshuffle", 3 if stages == [9] else 2 ** len(stages), middle, last
    # (conv, nearest upsample, LeakyReLU) per stage, then conv, LeakyReLU, the last conv.
    stages = len(convs) - 2
    if convs != [*range(0, 3 * stages + 1, 3), 3 * stages + 2]:
        raise ModelError(f"{name}'s MoESR nearest+conv upsampler has convs {convs}; the file is damaged.")
    scale = 2**stages
    if meta is not None and stages == 1 and meta[1:3] == (_META_KINDS.index("nearest+conv"), 3):
        scale = 3  # one nearest 3x stage: the same tensors as one 2x stage
    return "nearest+conv", scale, 0, last


def read_meta_upsample(header: SafetensorsHeader) -> tuple[int, ...] | None:
    """MoESR's `upscale.MetaUpsample` values (uint8: version, kind, scale, in, out, middle, groups), read with
    the header (`SafetensorsHeader.small_values`); None when the tensor is absent or not seven bytes."""
    values = header.small_values.get("upscale.MetaUpsample")
    return tuple(values) if values is not None and len(values) == 7 else None


def moesr_label(shape: MoESRShape, scale: int, width: int) -> str:
    blocks = f"{shape.groups}x{counted(shape.blocks, 'block')}"
    return f"MoESR {scale}x ({blocks}, {width} features{_UPSAMPLER_NAMES[shape.upsampler]})"
