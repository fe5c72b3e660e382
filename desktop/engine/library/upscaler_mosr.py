"""MoSR upscalers without torch: what a MoSR file is, judged from its tensor names and shapes.

MoSR ("Mamba Out Super-Resolution", a community architecture behind several OpenModelDB models) is one
plain stack `gblocks`: an input conv, N gated-convolution blocks (MambaOut's unit: a channel LayerNorm,
a 3x3 conv to twice a hidden width split into a Mish gate, an identity part and a depth-wise large-kernel
conv part, a 3x3 conv back), then conv (2x wide), Mish, conv, Mish, 1x1 conv. A conv block from the input
(`shortcut`) is added, and an upsampler makes the image: a pixel shuffle (`upsampler.0`), a geometric-
ensemble pixel shuffle (`upsampler.in_to_k`: eight predictions averaged, then shuffled) or DySample
(`upsampler.init_pos`: learned sampling offsets, 4 groups, then a 1x1 conv to the colours).

The header tells the width and colour channels (`gblocks.0`), the block count (the stack's last index is
N + 5), the hidden width (`fc1` makes twice it), the depth-wise part's channels and kernel (`conv`) and
the scale (the upsampler's outputs over 3, 8 x 3 or 8 channels per output pixel).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError
from desktop.engine.library.upscaler_transformers import counted

# The input conv and the first block's gate, depth-wise conv and LayerNorm: names no other upscaler has.
_PROBES = ("gblocks.0.weight", "gblocks.1.fc1.weight", "gblocks.1.conv.weight", "gblocks.1.norm.weight")
_INDEX = re.compile(r"gblocks\.(\d+)\.")
_BLOCK_TENSORS = ("norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "conv.weight", "conv.bias", "fc2.weight",
                  "fc2.bias")  # fmt: skip
MOSR_DYSAMPLE_GROUPS = 4  # MoSR's DySample always samples in 4 groups (not in the file); its offsets tell the scale
_UPSAMPLER_NAMES = {"ps": "", "gps": ", geometric-ensemble shuffle", "dys": ", DySample"}


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class MoSRShape:
    """What a MoSR header says beyond scale, width and block count."""

    upsampler: str  # "ps" (pixel shuffle) | "gps" (geometric-ensemble pixel shuffle) | "dys" (DySample)
    hidden: int  # the gate's hidden width: fc1 makes 2 x hidden channels, split hidden / hidden - conv / conv
    conv_channels: int  # how many of the hidden channels the depth-wise conv sees
    kernel: int  # the depth-wise conv's kernel


def looks_like_mosr(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_mosr(tensors: Mapping[str, _Shaped], name: str) -> tuple[MoSRShape, int, int, int, int, int]:
    """(shape, scale, width, blocks, input channels, output channels) of a MoSR header; ModelError otherwise."""
    first = tuple(tensors["gblocks.0.weight"].shape)
    width, in_channels = first[0], first[1]
    indices = sorted({int(m[1]) for key in tensors if (m := _INDEX.match(key))})
    # Input conv 0, blocks 1..N, the closing convs at N + 1, N + 3, N + 5 (the Mish activations between hold
    # no tensor).
    blocks = indices[-1] - 5
    expected = [*range(blocks + 2), blocks + 3, blocks + 5]
    if blocks < 1 or indices != expected:
        missing = sorted(set(expected) - set(indices)) if blocks >= 1 else []
        raise ModelError(f"{name} is a MoSR with layer(s) {missing or indices} of gblocks missing: the file is "
                         "damaged.")  # fmt: skip
    for block in range(1, blocks + 1):
        absent = [f"gblocks.{block}.{part}" for part in _BLOCK_TENSORS if f"gblocks.{block}.{part}" not in tensors]
        if absent:
            raise ModelError(f"{name} is a MoSR whose block {block} lacks {absent[0]}: the file is damaged.")
    hidden = tensors["gblocks.1.fc1.weight"].shape[0] // 2
    conv = tuple(tensors["gblocks.1.conv.weight"].shape)
    if conv[1] != 1 or not 0 < conv[0] <= hidden or conv[2] != conv[3] or conv[2] % 2 == 0:
        raise ModelError(f"{name}'s MoSR depth-wise convolution is {conv}, which does not fit its {hidden}-channel "
                         "gate.")  # fmt: skip
    if "upsampler.init_pos" in tensors:
        upsampler, out_channels = "dys", _shape(tensors, "upsampler.end_conv.weight", name)[0]
        scale = _scale(_shape(tensors, "upsampler.offset.weight", name)[0], 2 * MOSR_DYSAMPLE_GROUPS, name)
        if width % MOSR_DYSAMPLE_GROUPS:
            raise ModelError(f"{name} is a MoSR {width} features wide; its DySample needs a multiple of "
                             f"{MOSR_DYSAMPLE_GROUPS}.")  # fmt: skip
    elif "upsampler.in_to_k.weight" in tensors:
        upsampler, out_channels = "gps", in_channels
        scale = _scale(tensors["upsampler.in_to_k.weight"].shape[0], 8 * in_channels, name)
    else:
        upsampler, out_channels = "ps", in_channels
        scale = _scale(_shape(tensors, "upsampler.0.weight", name)[0], in_channels, name)
    return MoSRShape(upsampler, hidden, conv[0], conv[2]), scale, width, blocks, in_channels, out_channels


def _shape(tensors: Mapping[str, _Shaped], key: str, name: str) -> tuple[int, ...]:
    if key not in tensors:
        raise ModelError(f"{name} is a MoSR without {key}: the file is damaged.")
    return tuple(tensors[key].shape)


def _scale(outputs: int, per_pixel: int, name: str) -> int:
    """The scale whose square times `per_pixel` is the upsampler's `outputs`."""
    scale = math.isqrt(outputs // per_pixel) if outputs >= per_pixel else 0
    if scale < 1 or scale * scale * per_pixel != outputs:
        raise ModelError(f"{name}'s MoSR upsampler makes {outputs} channels, which fits no scale ({per_pixel} "
                         "per output pixel).")  # fmt: skip
    return scale


def mosr_label(shape: MoSRShape, scale: int, width: int, blocks: int) -> str:
    return f"MoSR {scale}x ({counted(blocks, 'block')}, {width} features{_UPSAMPLER_NAMES[shape.upsampler]})"
