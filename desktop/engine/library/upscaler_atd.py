"""ATD upscalers without torch: what an ATD file is, judged from its tensor names and shapes.

ATD (Zhang et al. 2024, "Transcending the Limit of Local Window: Advanced Super-Resolution Transformer
with Adaptive Token Dictionary"; ATD-light is the small pixelshuffledirect model) is SwinIR's frame -- a
shallow conv, residual groups closed by a conv, a LayerNorm, a conv and one of SwinIR's four
reconstructions -- whose blocks attend three ways at once from one qkv projection: Swin window attention
(odd blocks shifted by half a window), a cross-attention from every pixel to the group's learned token
dictionary (`td`, refined block by block), and attention within categories of pixels that picked the
same dictionary token. A ConvFFN (a depth-wise conv inside the MLP) follows.

The header tells the width (conv_first), groups and blocks (the indices under `layers`), heads (the
window table's columns), the window (its (2w-1)^2 rows), the dictionary's token count (`attn_atd.scale`)
and its reduced query width (`wq`), the ConvFFN's kernel and hidden width, the reconstruction (which
tensors are present, as for SwinIR) and the scale. The category size is not in the file: the published
ATD-light (48 dims, pixelshuffledirect) uses 128 pixels a category and ATD 256, and so does this reader.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.upscaler_transformers import blocks_text, numbered_groups, shuffle_stages

# The group's token dictionary and the dictionary attention's per-token scale: ATD's alone.
_PROBES = ("layers.0.residual_group.td", "layers.0.residual_group.layers.0.attn_atd.scale")
_BLOCK = re.compile(r"layers\.(\d+)\.residual_group\.layers\.(\d+)\.")
_LIGHT_WIDTH = 48  # ATD-light's width: with the one-step upsampler, the file is ATD-light
_LIGHT_CATEGORY, _CATEGORY = 128, 256  # pixels per category (the published test configurations)


@dataclass(frozen=True)
class ATDShape:
    """Everything beyond UpscalerInfo's fields that building an ATD needs."""

    upsampler: str  # "pixelshuffle" | "pixelshuffledirect" | "nearest+conv" | "" (1x restoration)
    depths: tuple[int, ...]  # blocks per group
    heads: tuple[int, ...]  # attention heads per group
    window: int
    tokens: int  # the token dictionary's size
    reduced: int  # the dictionary attention's query and key width
    kernel: int  # the ConvFFN's depth-wise kernel
    hidden: int  # the ConvFFN's hidden width
    category: int  # pixels per category in the category attention
    features: int  # the reconstruction convs' width; 0 where there are none
    stages: tuple[int, ...]  # pixel-shuffle factors (pixelshuffle)
    residual: str  # "1conv" | "3conv": the conv closing each group and the body
    qkv_bias: bool
    patch_norm: bool  # a LayerNorm on the tokens before the groups
    mean: bool  # the mean colour is taken off before and put back after (files saved with `no_norm` do not)

    @property
    def light(self) -> bool:
        return self.category == _LIGHT_CATEGORY


def looks_like_atd(tensors: Mapping[str, object]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_atd(tensors: Mapping[str, object], name: str) -> tuple[ATDShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of an ATD header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an ATD upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    width, in_channels = shape("conv_first.weight")[:2]
    first = "layers.0.residual_group.layers.0."
    rows = shape(first + "attn_win.relative_position_bias_table")[0]
    window = (math.isqrt(rows) + 1) // 2
    if (2 * window - 1) ** 2 != rows:
        raise ModelError(f"{name}'s ATD position table has {rows} rows, which fits no attention window.")
    depths, heads = [], []
    for group, blocks in enumerate(numbered_groups(tensors, _BLOCK, name, "ATD")):
        depths.append(len(blocks))
        table = shape(f"layers.{group}.residual_group.layers.0.attn_win.relative_position_bias_table")
        if table[0] != rows or table[1] < 1 or width % table[1]:
            raise ModelError(f"{name}'s ATD group {group} has a position table {table[0]} x {table[1]}, which "
                             f"does not fit {width} dims in a window of {window}.")  # fmt: skip
        heads.append(table[1])
    if "absolute_pos_embed" in tensors:
        raise ModelError(f"{name} is an ATD with an absolute position embedding (fixed to its training size); "
                         "Marble runs ones without it.")  # fmt: skip
    upsampler, features, stages = _reconstruction(tensors, shape, name)
    if upsampler == "pixelshuffle":
        scale = math.prod(stages)
    elif upsampler == "pixelshuffledirect":
        made = shape("upsample.0.weight")[0]
        scale = math.isqrt(made // in_channels)
        if scale < 1 or scale * scale * in_channels != made:
            raise ModelError(f"{name}'s ATD upsampler makes {made} channels, which fits no scale of "
                             f"{in_channels} channels.")  # fmt: skip
    else:
        scale = 4 if upsampler == "nearest+conv" else 1
    # The one-step tail's conv makes in_channels x scale^2 channels (it was read from them).
    out_channels = in_channels if upsampler == "pixelshuffledirect" else shape("conv_last.weight")[0]
    light = upsampler == "pixelshuffledirect" and width == _LIGHT_WIDTH
    detail = ATDShape(
        upsampler=upsampler, depths=tuple(depths), heads=tuple(heads), window=window,
        tokens=shape(first + "attn_atd.scale")[0], reduced=shape(first + "attn_atd.wq.weight")[0],
        kernel=shape(first + "convffn.dwconv.depthwise_conv.0.weight")[-1],
        hidden=shape(first + "convffn.fc1.weight")[0], category=_LIGHT_CATEGORY if light else _CATEGORY,
        features=features, stages=stages, residual="1conv" if "layers.0.conv.weight" in tensors else "3conv",
        qkv_bias=first + "wqkv.bias" in tensors, patch_norm="patch_embed.norm.weight" in tensors,
        mean="no_norm" not in tensors,
    )  # fmt: skip
    return detail, scale, width, in_channels, out_channels


def _reconstruction(
    tensors: Mapping[str, object], shape: Callable[[str], tuple[int, ...]], name: str
) -> tuple[str, int, tuple[int, ...]]:
    """(upsampler, features, pixel-shuffle stages), told apart by which tail tensors exist (SwinIR's rule)."""
    if "conv_up1.weight" in tensors:  # the real-world tail: always two nearest 2x steps
        return "nearest+conv", shape("conv_before_upsample.0.weight")[0], ()
    if "conv_before_upsample.0.weight" in tensors:
        features = shape("conv_before_upsample.0.weight")[0]
        stages = shuffle_stages(tensors, features, name, "ATD")
        if not stages:
            raise ModelError(f"{name} is an ATD with a classical tail but no upsampling convs: the file is incomplete.")
        return "pixelshuffle", features, stages
    if "conv_last.weight" in tensors:
        return "", 0, ()
    return "pixelshuffledirect", 0, ()


def atd_label(info: ATDShape, scale: int, width: int) -> str:
    name = "ATD-light" if info.light else "ATD"
    return f"{name} {scale}x ({width} dims, {blocks_text(info.depths)} blocks)"
