"""RetinexFormer low-light enhancers without torch: what a RetinexFormer file is, judged from its tensor names
and shapes.

RetinexFormer (Cai et al. 2023, "One-stage Retinex-based Transformer for Low-light Image Enhancement") is a
1x network: one or more stages (`body.S`), each an illumination estimator (`estimator`: the image and its
channel mean through a 1x1 conv, a grouped 5x5 conv giving the illumination features, a 1x1 conv giving a
light-up map) and a two-level U-shaped transformer (`denoiser`) whose attention runs across channels and is
guided by those illumination features. The header tells the stage count, the width (`embedding`), the
colour channels and the attention block counts: the first level's, the second level's (the decoder mirrors
them) and the bottleneck's.
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


# The illumination-guided attention's per-head temperature under the first stage's first level: no other
# architecture Marble reads has an `estimator` beside a `denoiser`.
PROBE = "body.0.denoiser.encoder_layers.0.0.blocks.0.0.rescale"
LEVELS = 2  # the published U-Net depth (spandrel builds no other): the input is downsampled twice
_STAGE = re.compile(r"body\.(\d+)\.estimator\.conv1\.weight")
_LEVEL = re.compile(r"body\.0\.denoiser\.encoder_layers\.(\d+)\.1\.weight")


@dataclass(frozen=True)
class RetinexFormerShape:
    """What a RetinexFormer header says beyond scale and width."""

    stages: int
    blocks: tuple[int, int, int]  # attention blocks: first level, second level, bottleneck

    @property
    def padding_unit(self) -> int:
        """The side the input is padded to a multiple of. Two stride-2 downsamplings need 4; spandrel's size
        requirement asks 8, and Marble pads as it does so that off-size inputs give the same result."""
        return 8


def looks_like_retinexformer(tensors: Mapping[str, _Shaped]) -> bool:
    return PROBE in tensors and "body.0.estimator.conv1.weight" in tensors


def inspect_retinexformer(tensors: Mapping[str, _Shaped], name: str) -> tuple[RetinexFormerShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of a RetinexFormer header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a RetinexFormer but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    def count(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.0\.rescale")
        found = sorted({int(m[1]) for key in tensors if (m := pattern.fullmatch(key))})
        if not found or found != list(range(len(found))):
            raise ModelError(f"{name}: its RetinexFormer blocks under {prefix} are numbered {found}, with gaps: "
                             "the file is incomplete.")  # fmt: skip
        return len(found)

    stages = sorted({int(m[1]) for key in tensors if (m := _STAGE.fullmatch(key))})
    if stages != list(range(len(stages))):
        raise ModelError(f"{name}: its RetinexFormer stages are numbered {stages}, with gaps: the file is incomplete.")
    levels = sorted({int(m[1]) for key in tensors if (m := _LEVEL.fullmatch(key))})
    if levels != list(range(LEVELS)):
        raise ModelError(f"{name} is a RetinexFormer with {len(levels)} downsampling levels; Marble runs the "
                         f"published {LEVELS}-level ones.")  # fmt: skip
    width, in_channels = shape("body.0.denoiser.embedding.weight")[:2]
    out_channels = shape("body.0.denoiser.mapping.weight")[0]
    # The estimator sees the image and its mean (4 channels) in 4 groups and makes a 3-channel light-up map.
    if in_channels != 3 or out_channels != 3 or shape("body.0.estimator.conv1.weight")[:2] != (width, 4):
        raise ModelError(f"{name} is a RetinexFormer for {in_channels}-channel images; Marble runs colour (RGB) "
                         "ones only.")  # fmt: skip
    if width % 4:
        raise ModelError(f"{name} is a RetinexFormer {width} features wide; its estimator's four groups need a "
                         "multiple of 4.")  # fmt: skip
    prefix = "body.0.denoiser."
    blocks = (count(f"{prefix}encoder_layers.0.0.blocks"), count(f"{prefix}encoder_layers.1.0.blocks"),
              count(f"{prefix}bottleneck.blocks"))  # fmt: skip
    return RetinexFormerShape(len(stages), blocks), 1, width, in_channels, out_channels


def retinexformer_label(info: RetinexFormerShape, width: int) -> str:
    stages = "" if info.stages == 1 else f", {info.stages} stages"
    return f"RetinexFormer 1x low-light ({width} features, {'-'.join(map(str, info.blocks))} blocks{stages})"
