"""1x restoration networks (denoisers) without torch: what a SCUNet, DnCNN or DRUNet file is, judged from
its tensor names and shapes. They load in the upscaler slot like any upscaler, at scale 1: the hires fix
then resizes their output with Lanczos (docs/upscalers.md).

SCUNet (Zhang et al. 2022, "Practical Blind Denoising via Swin-Conv-UNet") is a three-level UNet: a 3x3
head conv, three down stages (swin-conv blocks, then a 2x2 stride-2 conv doubling the width), a body of
blocks at the bottom, three up stages (a 2x2 transposed conv halving the width, then blocks) fed the
matching down stage's input as a skip, and a 3x3 tail conv back to the image's channels. Each block splits
its channels in two halves: a residual conv pair on one, a Swin transformer block (window attention, every
other block shifted by half a window; MLP 4x) on the other, joined by 1x1 convs. The header tells the
width (`m_head.0`), the colour channels (3, or 1 for the grey models), the blocks per stage (the indices
under `m_down1` .. `m_up1`) and the window and heads (each block's relative-position table: heads x
(2w-1) x (2w-1)).

DnCNN (Zhang et al. 2017) is a plain stack of 3x3 convs under `model.N`: conv + ReLU, then conv (+
BatchNorm) + ReLU repeated, then a conv back to the image's channels; it predicts the noise, which is
subtracted from the input. Its layer indices tell the depth and whether it has BatchNorm (the "BR"
layout: a conv every 3 indices) or not ("R": every 2). FDnCNN (the same stack, from FFDNet's paper) takes
one more input channel than it outputs, a noise-level map, and outputs the clean image directly.

DRUNet (Zhang et al. 2021, "Plug-and-Play Image Restoration", DPIR) is a four-level UNet of residual
conv blocks (conv, ReLU, conv, no biases): a head conv, three down stages (blocks, then a 2x2 stride-2
conv, or a 2x2 average pool and a 3x3 conv), a body, three up stages (a 2x2 transposed conv, or a 3x3
conv and a pixel shuffle, or a nearest 2x upsample and a 3x3 conv, then blocks) fed the matching skip,
and a tail conv. Like FDnCNN it takes one more input channel than it outputs: the noise-level map.
The header tells the four widths, the blocks per stage (`m_body`'s count), the down and up kinds (which
indices hold weights, and the up conv's kernel), the channels.
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
# DnCNN's head conv, its first body conv (index 2 in both layouts) and their biases; ESRGAN's original
# names start with model.0 too, but it is told first by its RRDB blocks (library/upscaler.py).
DNCNN_PROBES = ("model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias")
_DNCNN_LAYER = re.compile(r"model\.(\d+)\.weight")
# The noise level FDnCNN's map carries, as a 0..255 sigma: the published test scripts' and spandrel's default.
FDNCNN_NOISE_LEVEL = 15


# DRUNet: bare head and tail convs and residual blocks (`res`) under the UNet's stage names.
DRUNET_PROBES = ("m_head.weight", "m_tail.weight", "m_down1.0.res.0.weight", "m_body.0.res.0.weight")
# The noise level DRUNet's map carries (a 0..255 sigma): spandrel's default and the DPIR denoising demo's.
DRUNET_NOISE_LEVEL = 15
_DRUNET_BLOCK = re.compile(r"(m_\w+?)\.(\d+)\.res\.0\.weight")


@dataclass(frozen=True)
class DRUNetShape:
    """What a DRUNet header says beyond the first width and the channels."""

    widths: tuple[int, int, int, int]  # per level, the image's size first
    blocks: int  # residual blocks per stage (nb: 4 in the published models)
    down: str  # "strideconv" | "avgpool" (a max-pooling file has the same tensors; it is read as avgpool)
    up: str  # "convtranspose" | "pixelshuffle" | "upconv"


@dataclass(frozen=True)
class DnCNNShape:
    """What a DnCNN header says beyond the width and channels."""

    convs: int  # all the 3x3 convs, head and tail included (nb: 17 or 20 in the published models)
    batch_norm: bool  # the "BR" layout: each body conv followed by BatchNorm
    noise_map: bool  # FDnCNN: the input carries a noise-level channel; the output is the image itself


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


def looks_like_dncnn(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in DNCNN_PROBES)


def inspect_dncnn(tensors: Mapping[str, _Shaped], name: str) -> tuple[DnCNNShape, int, int, int]:
    """(shape, width, input channels (the noise map not counted), output channels) of a DnCNN header."""
    layers = sorted(int(m[1]) for key in tensors if (m := _DNCNN_LAYER.fullmatch(key)))
    batch_norm = "model.3.running_mean" in tensors
    step = 3 if batch_norm else 2  # a body layer is conv (+ BatchNorm) + ReLU
    convs = [index for index in layers if len(tensors[f"model.{index}.weight"].shape) == 4]
    expected = [0, *range(2, convs[-1] + 1, step)] if convs else []
    norms = [index for index in layers if index not in convs]
    if len(convs) < 3 or convs != expected or norms != [index + 1 for index in expected[1:-1]] * batch_norm:
        raise ModelError(f"{name} looks like a DnCNN but its layers are {layers}, not a conv every {step} "
                         "indices: the file is incomplete or another network.")
    width, in_channels = tensors["model.0.weight"].shape[:2]
    out_channels = tensors[f"model.{convs[-1]}.weight"].shape[0]
    for index in convs[1:]:
        if tuple(tensors[f"model.{index}.weight"].shape[1:]) != (width, 3, 3):
            raise ModelError(f"{name}: DnCNN's model.{index} is not a 3x3 conv of {width} channels: the file is "
                             "damaged.")
    noise_map = in_channels == out_channels + 1
    if in_channels != out_channels and not noise_map:
        raise ModelError(f"{name} is a DnCNN from {in_channels} channels to {out_channels}: not a denoiser Marble "
                         "knows (DnCNN keeps the channels, FDnCNN adds one noise-level channel).")
    shape = DnCNNShape(len(convs), batch_norm, noise_map)
    return shape, width, in_channels - noise_map, out_channels


def dncnn_label(info: DnCNNShape, width: int, channels: int) -> str:
    kind = f"FDnCNN 1x denoise (noise level {FDNCNN_NOISE_LEVEL}, " if info.noise_map else "DnCNN 1x denoise ("
    grey = "grey, " if channels == 1 else ""
    norm = ", BatchNorm" if info.batch_norm else ""
    return f"{kind}{grey}{width} features, {info.convs} convs{norm})"


def looks_like_drunet(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in DRUNET_PROBES)


def inspect_drunet(tensors: Mapping[str, _Shaped], name: str) -> tuple[DRUNetShape, int, int]:
    """(shape, image channels (the noise map not counted), output channels) of a DRUNet header."""

    def shape(key: str) -> tuple[int, ...]:
        found = tensors.get(key)
        if found is None:
            raise ModelError(f"{name} looks like a DRUNet but lacks {key}: the file is incomplete.")
        return tuple(found.shape)

    blocks: dict[str, list[int]] = {}
    for key in tensors:
        if m := _DRUNET_BLOCK.fullmatch(key):
            blocks.setdefault(m[1], []).append(int(m[2]))
    nb = len(blocks.get("m_body", []))
    # The up stages' blocks follow a transposed conv (index 0), or an upsample and a conv, or a 3x3 conv and
    # a pixel shuffle (indices 0 and 1).
    upconv = "m_up3.1.weight" in tensors
    up_start = 2 if upconv or shape("m_up3.0.weight")[2] == 3 else 1
    starts = {"m_down1": 0, "m_down2": 0, "m_down3": 0, "m_body": 0, "m_up3": up_start, "m_up2": up_start,
              "m_up1": up_start}  # fmt: skip
    for stage, start in starts.items():
        if sorted(blocks.get(stage, [])) != list(range(start, start + nb)):
            raise ModelError(f"{name}: DRUNet's {stage} has blocks {sorted(blocks.get(stage, []))}, not {nb} from "
                             f"{start}: the file is incomplete.")
    widths = (shape("m_head.weight")[0], shape("m_down2.0.res.0.weight")[0], shape("m_down3.0.res.0.weight")[0],
              shape("m_body.0.res.0.weight")[0])  # fmt: skip
    down = "strideconv" if f"m_down1.{nb}.weight" in tensors else "avgpool"
    up = "upconv" if upconv else "pixelshuffle" if up_start == 2 else "convtranspose"
    in_channels, out_channels = shape("m_head.weight")[1], shape("m_tail.weight")[0]
    if in_channels != out_channels + 1:
        raise ModelError(f"{name} is a DRUNet from {in_channels} channels to {out_channels}; Marble runs the "
                         "denoisers, which take one more channel (the noise level) than they output.")
    return DRUNetShape(widths, nb, down, up), in_channels - 1, out_channels


def drunet_label(info: DRUNetShape, channels: int) -> str:
    grey = "grey, " if channels == 1 else ""
    kinds = "".join(f", {kind}" for kind in (info.down, info.up) if kind not in ("strideconv", "convtranspose"))
    return (f"DRUNet 1x denoise (noise level {DRUNET_NOISE_LEVEL}, {grey}{info.widths[0]} features, "
            f"{info.blocks} blocks{kinds})")
