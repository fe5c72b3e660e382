"""1x restoration networks (denoisers) without torch: what a SCUNet file is, judged from its tensor names
and shapes. They load in the upscaler slot like any upscaler, at scale 1: the hires fix then resizes their
output with Lanczos (docs/upscalers.md).

SCUNet (Zhang et al. 2022, "Practical Blind Denoising via Swin-Conv-UNet") is a three-level UNet: a 3x3
head conv, three down stages (swin-conv blocks, then a 2x2 stride-2 conv doubling the width), a body of
blocks at the bottom, three up stages (a 2x2 transposed conv halving the width, then blocks) fed the
matching down stage's input as a skip, and a 3x3 tail conv back to the image's channels. Each block splits
its channels in two halves: a residual conv pair on one, a Swin transformer block (window attention, every
other block shifted by half a window; MLP 4x) on the other, joined by 1x1 convs. The header tells the
width (`m_head.0`), the colour channels (3, or 1 for the grey models), the blocks per stage (the indices
under `m_down1` .. `m_up1`) and the window and heads (each block's relative-position table: heads x
(2w-1) x (2w-1)).
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


# SCUNet's head and tail are single convs inside a Sequential (`.0.`); DRUNet's are bare convs.
SCUNET_PROBES = ("m_head.0.weight", "m_tail.0.weight")
# The stages in the order the network runs them, and each stage's width in units of the base width (the
# block's two halves together): down1 at the image's size, body at an eighth.
SCUNET_STAGES = ("m_down1", "m_down2", "m_down3", "m_body", "m_up3", "m_up2", "m_up1")
_STAGE_WIDTH = {"m_down1": 1, "m_down2": 2, "m_down3": 4, "m_body": 8, "m_up3": 4, "m_up2": 2, "m_up1": 1}
# The up stages start with their transposed conv, the down stages end with their strided conv.
_FIRST_BLOCK = {"m_up3": 1, "m_up2": 1, "m_up1": 1}
_INDEX = re.compile(r"(m_\w+?)\.(\d+)\.")


@dataclass(frozen=True)
class SCUNetShape:
    """What a SCUNet header says beyond the width and channels."""

    depths: tuple[int, ...]  # swin-conv blocks per stage, in SCUNET_STAGES order
    window: int  # the attention window's side (8 in the published models)
    head_width: int  # channels per attention head (32 in the published models)


def looks_like_scunet(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in SCUNET_PROBES)


def inspect_scunet(tensors: Mapping[str, _Shaped], name: str) -> tuple[SCUNetShape, int, int]:
    """(shape, width, colour channels) of a SCUNet header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        found = tensors.get(key)
        if found is None:
            raise ModelError(f"{name} looks like a SCUNet but lacks {key}: the file is incomplete.")
        return tuple(found.shape)

    width, channels = shape("m_head.0.weight")[:2]
    indices: dict[str, set[int]] = {stage: set() for stage in SCUNET_STAGES}
    for key in tensors:
        if (m := _INDEX.match(key)) and m[1] in indices:
            indices[m[1]].add(int(m[2]))
    depths, window, head_width = [], 0, 0
    for stage in SCUNET_STAGES:
        found = sorted(indices[stage])
        if found != list(range(len(found))):
            raise ModelError(f"{name}: SCUNet's {stage} has layers {found}, with gaps: the file is incomplete.")
        depth = len(found) - (0 if stage == "m_body" else 1)  # the strided or transposed conv is no block
        depths.append(depth)
        half = width * _STAGE_WIDTH[stage] // 2  # the transformer half of each block
        for block in range(_FIRST_BLOCK.get(stage, 0), _FIRST_BLOCK.get(stage, 0) + depth):
            heads, rows, cols = shape(f"{stage}.{block}.trans_block.msa.relative_position_params")
            if rows != cols or rows % 2 == 0 or half % heads:
                raise ModelError(f"{name} has a SCUNet layout Marble cannot run ({heads} heads over {half} "
                                 f"channels, a {rows}x{cols} position table in {stage}.{block}).")
            if (window, head_width) not in ((0, 0), ((rows + 1) // 2, half // heads)):
                raise ModelError(f"{name}: SCUNet's blocks disagree on the window or the head width "
                                 f"({stage}.{block}): the file is damaged.")
            window, head_width = (rows + 1) // 2, half // heads
    if width % 2 or not window:
        raise ModelError(f"{name} has a SCUNet layout Marble cannot run ({width} dims, blocks {depths}).")
    if shape("m_tail.0.weight")[0] != channels:
        raise ModelError(f"{name}: SCUNet's tail makes {shape('m_tail.0.weight')[0]} channels from {channels}: "
                         "the file is damaged.")
    return SCUNetShape(tuple(depths), window, head_width), width, channels


def scunet_label(width: int, channels: int) -> str:
    kind = "grey, " if channels == 1 else ""
    return f"SCUNet 1x denoise ({kind}{width} dims)"
