"""DCTLSA upscalers without torch: what a DCTLSA file is, judged from its tensor names and shapes.

DCTLSA (Zeng et al. 2023, "Densely Connected Transformer with Linear Self-Attention", a lightweight network)
is a first conv (`fea_conv`), six modules `B1`..`B6` densely connected (each module's input is a 1x1 conv
`c1`..`c5` over everything before it), a 1x1 conv `c` over the six modules' outputs, a 3x3 conv
(`LR_conv`) added to the first conv's features, and one conv plus pixel shuffle (`upsampler.0`). Each
module is two Swin-style layers of two blocks in 16 px windows whose attention is linear (keys softmaxed
over the window, then k^T v before q) after a local conv module with batch norms.

The header tells the width (fea_conv), the colour channels and the scale (the upsampling conv makes
channels x scale^2). The head count is in no tensor: every published model has 5 (spandrel assumes the
same), so the width must divide by 5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from desktop.engine.errors import ModelError

HEADS = 5  # the published head count, stored nowhere in the file
MODULES = 6  # B1..B6: fixed by the network (its dense connections are written out per module)
_PROBE = "B1.body.0.transformer_body.0.blocks.0.attn.local.pointwise_prenorm_1.weight"


@dataclass(frozen=True)
class DCTLSAShape:
    """Everything beyond UpscalerInfo's fields that building a DCTLSA needs."""

    heads: int
    hidden: int  # the blocks' MLP width (2x the width in the published models)


def looks_like_dctlsa(tensors: Mapping[str, object]) -> bool:
    # The local module's second batch norm inside a `B1` module is DCTLSA's alone; fea_conv too.
    return _PROBE in tensors and "fea_conv.weight" in tensors


def inspect_dctlsa(tensors: Mapping[str, object], name: str) -> tuple[DCTLSAShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of a DCTLSA header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a DCTLSA upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    width, in_channels = shape("fea_conv.weight")[:2]
    merged = shape("c.0.weight")[1]
    if merged != width * MODULES:
        raise ModelError(f"{name}'s DCTLSA merges {merged} channels; its six modules of {width} make "
                         f"{width * MODULES}: the file is damaged.")  # fmt: skip
    if width % HEADS:
        raise ModelError(f"{name} is a DCTLSA {width} wide; Marble runs the published 5-head layout, whose width "
                         "divides by 5.")  # fmt: skip
    made = shape("upsampler.0.weight")[0]
    out_channels = in_channels
    scale = math.isqrt(made // out_channels)
    if scale * scale * out_channels != made:
        raise ModelError(f"{name}'s DCTLSA upsampling conv makes {made} channels, which fits no scale of "
                         f"{out_channels} channels.")  # fmt: skip
    hidden = shape("B1.body.0.transformer_body.0.blocks.0.mlp.fc1.weight")[0]
    return DCTLSAShape(HEADS, hidden), scale, width, in_channels, out_channels


def dctlsa_label(info: DCTLSAShape, scale: int, width: int) -> str:
    what = " restoration" if scale == 1 else ""
    return f"DCTLSA {scale}x{what} ({width} features)"
