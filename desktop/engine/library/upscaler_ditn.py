"""DITN upscalers without torch: what a DITN file is, judged from its tensor names and shapes.

DITN (Liu et al. 2023, "Unfolding Once is Enough: A Deployment-Friendly Transformer Unit for
Super-Resolution"; the "Real" variant spandrel loads) is a shallow conv (`sft`), one or more UFONE units,
a conv closing the body (`conv_after_body`, added to the shallow features) and a one-step pixel-shuffle
upsampler (`upsample.0`). A UFONE unfolds the image into 8x8 patches, runs inner-patch transformer
layers on each (`ITLs`: a channel attention with one learned temperature, then a gated depth-wise conv
feed-forward) and folds them back for spatial-aware layers over the whole image (`SALs`: a large-kernel
depth-wise conv gate, then the same feed-forward).

The header tells the width and colour channels (`sft`), the UFONE count and each one's ITL and SAL
counts, the feed-forward's hidden width (`project_in` makes twice it), whether the 1x1 projections carry
biases and the scale (the upsampler's outputs, 3 x scale^2). The 8 px patch is fixed: no tensor holds it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


DITN_PROBE = "UFONE.0.ITLs.0.attn.temperature"
PATCH = 8  # the UFONE's patch side in every DITN (and so the input's padding unit)
_LAYER = re.compile(r"UFONE\.(\d+)\.(ITLs|SALs)\.(\d+)\.conv1\.weight")


@dataclass(frozen=True)
class DITNShape:
    """What a DITN header says beyond scale and width."""

    units: int  # UFONE units
    itl: int  # inner-patch transformer layers per unit
    sal: int  # spatial-aware layers per unit (0 allowed)
    hidden: int  # the feed-forward's hidden width (its project_in makes twice this)
    bias: bool  # biases on the attention's output projection and the feed-forward's convs


def looks_like_ditn(tensors: Mapping[str, _Shaped]) -> bool:
    return DITN_PROBE in tensors and "sft.weight" in tensors


def inspect_ditn(tensors: Mapping[str, _Shaped], name: str) -> tuple[DITNShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of a DITN header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a DITN upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    width, in_channels = shape("sft.weight")[:2]
    layers: dict[tuple[int, str], set[int]] = {}
    for key in tensors:
        if m := _LAYER.fullmatch(key):
            layers.setdefault((int(m[1]), m[2]), set()).add(int(m[3]))
    units = 1 + max(unit for unit, _ in layers) if layers else 0
    counts = {kind: len(layers.get((0, kind), ())) for kind in ("ITLs", "SALs")}
    for unit in range(units):
        for kind, count in counts.items():
            if layers.get((unit, kind), set()) != set(range(count)):
                found = {f"{u}.{k}": sorted(v) for (u, k), v in sorted(layers.items())}
                raise ModelError(f"{name}: its DITN units hold layers {found}, not the same whole count in each: "
                                 "the file is incomplete.")  # fmt: skip
    if not counts["ITLs"]:
        raise ModelError(f"{name} looks like a DITN upscaler but has no UFONE.0.ITLs layers: the file is incomplete.")
    outputs = shape("upsample.0.weight")[0]
    scale = math.isqrt(outputs // 3)
    if 3 * scale * scale != outputs:
        raise ModelError(f"{name}'s upsampling conv makes {outputs} channels, which fits no scale of RGB.")
    project_in = shape("UFONE.0.ITLs.0.ffn.project_in.weight")[0]
    if project_in % 2:
        raise ModelError(f"{name}'s feed-forward makes {project_in} channels; DITN's gate needs an even count.")
    info = DITNShape(units, counts["ITLs"], counts["SALs"], project_in // 2,
                     "UFONE.0.ITLs.0.attn.project_out.bias" in tensors)  # fmt: skip
    return info, scale, width, in_channels, 3


def ditn_label(info: DITNShape, scale: int, width: int) -> str:
    return f"DITN {scale}x ({info.units}x({info.itl}+{info.sal}) blocks, {width} features)"
