"""FBCNN JPEG artefact removal models without torch: what an FBCNN file is, judged from its tensor names and shapes.

FBCNN (Jiang et al. 2021, "Towards Flexible Blind JPEG Artifacts Removal") is a three-level U-Net of plain
residual blocks (conv, ReLU, conv). A 3x3 conv (`m_head`) makes the top width; each level down
(`m_down1..3`) runs `nb` blocks then halves the size into the next width, by a 2x2 stride-2 conv, or by a
2x2 pooling and a 3x3 conv; the bottom runs `nb` blocks twice (`m_body_encoder`, `m_body_decoder`); each
level up (`m_up3..1`) doubles the size, by a 2x2 transposed conv, a nearest upsampling and a 3x3 conv
(`upconv`) or a 3x3 conv and a pixel shuffle, then runs `nb` blocks whose residual is scaled and shifted
per channel by the JPEG quality factor; the matching level's features are added; `m_tail` makes colour.

The quality factor: a branch (`qf_pred`: `nb` blocks at the bottom, global mean, three linear layers, a
sigmoid) predicts it from the image itself, 0..1 for JPEG quality 0..100, and an MLP (`qf_embed`, then
`to_gamma_N` / `to_beta_N`) turns it into the scales and shifts. FBCNN also accepts a quality given by
hand; Marble, like spandrel's default, always uses the predicted one (blind restoration: the image is
not asked about its history).

The header tells the widths, `nb`, the up- and downsampling kinds and the quality MLP's width. Pooling
is average or max, which a header cannot tell (neither has weights): read as average, as spandrel does.
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


# The quality predictor's first block: FBCNN's alone.
_PROBES = ("qf_pred.0.res.0.weight", "m_head.weight")
_BODY = re.compile(r"m_body_encoder\.(\d+)\.res\.0\.weight")
LEVELS = 3  # m_down1..3 / m_up3..1 in every FBCNN


@dataclass(frozen=True)
class FBCNNShape:
    """What an FBCNN header says beyond its top width."""

    widths: tuple[int, int, int, int]  # the top, two middle and bottom levels' widths
    blocks: int  # residual blocks per level (nb)
    strided: bool  # downsampling by a 2x2 stride-2 conv; otherwise 2x2 average pooling and a 3x3 conv
    upsample: str  # "convtranspose" | "upconv" | "pixelshuffle"
    embedding: int  # the quality MLP's width (512 in every published model)

    @property
    def padding_unit(self) -> int:
        return 2**LEVELS


def looks_like_fbcnn(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_fbcnn(tensors: Mapping[str, _Shaped], name: str) -> tuple[FBCNNShape, int, int, int, int]:
    """(shape, scale 1, top width, in channels, out channels) of an FBCNN header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an FBCNN JPEG restoration model but lacks {key}: the file is "
                             "incomplete.")  # fmt: skip
        return tuple(info.shape)

    found = sorted({int(m[1]) for key in tensors if (m := _BODY.fullmatch(key))})
    if not found or found != list(range(len(found))):
        raise ModelError(f"{name}: its FBCNN bottom blocks are numbered {found}, with gaps: the file is incomplete.")
    blocks = len(found)
    top, in_channels = shape("m_head.weight")[:2]
    widths = (top, shape("m_down2.0.res.0.weight")[0], shape("m_down3.0.res.0.weight")[0],
              shape("m_body_encoder.0.res.0.weight")[0])  # fmt: skip
    out_channels = shape("m_tail.weight")[0]
    # Downsampling: a stride-2 conv sits right after the level's blocks; pooling has no weights, so its
    # conv comes one index later.
    strided = f"m_down1.{blocks}.weight" in tensors
    down = f"m_down1.{blocks}.weight" if strided else f"m_down1.{blocks + 1}.weight"
    if down not in tensors:
        raise ModelError(f"{name} looks like an FBCNN JPEG restoration model but lacks its first downsampling "
                         f"conv (m_down1.{blocks} or, after pooling, m_down1.{blocks + 1}): the file is "
                         "incomplete.")  # fmt: skip
    if shape(down)[:2] != (widths[1], top):
        raise ModelError(f"{name}'s FBCNN downsampling conv {down} is {shape(down)}, not {top} -> {widths[1]} "
                         "features.")  # fmt: skip
    if "m_up3.0.weight" in tensors:
        upsample = "convtranspose"
    elif "m_up3.0.1.weight" in tensors:
        upsample = "upconv"
    elif "m_up3.0.0.weight" in tensors:
        upsample = "pixelshuffle"
    else:
        raise ModelError(f"{name} looks like an FBCNN JPEG restoration model but its upsampling (m_up3.0) has no "
                         "weights Marble knows: the file is incomplete.")  # fmt: skip
    embedding = shape("qf_embed.0.weight")[0]
    predictor = shape(f"qf_pred.{blocks + 2}.weight")  # after the blocks, the pooling and the flattening
    if predictor[1] != widths[3]:
        raise ModelError(f"{name}'s FBCNN quality predictor reads {predictor[1]} features, but the bottom level "
                         f"has {widths[3]}.")  # fmt: skip
    return FBCNNShape(widths, blocks, strided, upsample, embedding), 1, top, in_channels, out_channels


def fbcnn_label(info: FBCNNShape, width: int) -> str:
    blocks = "1 block" if info.blocks == 1 else f"{info.blocks} blocks"
    return f"FBCNN 1x JPEG artefact removal ({width} features, {blocks} per level)"
