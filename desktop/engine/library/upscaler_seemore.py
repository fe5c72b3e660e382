"""SeemoRe upscalers without torch: what a SeemoRe file is, judged from its tensor names and shapes.

SeemoRe ("See More Details: Efficient Image Super-Resolution by Experts Mining", ICML 2024; SeemoRe-T,
-B and -L) is an input conv, N residual groups and a LayerNorm, conv and pixel-shuffle tail. Each group is
a local block (a mixture of low-rank experts: a router picks one expert per image from the pooled
features, and the expert multiplies two 1x1 projections of the features and of a "calibration" map made
by shrinking the image with a 4x4 stride-4 depth-wise conv and growing it back) and a global block (a
striped depth-wise conv, 1 x k then k x 1, gating a projection), each followed by a gated feed-forward.

The header tells the width and colours (`conv_1`), the group count (`body.N`), the experts and each one's
low rank (`moe_layer.experts.N.conv_1`: 2, 3, 4, ... or 2, 4, 6, ... or 2, 4, 8, ... in the published
recipes; Marble reads each one's rank, so any series runs), the striped kernel (`attn.conv.0`) and the
scale (the upsampler's outputs over the colours). Two settings are not in the file: whether the features
are channel-shuffled before the expert split, and how many times the calibration shrinks. The published
models fix them by size, and the reference loader (spandrel) reads them so: SeemoRe-L (16 groups, 48
features) shuffles nothing and shrinks once; every other model shuffles and shrinks twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError
from desktop.engine.library.upscaler_transformers import counted

_LOCAL = "body.0.local_block.block"
_PROBES = ("conv_1.weight", "conv_2.weight", "upsampler.0.weight", f"{_LOCAL}.moe_layer.experts.0.conv_1.weight",
           "body.0.global_block.block.attn.conv.0.weight")  # fmt: skip
_GROUP = re.compile(r"body\.(\d+)\.")
_EXPERT = re.compile(r"body\.0\.local_block\.block\.moe_layer\.experts\.(\d+)\.conv_1\.weight")
# What every group holds besides its experts; a file lacking one is damaged (named in the refusal).
_GROUP_TENSORS = (
    "local_block.norm_1.weight", "local_block.block.conv_1.0.weight", "local_block.block.conv_1.2.weight",
    "local_block.block.agg_conv.0.weight", "local_block.block.conv.0.weight", "local_block.block.conv.1.weight",
    "local_block.block.conv_2.0.conv.0.weight", "local_block.block.conv_2.0.conv.1.weight",
    "local_block.block.moe_layer.gate.body.2.weight", "local_block.block.proj.weight", "local_block.norm_2.weight",
    "local_block.ffn.fn_1.0.weight", "local_block.ffn.fn_2.0.weight", "local_block.ffn.gate.weight",
    "global_block.norm_1.weight", "global_block.block.proj.weight", "global_block.block.to_qv.0.weight",
    "global_block.block.attn.conv.0.weight", "global_block.block.attn.conv.1.weight", "global_block.norm_2.weight",
    "global_block.ffn.fn_1.0.weight", "global_block.ffn.fn_2.0.weight", "global_block.ffn.gate.weight",
)  # fmt: skip
_LARGE = (16, 48)  # SeemoRe-L's (groups, width): no channel shuffle, one calibration shrink


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class SeemoReShape:
    """What a SeemoRe header says beyond scale, width and group count."""

    ranks: tuple[int, ...]  # each expert's low rank, in order
    kernel: int  # the global block's striped depth-wise kernel
    shuffle: bool  # channels shuffled (two groups) before the expert split: not in the file, see the module doc
    shrinks: int  # how many 4x4 stride-4 convs make the calibration map: likewise


def looks_like_seemore(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_seemore(tensors: Mapping[str, _Shaped], name: str) -> tuple[SeemoReShape, int, int, int, int]:
    """(shape, scale, width, groups, colour channels) of a SeemoRe header; ModelError otherwise."""
    width, channels = tuple(tensors["conv_1.weight"].shape[:2])
    groups = sorted({int(m[1]) for key in tensors if (m := _GROUP.match(key))})
    if groups != list(range(len(groups))):
        missing = sorted(set(range(groups[-1] + 1)) - set(groups))
        raise ModelError(f"{name} is a SeemoRe with group(s) {missing} of body missing: the file is damaged.")
    for group in groups:
        absent = [f"body.{group}.{part}" for part in _GROUP_TENSORS if f"body.{group}.{part}" not in tensors]
        if absent:
            raise ModelError(f"{name} is a SeemoRe whose group {group} lacks {absent[0]}: the file is damaged.")
    experts = sorted(int(m[1]) for key in tensors if (m := _EXPERT.fullmatch(key)))
    if experts != list(range(len(experts))):
        raise ModelError(f"{name} is a SeemoRe with experts {experts} in its first group: the file is damaged.")
    ranks = tuple(tensors[f"{_LOCAL}.moe_layer.experts.{index}.conv_1.weight"].shape[0] for index in experts)
    router = tuple(tensors[f"{_LOCAL}.moe_layer.gate.body.2.weight"].shape)
    if router != (len(experts), width):
        raise ModelError(f"{name}'s SeemoRe router is {router}; {len(experts)} experts of {width} features need "
                         f"{(len(experts), width)}.")  # fmt: skip
    kernel = tensors["body.0.global_block.block.attn.conv.0.weight"].shape[3]
    if kernel % 2 == 0:
        raise ModelError(f"{name}'s SeemoRe striped convolution is {kernel} wide; SeemoRe's kernels are odd.")
    outputs = tensors["upsampler.0.weight"].shape[0]
    scale = round((outputs / channels) ** 0.5)
    if scale < 1 or scale * scale * channels != outputs:
        raise ModelError(f"{name}'s upsampler makes {outputs} channels, which fits no scale of {channels} channels.")
    large = (len(groups), width) == _LARGE
    return SeemoReShape(ranks, kernel, not large, 1 if large else 2), scale, width, len(groups), channels


def seemore_label(shape: SeemoReShape, scale: int, width: int, groups: int) -> str:
    return f"SeemoRe {scale}x ({counted(groups, 'group')}, {width} features, {counted(len(shape.ranks), 'expert')})"
