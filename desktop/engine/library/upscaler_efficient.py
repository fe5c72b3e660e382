"""Efficient upscaler networks without torch: what a SPAN file is, judged from its tensor names and shapes.

SPAN (Swift Parameter-free Attention Network, NTIRE 2024's efficient-SR winner; community models such as
4xNomos8k_span or ClearRealityV1) is a fixed stack: an input conv, six attention blocks of three convs each,
a 1x1 merge of four feature maps, a last conv and a pixel shuffle. Every conv is a "Conv3XC": a 1x1 skip
beside a 1x1 -> 3x3 -> 1x1 chain (twice as wide inside), trained apart and fused into one 3x3 conv to run.
Its header tells the width (`conv_1.sk.weight`), the colour channels and the scale (the upsampler conv's
outputs are channels x scale^2); a `no_norm` tensor marks a model trained without the mean/255 input
normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError

SPAN_BLOCKS = 6  # fixed by the architecture; a file with more or fewer is not SPAN
# The tensors every SPAN file has (the skip and the fused conv of the first and last Conv3XC, the merge, the
# upsampler): enough to tell it from the other upscalers, whose names share none of them.
_SPAN_PROBES = (
    "conv_1.sk.weight", "block_1.c1_r.sk.weight", "block_1.c3_r.eval_conv.weight", "conv_cat.weight",
    "conv_2.sk.weight", "upsampler.0.weight",
)  # fmt: skip


class _Shaped(Protocol):
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SPANShape:
    """What a SPAN file's header says beyond scale and width."""

    normalised: bool  # the input is (x - mean) * 255 (every published model but those saved with `no_norm`)


def looks_like_span(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _SPAN_PROBES)


def inspect_span(tensors: Mapping[str, _Shaped], name: str) -> tuple[SPANShape, int, int, int, int]:
    """(shape, scale, width, input channels, output channels) of a SPAN header; ModelError when it is not one."""
    skip = tuple(tensors["conv_1.sk.weight"].shape)
    if len(skip) != 4 or skip[2:] != (1, 1):
        raise ModelError(f"{name} has SPAN's names but its first convolution is {skip}, not a 1x1 skip.")
    width, in_channels = skip[0], skip[1]
    blocks = sorted({int(key.split(".")[0].removeprefix("block_")) for key in tensors if key.startswith("block_")})
    if blocks != list(range(1, SPAN_BLOCKS + 1)):
        raise ModelError(f"{name} has SPAN blocks {blocks}; the architecture has {SPAN_BLOCKS} (the file is damaged).")
    outputs = tensors["upsampler.0.weight"].shape[0]
    scale = round((outputs / in_channels) ** 0.5)
    if scale < 1 or scale * scale * in_channels != outputs:
        raise ModelError(f"{name}'s upsampler makes {outputs} channels, which fits no scale of {in_channels} channels.")
    return SPANShape(normalised="no_norm" not in tensors), scale, width, in_channels, in_channels


def span_label(shape: SPANShape, scale: int, width: int) -> str:
    return f"SPAN {scale}x ({width} features{'' if shape.normalised else ', no input normalisation'})"
