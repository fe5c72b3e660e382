"""OmniSR upscalers without torch: what an OmniSR file is, judged from its tensor names and shapes.

OmniSR (Omni Self-Attention, CVPR 2023) is an input conv, R residual groups (OSAG) of B Omni-SA blocks
plus a 1x1 conv and an ESA gate each, an output conv and a pixel-shuffle upsampler. The header tells the
width (`input.weight`), the groups and blocks (the indices under `residual_layer`), the window (the
relative-position table holds (2w-1)^2 rows; a file without the table is trained with w = 8, the
default every published model uses) and the scale (the upsampler's channels over the colour channels).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


_PROBES = ("input.weight", "up.0.weight", "residual_layer.0.residual_layer.0.layer.0.fn.0.weight")
_GROUP = re.compile(r"residual_layer\.(\d+)\.esa\.conv1\.weight")
_BLOCK = re.compile(r"residual_layer\.0\.residual_layer\.(\d+)\.")
_TABLE = "residual_layer.0.residual_layer.0.layer.2.fn.rel_pos_bias.weight"
DEFAULT_WINDOW = 8  # the architecture's default when the file has no position table to tell it


@dataclass(frozen=True)
class OmniSRShape:
    """What an OmniSR header says beyond scale and width."""

    groups: int  # residual groups (OSAG)
    blocks: int  # Omni-SA blocks in each group
    window: int  # the attention window's side
    position_bias: bool  # the learned relative-position table in each attention
    bias: bool  # biases on the input, output, group-end and upsampler convs


def looks_like_omnisr(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_omnisr(tensors: Mapping[str, _Shaped], name: str) -> tuple[OmniSRShape, int, int, int, int]:
    """(shape, scale, width, input channels, output channels) of an OmniSR header; ModelError otherwise."""
    width, in_channels = tensors["input.weight"].shape[:2]
    groups = sorted(int(m[1]) for key in tensors if (m := _GROUP.fullmatch(key)))
    if not groups or groups != list(range(len(groups))):
        raise ModelError(f"{name} is an OmniSR with groups {groups} of residual_layer (the file is damaged).")
    # Indices 0..B-1 are the blocks, B the group-end 1x1 conv.
    members = sorted({int(m[1]) for key in tensors if (m := _BLOCK.match(key))})
    if len(members) < 2 or members != list(range(len(members))):
        raise ModelError(f"{name} is an OmniSR with blocks {members} in its first group (the file is damaged).")
    window = DEFAULT_WINDOW
    if _TABLE in tensors:
        rows = tensors[_TABLE].shape[0]
        window = round((rows**0.5 + 1) / 2)
        if (2 * window - 1) ** 2 != rows:
            raise ModelError(f"{name}'s position table has {rows} rows, which fits no attention window.")
    if width % 4:
        raise ModelError(f"{name} is an OmniSR {width} features wide; its four attention heads need a multiple of 4.")
    outputs = tensors["up.0.weight"].shape[0]
    scale = round((outputs / in_channels) ** 0.5)
    if scale < 1 or scale * scale * in_channels != outputs:
        raise ModelError(f"{name}'s upsampler makes {outputs} channels, which fits no scale of {in_channels} channels.")
    shape = OmniSRShape(len(groups), len(members) - 1, window, _TABLE in tensors, "input.bias" in tensors)
    return shape, scale, width, in_channels, in_channels


def omnisr_label(shape: OmniSRShape, scale: int, width: int) -> str:
    return f"OmniSR {scale}x ({width} features, {shape.groups}x{shape.blocks} blocks, window {shape.window})"
