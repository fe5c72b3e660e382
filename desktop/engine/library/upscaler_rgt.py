"""RGT upscalers without torch: what an RGT file is, judged from its tensor names and shapes.

RGT (Chen et al. 2024, "Recursive Generalization Transformer"; RGT-S is the same network with fewer
groups) is DAT's frame: a shallow conv, residual groups of blocks closed by a conv, a LayerNorm, a conv
and a classical pixel-shuffle reconstruction. Its blocks alternate DAT's two-branch window attention
(even blocks, with a depth-wise conv on v added instead of DAT's interaction maps) and the recursive-
generalization attention (odd blocks: the image shrunk by a strided depth-wise conv, applied recursively,
then a cross-attention from every pixel to that summary), each followed by DAT's spatial-gate
feed-forward network and a learned per-channel re-injection of the block's input (`gamma`).

The header tells the width (conv_first), the groups and blocks (the indices under `layers`), the window
(the position table, as for DAT), the heads (each branch's bias MLP ends in one output per head, half the
block's), the summary's width (the RG-SA's 1x1 conv), the feed-forward width and the scale (the
upsampling convs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.upscaler_transformers import blocks_text, numbered_groups, shuffle_stages, split_from_table

# DAT has the position table too; `gamma` (the per-block re-injection) is RGT's alone.
RGT_PROBE = "layers.0.blocks.0.gamma"
_TABLE = "layers.0.blocks.0.attn.attns.0.rpe_biases"
_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.")


@dataclass(frozen=True)
class RGTShape:
    """Everything beyond UpscalerInfo's fields that building an RGT needs."""

    depths: tuple[int, ...]
    heads: tuple[int, ...]
    split: tuple[int, int]  # the window, (H_sp, W_sp) of the first branch
    hidden: int  # the feed-forward's hidden width
    reduced: int  # the RG-SA summary's channels (the published c_ratio x width)
    features: int  # the reconstruction convs' width
    stages: tuple[int, ...]  # pixel-shuffle factors
    residual: str  # "1conv" | "3conv"
    qkv_bias: bool


def looks_like_rgt(tensors: Mapping[str, object]) -> bool:
    return RGT_PROBE in tensors


def inspect_rgt(tensors: Mapping[str, object], name: str) -> tuple[RGTShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of an RGT header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an RGT upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    width, in_channels = shape("conv_first.weight")[:2]
    depths, heads = [], []
    reduced = width // 2  # unused when no group has an odd (RG-SA) block
    for group, blocks in enumerate(numbered_groups(tensors, _BLOCK, name, "RGT")):
        depths.append(len(blocks))
        # Each branch has half the block's heads; an odd count (which the halves round down) is the one
        # that divides the width.
        half = shape(f"layers.{group}.blocks.0.attn.attns.0.pos.pos3.2.weight")[0]
        heads.append(2 * half if width % (2 * half) == 0 else 2 * half + 1)
        if len(blocks) > 1:
            reduced = shape(f"layers.{group}.blocks.1.attn.conv.weight")[0]
    if any(width % h or (width // 2) % max(1, h // 2) or reduced % h for h in heads):
        raise ModelError(f"{name} has an RGT layout Marble cannot run (heads {heads} of {width} dims, "
                         f"{reduced} reduced).")
    split = split_from_table(
        shape(_TABLE)[0], shape("layers.0.blocks.0.attn.attns.0.relative_position_index")[0], name, "RGT"
    )
    features = shape("conv_before_upsample.0.weight")[0]
    stages = shuffle_stages(tensors, features, name, "RGT")
    info = RGTShape(
        tuple(depths), tuple(heads), split, shape("layers.0.blocks.0.mlp.fc1.weight")[0], reduced, features,
        stages, "1conv" if "conv_after_body.weight" in tensors else "3conv",
        "layers.0.blocks.0.attn.qkv.bias" in tensors,
    )  # fmt: skip
    return info, math.prod(stages), width, in_channels, shape("conv_last.weight")[0]


def rgt_label(info: RGTShape, scale: int, width: int) -> str:
    groups = blocks_text(info.depths)
    return f"RGT {scale}x ({width} dims, {groups} blocks)"
