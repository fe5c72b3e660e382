"""DRCT upscalers without torch: what a DRCT file is, judged from its tensor names and shapes.

DRCT (Dense-residual-connected Transformer, CVPRW 2024) is SwinIR's frame (input conv, token norm, groups,
a closing conv, a pixel-shuffle tail) whose groups are dense: each holds five Swin blocks, block k seeing
the group's input joined with the k-1 earlier blocks' outputs (each squeezed by a 1x1 `adjust` conv to
the growth width gc), so block k is dim + (k-1) * gc wide. The header tells the width (`conv_first`),
the groups (`layers.N`), gc (`adjust1`), each block's heads (its relative-position table's columns) and
hidden width (`mlp.fc1`), the window ((2w-1)^2 table rows), whether the odd blocks shift their windows
(the shift's `attn_mask` buffer is saved only then) and the scale (the upsampler's convs).
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


BLOCKS = 5  # Swin blocks per dense group, fixed by the architecture
_PROBES = ("conv_first.weight", "layers.0.swin1.attn.relative_position_bias_table", "layers.0.adjust1.weight",
           "layers.0.swin5.norm1.weight", "layers.0.adjust5.weight")  # fmt: skip
_GROUP = re.compile(r"layers\.(\d+)\.adjust5\.weight")
_UPSAMPLE = re.compile(r"upsample\.(\d+)\.weight")


@dataclass(frozen=True)
class DRCTShape:
    """What a DRCT header says beyond scale and width."""

    groups: int  # dense groups (RDG)
    growth: int  # gc: the width each block adds to the next blocks' input
    heads: tuple[tuple[int, ...], ...]  # per group, each of its five blocks' head count
    hidden: tuple[int, ...]  # each of the five blocks' MLP hidden width (the same in every group)
    window: int
    shifted: bool  # blocks 2 and 4 attend in windows shifted by half a window
    qkv_bias: bool
    patch_norm: bool  # a LayerNorm on the tokens before the groups
    residual: str  # "1conv" | "identity": the conv closing the body
    features: int  # the tail's width (conv_before_upsample)
    stages: tuple[int, ...]  # the tail's pixel-shuffle factors (2, 2 for 4x; 3 for 3x)


def looks_like_drct(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_drct(tensors: Mapping[str, _Shaped], name: str) -> tuple[DRCTShape, int, int, int, int]:
    """(shape, scale, width, input channels, output channels) of a DRCT header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        found = tensors.get(key)
        if found is None:
            raise ModelError(f"{name} looks like a DRCT upscaler but lacks {key}: the file is incomplete.")
        return tuple(found.shape)

    width, in_channels = shape("conv_first.weight")[:2]
    groups = sorted(int(m[1]) for key in tensors if (m := _GROUP.fullmatch(key)))
    if groups != list(range(len(groups))):
        raise ModelError(f"{name} is a DRCT with groups {groups} under layers (the file is damaged).")
    growth = shape("layers.0.adjust1.weight")[0]
    rows = shape("layers.0.swin1.attn.relative_position_bias_table")[0]
    window = round((rows**0.5 + 1) / 2)
    if (2 * window - 1) ** 2 != rows:
        raise ModelError(f"{name}'s position table has {rows} rows, which fits no attention window.")
    hidden = tuple(shape(f"layers.0.swin{k}.mlp.fc1.weight")[0] for k in range(1, BLOCKS + 1))
    heads = []
    for group in groups:
        counts = []
        for k in range(1, BLOCKS + 1):
            table = shape(f"layers.{group}.swin{k}.attn.relative_position_bias_table")
            block_width = width + (k - 1) * growth
            if table[0] != rows or table[1] < 1 or block_width % table[1]:
                raise ModelError(f"{name}'s block {k} of group {group} has a position table {table[0]} x {table[1]}, "
                                 f"which does not fit {block_width} features in a window of {window}.")  # fmt: skip
            counts.append(table[1])
        heads.append(tuple(counts))
    if "absolute_pos_embed" in tensors:
        raise ModelError(f"{name} is a DRCT with an absolute position embedding (fixed to its training size); "
                         "Marble runs ones without it.")  # fmt: skip
    if "conv_last.weight" not in tensors:
        # Without the pixel-shuffle tail the published network returns its input unchanged.
        raise ModelError(f"{name} is a DRCT without an upsampling tail (conv_last); Marble runs upscaling ones only.")
    features = shape("conv_before_upsample.0.weight")[0]
    stages = []
    for index in sorted(int(m[1]) for key in tensors if (m := _UPSAMPLE.fullmatch(key))):
        outputs = shape(f"upsample.{index}.weight")[0]
        factor = round((outputs / features) ** 0.5)
        if factor not in (2, 3) or factor * factor * features != outputs:
            raise ModelError(
                f"{name}'s upsampler makes {outputs} channels from {features}, which fits no 2x or 3x step."
            )
        stages.append(factor)
    scale = 1
    for factor in stages:
        scale *= factor
    out_channels = shape("conv_last.weight")[0]
    detail = DRCTShape(
        groups=len(groups), growth=growth, heads=tuple(heads), hidden=hidden, window=window,
        shifted="layers.0.swin2.attn_mask" in tensors, qkv_bias="layers.0.swin1.attn.qkv.bias" in tensors,
        patch_norm="patch_embed.norm.weight" in tensors,
        residual="1conv" if "conv_after_body.weight" in tensors else "identity", features=features,
        stages=tuple(stages),
    )  # fmt: skip
    return detail, scale, width, in_channels, out_channels


def drct_label(shape: DRCTShape, scale: int, width: int) -> str:
    return f"DRCT {scale}x ({width} dims, {shape.groups} groups, window {shape.window})"
