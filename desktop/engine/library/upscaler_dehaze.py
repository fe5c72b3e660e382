"""MixDehazeNet dehazers without torch: what a MixDehazeNet file is, judged from its tensor names and shapes.

MixDehazeNet (Lu et al. 2023, "Mix Structure Block and Haze-Aware Mixed Attention") is a 1x network: a
five-stage U-Net (`layer1`..`layer5`: full, half, quarter, half and full size) of mix-structure blocks
(dilated depth-wise convs of three reaches, then three kinds of attention), joined by strided convs down
(`patch_merge1/2`), pixel shuffles up (`patch_split1/2`) and selective-kernel fusions with the skips
(`fusion1/2`). It predicts, per pixel, a gain K and an offset B and returns K x + x - B. The header tells
each stage's width (`layerN.blocks.0.conv1`) and block count (the indices under `layerN.blocks`).
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


# The mix-structure block's 19 px dilated conv and the skip-kernel fusion: MixDehazeNet's alone.
PROBE = "layer1.blocks.0.conv3_19.weight"
STAGES = 5
MINIMUM = 40  # the quarter-size stage's mirrored 19 px conv needs 10 px there (spandrel's minimum too)
_FUSION = "fusion1.mlp.0.weight"


@dataclass(frozen=True)
class MixDehazeNetShape:
    """What a MixDehazeNet header says beyond scale and width (the width is `widths[0]`)."""

    widths: tuple[int, int, int, int, int]  # per stage: full, half, quarter, half, full size
    depths: tuple[int, int, int, int, int]  # mix-structure blocks per stage


def looks_like_mixdehazenet(tensors: Mapping[str, _Shaped]) -> bool:
    return PROBE in tensors and _FUSION in tensors


def inspect_mixdehazenet(tensors: Mapping[str, _Shaped], name: str) -> tuple[MixDehazeNetShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of a MixDehazeNet header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a MixDehazeNet but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    def depth(stage: int) -> int:
        pattern = re.compile(rf"layer{stage}\.blocks\.(\d+)\.conv1\.weight")
        found = sorted({int(m[1]) for key in tensors if (m := pattern.fullmatch(key))})
        if not found or found != list(range(len(found))):
            raise ModelError(f"{name}: its MixDehazeNet stage {stage} blocks are numbered {found}, with gaps: the "
                             "file is incomplete.")  # fmt: skip
        return len(found)

    in_channels = shape("patch_embed.proj.weight")[1]
    outputs = shape("patch_unembed.proj.0.weight")[0]
    # The last conv gives a gain and an RGB offset for the image it was given: RGB in, 1 + 3 out.
    if in_channels != 3 or outputs != 4:
        raise ModelError(f"{name} is a MixDehazeNet for {in_channels}-channel images ({outputs} outputs); Marble "
                         "runs colour (RGB) ones only.")  # fmt: skip
    widths = tuple(shape(f"layer{stage}.blocks.0.conv1.weight")[0] for stage in range(1, STAGES + 1))
    if widths[1] != widths[3] or widths[0] != widths[4]:
        raise ModelError(f"{name}'s MixDehazeNet stages are {'-'.join(map(str, widths))} wide; the way up must "
                         "match the way down for the skips.")  # fmt: skip
    depths = tuple(depth(stage) for stage in range(1, STAGES + 1))
    return MixDehazeNetShape(widths, depths), 1, widths[0], 3, 3  # type: ignore[arg-type]


def mixdehazenet_label(info: MixDehazeNetShape) -> str:
    widths = "-".join(map(str, info.widths[:3]))
    return f"MixDehazeNet 1x dehaze ({widths} features, {'-'.join(map(str, info.depths))} blocks)"
