"""Transformer upscalers without torch: a SwinIR, Swin2SR, HAT or DAT file's shape, from its tensor names and shapes.

SwinIR (Liang et al. 2021) is a shallow conv, residual Swin Transformer groups ("RSTB": window
attention blocks, alternately shifted by half a window, closed by a conv), a LayerNorm, a conv, and
one of four reconstructions, told apart by the tensors present:

- classical, `pixelshuffle`: conv_before_upsample, upsample.0/2/.. (conv + PixelShuffle per 2x or 3x
  stage), conv_last;
- lightweight, `pixelshuffledirect`: one conv to out x scale^2 channels, one PixelShuffle (upsample.0);
- real-world, `nearest+conv`: conv_before_upsample, conv_up1.. (nearest 2x + conv each), conv_hr,
  conv_last;
- none (denoising, JPEG artifacts, scale 1): conv_last, added to the input.

Everything else is read from shapes: the width from conv_first, blocks per group from the block
indices, heads from each group's relative_position_bias_table ((2w-1)^2 rows x heads), the window w
from that table's row count, the MLP ratio from fc1, the training patch size (which decides whether
the shifted windows are used at all) from the attn_mask buffer when the file has it. The published
JPEG-artifact models (window 7) work on 0-255 pixel values, the others on 0-1, as the official test
script configures them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from desktop.engine.errors import ModelError

SWINIR_PROBE = "layers.0.residual_group.blocks.0.attn.relative_position_bias_table"
UPSAMPLERS = {
    "pixelshuffle": "classical",
    "pixelshuffledirect": "lightweight",
    "nearest+conv": "real-world",
    "": "restoration",
}
_BLOCK = re.compile(r"layers\.(\d+)\.residual_group\.blocks\.(\d+)\.")
_DEFAULT_TRAIN_SIZE = 64  # what SwinIR's constructor defaults to when the file does not say


@dataclass(frozen=True)
class SwinIRShape:
    """Everything beyond UpscalerInfo's fields that building a SwinIR needs."""

    upsampler: str  # a key of UPSAMPLERS
    depths: tuple[int, ...]  # blocks per residual group
    heads: tuple[int, ...]  # attention heads per residual group
    window: int
    mlp_ratio: float
    features: int  # the reconstruction convs' width (num_feat); 0 where there are none
    stages: tuple[int, ...]  # pixel-shuffle factors (pixelshuffle) or nearest 2x steps (nearest+conv)
    residual: str  # "1conv" | "3conv": the conv closing each group and the body
    image_range: float  # 1.0, or 255.0 for the JPEG-artifact models
    train_size: int  # patch size it was trained on: no shifted windows when it is <= the window

    @property
    def shifted(self) -> bool:
        return self.train_size > self.window


@dataclass(frozen=True)
class HATShape(SwinIRShape):
    """HAT (Chen et al. 2023, "Hybrid Attention Transformer") is SwinIR's layout plus, in every block, a
    convolution branch with channel attention ("CAB", added at 0.01), and after each group's blocks an
    overlapping cross-attention block ("OCAB": queries from a window, keys and values from a larger
    window around it)."""

    conv_hidden: int  # the CAB's inner width (embed dim // compress ratio)
    squeeze_hidden: int  # its channel attention's inner width (embed dim // squeeze factor)
    overlap_window: int  # the OCAB's key/value window
    qkv_bias: bool
    patch_norm: bool


HAT_PROBE = "layers.0.residual_group.blocks.0.conv_block.cab.0.weight"


def numbered_groups(
    tensors: Mapping[str, object], block: re.Pattern, name: str, architecture: str
) -> list[list[int]]:
    """The block numbers of each group, from the tensor names `block` matches (group, block): groups numbered
    0..n-1 and each group's blocks 0..m-1, or ModelError naming the file as incomplete."""
    groups: dict[int, set[int]] = {}
    for key in tensors:
        if m := block.match(key):
            groups.setdefault(int(m[1]), set()).add(int(m[2]))
    if not groups or sorted(groups) != list(range(len(groups))):
        raise ModelError(f"{name}: its {architecture} groups are not numbered 0..{len(groups) - 1} "
                         f"(found {sorted(groups)}): the file is incomplete.")  # fmt: skip
    numbered = [sorted(groups[group]) for group in range(len(groups))]
    for group, blocks in enumerate(numbered):
        if blocks != list(range(len(blocks))):
            raise ModelError(f"{name}: {architecture} group {group} has blocks {blocks}, with gaps: the file is "
                             "incomplete.")  # fmt: skip
    return numbered


def looks_like_hat(tensors: Mapping[str, object]) -> bool:
    return HAT_PROBE in tensors


def inspect_hat(tensors: Mapping[str, object], name: str) -> tuple[HATShape, int, int, int, int]:
    """(shape, scale, embed dim, in channels, out channels) of a HAT header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a HAT upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    if "absolute_pos_embed" in tensors:
        raise ModelError(f"{name} is a HAT with absolute position embeddings (fixed input size); "
                         "Marble runs the published layout only.")
    # The groups, blocks, heads and window are read as for SwinIR (the same names), then the extras.
    base, scale, embed, in_channels, out_channels = inspect_swinir(tensors, name, "HAT")
    if base.upsampler != "pixelshuffle":
        raise ModelError(f"{name} is a HAT without the pixel-shuffle reconstruction HAT has; Marble cannot run it.")
    overlap_rows = shape("layers.0.residual_group.overlap_attn.relative_position_bias_table")[0]
    side = math.isqrt(overlap_rows)
    overlap = side - base.window + 1
    if side * side != overlap_rows or overlap < base.window:
        raise ModelError(f"{name}: a HAT overlap position table of {overlap_rows} rows fits no window.")
    for group, heads in enumerate(base.heads):
        found = shape(f"layers.{group}.residual_group.overlap_attn.relative_position_bias_table")
        if found != (overlap_rows, heads):
            raise ModelError(f"{name}: HAT group {group}'s overlap attention table is {found}, not "
                             f"({overlap_rows}, {heads}).")
    info = HATShape(
        base.upsampler, base.depths, base.heads, base.window, base.mlp_ratio, base.features, base.stages,
        "1conv" if "conv_after_body.weight" in tensors else "identity", 1.0, _DEFAULT_TRAIN_SIZE,
        shape(HAT_PROBE)[0], shape("layers.0.residual_group.blocks.0.conv_block.cab.3.attention.1.weight")[0],
        overlap, "layers.0.residual_group.blocks.0.attn.qkv.bias" in tensors, "patch_embed.norm.weight" in tensors,
    )  # fmt: skip
    return info, scale, embed, in_channels, out_channels


def blocks_text(depths: tuple[int, ...]) -> str:
    """Groups and blocks as labels show them: "6x6" when every group is as deep, else "3+2"."""
    return f"{len(depths)}x{depths[0]}" if len(set(depths)) == 1 else "+".join(map(str, depths))


def counted(number: int, noun: str) -> str:
    """"1 block", "2 blocks": a count as labels show it."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def hat_label(info: HATShape, scale: int, embed: int) -> str:
    groups = blocks_text(info.depths)
    return f"HAT {scale}x ({embed} dims, {groups} blocks, window {info.window}, overlap window {info.overlap_window})"


# Swin2SR (Conde et al. 2022): SwinIR's layout with SwinV2 blocks -- cosine attention scaled per head by
# exp(logit_scale) (clamped at 100), position biases from a small MLP over log-spaced offsets (16 * sigmoid),
# the norms after attention and MLP instead of before, q and v biases without a k bias -- and a 1x1
# "patch embedding" conv after conv_first and after each group's closing conv.
SWIN2SR_PROBE = "layers.0.residual_group.blocks.0.attn.logit_scale"


@dataclass(frozen=True)
class Swin2SRShape(SwinIRShape):
    qkv_bias: bool
    patch_norm: bool


def looks_like_swin2sr(tensors: Mapping[str, object]) -> bool:
    return SWIN2SR_PROBE in tensors


def inspect_swin2sr(tensors: Mapping[str, object], name: str) -> tuple[Swin2SRShape, int, int, int, int]:
    """(shape, scale, embed dim, in channels, out channels) of a Swin2SR header; ModelError otherwise."""
    for key, what in (("conv_bicubic.weight", "auxiliary (compressed-input)"), ("conv_after_body_hf.weight",
                      "high-frequency")):  # fmt: skip
        if key in tensors:
            raise ModelError(f"{name} is a Swin2SR with the {what} reconstruction; Marble runs the classical, "
                             "lightweight, real-world and restoration ones.")
    proj = tensors.get("patch_embed.proj.weight")
    if proj is None or tuple(proj.shape)[2:] != (1, 1):  # type: ignore[attr-defined]
        raise ModelError(f"{name} is a Swin2SR without 1x1 patches (patch_embed.proj.weight); Marble cannot run it.")
    base, scale, embed, in_channels, out_channels = inspect_swinir(tensors, name, "Swin2SR")
    info = Swin2SRShape(
        *(getattr(base, field) for field in SwinIRShape.__dataclass_fields__),
        "layers.0.residual_group.blocks.0.attn.q_bias" in tensors, "patch_embed.norm.weight" in tensors,
    )  # fmt: skip
    return info, scale, embed, in_channels, out_channels


def swin2sr_label(info: Swin2SRShape, scale: int, embed: int) -> str:
    return "Swin2SR" + swinir_label(info, scale, embed).removeprefix("SwinIR")


def looks_like_swinir(tensors: Mapping[str, object]) -> bool:
    return SWINIR_PROBE in tensors


def inspect_swinir(
    tensors: Mapping[str, object], name: str, architecture: str = "SwinIR"
) -> tuple[SwinIRShape, int, int, int, int]:
    """(shape, scale, embed dim, in channels, out channels) of a SwinIR header; ModelError naming `name`
    and what does not fit otherwise. `architecture` names what messages call it (HAT shares the layout)."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a {architecture} upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    if "conv_first.1.weight" in tensors:
        raise ModelError(f"{name} is a {architecture} variant that pixel-unshuffles its input; Marble does not run it.")
    if "absolute_pos_embed" in tensors:
        raise ModelError(f"{name} is a {architecture} with absolute position embeddings (fixed input size); "
                         "Marble runs the published layout only.")
    embed, in_channels = shape("conv_first.weight")[:2]

    depths, heads, windows = [], [], set()
    for group, blocks in enumerate(numbered_groups(tensors, _BLOCK, name, architecture)):
        depths.append(len(blocks))
        for block in blocks:
            attn = f"layers.{group}.residual_group.blocks.{block}.attn"
            if architecture == "Swin2SR":
                # No bias table: heads from the per-head logit scale, the window from the (w^2, w^2) index.
                count, rows = shape(f"{attn}.logit_scale")[0], shape(f"{attn}.relative_position_index")[0]
                side = math.isqrt(rows)
                rows = (2 * side - 1) ** 2  # the table the bias MLP makes, checked as SwinIR's below
            else:
                rows, count = shape(f"{attn}.relative_position_bias_table")
            side = math.isqrt(rows)
            if side * side != rows or side % 2 == 0:
                raise ModelError(f"{name}: a {architecture} position-bias table of {rows} rows fits no square window.")
            windows.add((side + 1) // 2)
            if block == 0:
                heads.append(count)
            elif count != heads[-1]:
                raise ModelError(f"{name}: {architecture} group {group} mixes {heads[-1]} and {count} attention heads.")
    if len(windows) != 1 or any(embed % h for h in heads):
        raise ModelError(f"{name} has a {architecture} layout Marble cannot run (windows {sorted(windows)}, "
                         f"heads {heads} of {embed} dims).")
    window = windows.pop()
    mlp_ratio = shape("layers.0.residual_group.blocks.0.mlp.fc1.weight")[0] / embed
    residual = "1conv" if "conv_after_body.weight" in tensors else "3conv"
    mask = tensors.get("layers.0.residual_group.blocks.1.attn_mask")
    train_size = math.isqrt(mask.shape[0]) * window if mask is not None else _DEFAULT_TRAIN_SIZE  # type: ignore[attr-defined]

    features, stages = 0, ()
    if "conv_before_upsample.0.weight" in tensors and "conv_up1.weight" in tensors:
        upsampler = "nearest+conv"
        features = shape("conv_before_upsample.0.weight")[0]
        steps = 0
        while f"conv_up{steps + 1}.weight" in tensors:
            steps += 1
        stages, scale = (2,) * steps, 2**steps
        out_channels = shape("conv_last.weight")[0]
    elif "conv_before_upsample.0.weight" in tensors:
        upsampler = "pixelshuffle"
        features = shape("conv_before_upsample.0.weight")[0]
        found = []
        index = 0
        while f"upsample.{index}.weight" in tensors:
            produced = shape(f"upsample.{index}.weight")[0]
            factor = math.isqrt(produced // features)
            if factor * factor * features != produced or factor not in (2, 3):
                raise ModelError(f"{name}: a {architecture} upsampling conv makes {produced} channels from {features}, "
                                 "which fits no 2x or 3x pixel shuffle.")
            found.append(factor)
            index += 2
        stages, scale = tuple(found), math.prod(found)
        out_channels = shape("conv_last.weight")[0]
    elif "upsample.0.weight" in tensors:
        upsampler = "pixelshuffledirect"
        produced = shape("upsample.0.weight")[0]
        out_channels = in_channels  # the lightweight models' single conv makes in_chans x scale^2
        scale = math.isqrt(produced // out_channels)
        if scale * scale * out_channels != produced:
            raise ModelError(f"{name}: its {architecture} upsampling conv ({produced} channels) fits no scale.")
        stages = (scale,)
    else:
        upsampler, scale = "", 1
        out_channels = shape("conv_last.weight")[0]
    if upsampler and (not stages or min(stages) < 1):
        raise ModelError(f"{name}: its {architecture} {UPSAMPLERS[upsampler]} reconstruction has no upsampling layers.")
    info = SwinIRShape(
        upsampler, tuple(depths), tuple(heads), window, mlp_ratio, features, stages, residual,
        255.0 if window == 7 else 1.0, train_size,
    )  # fmt: skip
    return info, scale, embed, in_channels, out_channels


def swinir_label(info: SwinIRShape, scale: int, embed: int) -> str:
    groups = blocks_text(info.depths)
    return f"SwinIR {scale}x ({UPSAMPLERS[info.upsampler]}, {embed} dims, {groups} blocks, window {info.window})"


# DAT (Chen et al. 2023, "Dual Aggregation Transformer"): residual groups whose blocks alternate a
# spatial window attention (even blocks: two half-width branches over H_sp x W_sp and W_sp x H_sp
# rectangles, with a learned position-bias MLP, a depth-wise conv branch and the two "interaction" maps
# between them) and a channel attention (odd blocks, with the same conv branch), each followed by the
# spatial-gate feed-forward network.
DAT_PROBE = "layers.0.blocks.0.attn.attns.0.rpe_biases"
_DAT_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.")


@dataclass(frozen=True)
class DATShape:
    """Everything beyond UpscalerInfo's fields that building a DAT needs."""

    upsampler: str  # "pixelshuffle" | "pixelshuffledirect"
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    split: tuple[int, int]  # the spatial window, (H_sp, W_sp) of the first branch
    expansion: float  # the feed-forward's hidden width over the embed dim
    features: int  # the reconstruction convs' width; 0 for pixelshuffledirect
    stages: tuple[int, ...]  # pixel-shuffle factors
    residual: str  # "1conv" | "3conv"
    qkv_bias: bool


def looks_like_dat(tensors: Mapping[str, object]) -> bool:
    return DAT_PROBE in tensors


def inspect_dat(tensors: Mapping[str, object], name: str) -> tuple[DATShape, int, int, int, int]:
    """(shape, scale, embed dim, in channels, out channels) of a DAT header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a DAT upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    embed, in_channels = shape("conv_first.weight")[:2]
    depths, heads = [], []
    for group, blocks in enumerate(numbered_groups(tensors, _DAT_BLOCK, name, "DAT")):
        depths.append(len(blocks))
        prefix = f"layers.{group}.blocks"
        if len(blocks) > 1:
            heads.append(shape(f"{prefix}.1.attn.temperature")[0])
        else:
            # Each spatial branch has half the heads; its position-bias MLP ends in one output per head.
            heads.append(2 * shape(f"{prefix}.0.attn.attns.0.pos.pos3.2.weight")[0])
    if any(embed % h or (embed // 2) % max(1, h // 2) for h in heads):
        raise ModelError(f"{name} has a DAT layout Marble cannot run (heads {heads} of {embed} dims).")
    split = split_from_table(
        shape(DAT_PROBE)[0], shape("layers.0.blocks.0.attn.attns.0.relative_position_index")[0], name, "DAT"
    )
    expansion = shape("layers.0.blocks.0.ffn.fc1.weight")[0] / embed
    residual = "1conv" if "conv_after_body.weight" in tensors else "3conv"
    if "conv_last.weight" in tensors:
        upsampler = "pixelshuffle"
        features = shape("conv_before_upsample.0.weight")[0]
        stages, out_channels = shuffle_stages(tensors, features, name, "DAT"), shape("conv_last.weight")[0]
    else:
        upsampler, features = "pixelshuffledirect", 0
        produced, out_channels = shape("upsample.0.weight")[0], in_channels
        factor = math.isqrt(produced // out_channels)
        if factor < 1 or factor * factor * out_channels != produced:
            raise ModelError(f"{name}: its DAT upsampling conv ({produced} channels) fits no scale.")
        stages = (factor,)
    if not stages:
        raise ModelError(f"{name}: its DAT reconstruction has no upsampling layers: the file is incomplete.")
    info = DATShape(
        upsampler, tuple(depths), tuple(heads), split, expansion, features, stages, residual,
        "layers.0.blocks.0.attn.qkv.bias" in tensors,
    )  # fmt: skip
    return info, math.prod(stages), embed, in_channels, out_channels


def shuffle_stages(tensors: Mapping[str, object], features: int, name: str, architecture: str) -> tuple[int, ...]:
    """The pixel-shuffle factors of a classical reconstruction (DAT's, RGT's): a conv at upsample.0, 2, ...
    making features x f^2 channels for each 2x or 3x stage."""
    found, index = [], 0
    while (conv := tensors.get(f"upsample.{index}.weight")) is not None:
        produced = conv.shape[0]  # type: ignore[attr-defined]
        factor = math.isqrt(produced // features)
        if factor * factor * features != produced or factor not in (2, 3):
            raise ModelError(f"{name}: a {architecture} upsampling conv makes {produced} channels from {features}, "
                             "which fits no 2x or 3x pixel shuffle.")
        found.append(factor)
        index += 2
    return tuple(found)


def split_from_table(rows: int, tokens: int, name: str, architecture: str) -> tuple[int, int]:
    """The window (a, b) from its token count a*b and its bias-table rows (2a-1)(2b-1): a + b follows,
    then a and b. Which of the two is the height the table's values say (the backend reads them); the
    published models have the shorter side first."""
    total = (4 * tokens + 1 - rows) // 2
    root = math.isqrt(max(0, total * total - 4 * tokens))
    a, b = (total - root) // 2, (total + root) // 2
    if a < 1 or a * b != tokens or (2 * a - 1) * (2 * b - 1) != rows:
        raise ModelError(f"{name}: a {architecture} position table of {rows} rows fits no window of {tokens} pixels.")
    return a, b


def dat_label(info: DATShape, scale: int, embed: int) -> str:
    groups = blocks_text(info.depths)
    kind = "classical" if info.upsampler == "pixelshuffle" else "lightweight"
    short, long = sorted(info.split)  # the sides; which one is the height only the table's values say
    return (f"DAT {scale}x ({kind}, {embed} dims, {groups} blocks, window {short}x{long}, "
            f"expansion {info.expansion:g})")
