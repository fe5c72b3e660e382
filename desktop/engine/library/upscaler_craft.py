"""CRAFT upscalers without torch: what a CRAFT file is, judged from its tensor names and shapes.

CRAFT (Li et al. 2023, "Cross-Refinement Adaptive Fusion Transformer") is a shallow conv, residual groups
each closed by a conv, a LayerNorm over channels, an optional conv and a one-step pixel-shuffle
upsampler. A group's unit is three parts: two rectangle-window attention blocks (DAT's two-branch
attention with its position-bias MLP, the second shifted by half a window, plus a depth-wise conv of v)
make the "low-frequency" features, a high-frequency block (max-pool and conv halves) the "high" ones,
and a fusion block lets the high features query the low ones across channels (a transposed attention
with a learned temperature per head) before a gated depth-wise feed-forward network.

The header tells the width (conv_first), the groups and units (the indices under `layers` and
`hf_blocks`), the heads (the temperatures), the window (the position table the file carries: (2a-1)(2b-1)
offsets for a x b pixels), the attention blocks' MLP width, the fusion feed-forward width, the qkv bias,
the closing conv and the scale (the upsampler's channels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.upscaler_transformers import blocks_text, split_from_table

CRAFT_PROBE = "layers.0.residual_group.hf_blocks.0.attn.temperature"
_UNIT = re.compile(r"layers\.(\d+)\.residual_group\.hf_blocks\.(\d+)\.attn\.temperature")


@dataclass(frozen=True)
class CRAFTShape:
    """Everything beyond UpscalerInfo's fields that building a CRAFT needs."""

    depths: tuple[int, ...]  # units per group (each two attention blocks, a high-frequency and a fusion block)
    heads: tuple[int, ...]
    split: tuple[int, int]  # the first branch's window (height, width); the second's is turned a quarter
    hidden: int  # the attention blocks' MLP width
    fusion_hidden: int  # the fusion feed-forward's gated width
    qkv_bias: bool
    body_conv: bool  # conv_after_body ("1conv") or none ("identity")


def looks_like_craft(tensors: Mapping[str, object]) -> bool:
    return CRAFT_PROBE in tensors and "conv_first.weight" in tensors


def inspect_craft(tensors: Mapping[str, object], name: str) -> tuple[CRAFTShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of a CRAFT header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a CRAFT upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    width, in_channels = shape("conv_first.weight")[:2]
    groups: dict[int, set[int]] = {}
    for key in tensors:
        if m := _UNIT.fullmatch(key):
            groups.setdefault(int(m[1]), set()).add(int(m[2]))
    if sorted(groups) != list(range(len(groups))):
        raise ModelError(f"{name}: its CRAFT groups are {sorted(groups)}, with gaps: the file is incomplete.")
    depths, heads = [], []
    for group in range(len(groups)):
        units = sorted(groups[group])
        if units != list(range(len(units))):
            raise ModelError(f"{name}: CRAFT group {group} has units {units}, with gaps: the file is incomplete.")
        depths.append(len(units))
        count = shape(f"layers.{group}.residual_group.hf_blocks.0.attn.temperature")[0]
        # Each attention branch has half the heads over half the width; the fusion block all of them.
        if count % 2 or width % count or (width // 2) % (count // 2):
            raise ModelError(f"{name} has a CRAFT layout Marble cannot run ({count} heads of {width} dims).")
        heads.append(count)
    split = split_from_table(shape("biases_h")[0], shape("relative_position_index_h")[0], name, "CRAFT")
    outputs = shape("upsample.0.weight")[0]
    scale = math.isqrt(outputs // in_channels)
    if scale < 1 or scale * scale * in_channels != outputs:
        raise ModelError(f"{name}'s CRAFT upsampler makes {outputs} channels, which fits no scale of "
                         f"{in_channels} channels.")  # fmt: skip
    block = "layers.0.residual_group.srwa_blocks.0."
    info = CRAFTShape(
        tuple(depths), tuple(heads), split, shape(block + "mlp.fc1.weight")[0],
        shape("layers.0.residual_group.hf_blocks.0.ffn.project_out.weight")[1], block + "qkv.bias" in tensors,
        "conv_after_body.weight" in tensors,
    )  # fmt: skip
    return info, scale, width, in_channels, in_channels


def craft_label(info: CRAFTShape, scale: int, width: int) -> str:
    short, long = sorted(info.split)
    return f"CRAFT {scale}x ({width} dims, {blocks_text(info.depths)} blocks, window {short}x{long})"
