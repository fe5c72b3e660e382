"""MMRealSR upscalers without torch: what an MMRealSR file is, judged from its tensor names and shapes.

MMRealSR (Mou et al. 2022, "Metric Learning based Interactive Modulation for Real-World Super-Resolution";
the `MMRRDBNet_test` network spandrel loads) is Real-ESRGAN's RRDB trunk (BasicSR's names: `conv_first`,
`body.N.rdbK.convJ`, `conv_body`, two nearest 2x upsampling convs, `conv_hr`, `conv_last`) with an affine
modulation after every block (`am_list.N.fc`: three linear layers from a 512-wide embedding to a per-channel
scale and shift). The embedding (`dd_embed`) comes from degradation strengths (blur, noise, ...: one number
each) that a small estimator network (`de_net`) reads off the input image: per strength a conv
(`de_net.conv_first.D`), a body of plain residual blocks and strided convs (`de_net.body.D.I`), an average
pool and two linear layers with a sigmoid (`de_net.fc_degree.D`).

The published network lets a caller override each strength by hand; Marble, like spandrel, does not: the
strengths are always the estimator's own reading of the image (of each tile, when tiled). Two settings are
not in the tensors and take spandrel's defaults, which are the published models' settings: the strengths'
activation (a sigmoid, not tanh) and the stride of every conv between the estimator's residual blocks (2).

The header tells the trunk's width, block count and growth, the number of strengths (`dd_embed`'s inputs)
and the estimator's steps (`de_net.body.0.I`: a residual block where `conv1` exists, a conv otherwise).
The published 2x and 1x models' estimators expect the pixel-unshuffled input's channels but are fed the
image itself, so they cannot run anywhere; they are refused by name.
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


MMREALSR_PROBES = ("am_list.0.fc.0.weight", "dd_embed.0.weight", "de_net.conv_first.0.weight")
EMBEDDING = 512  # the degradation embedding's width: fixed in the network, not a setting
_BLOCK = re.compile(r"body\.(\d+)\.rdb1\.conv1\.weight")
_STEP = re.compile(r"de_net\.body\.0\.(\d+)\.(?:conv1\.)?weight")


@dataclass(frozen=True)
class EstimatorStep:
    """One step of the degradation estimator's body: a residual block keeping `width_out` == `width_in`
    channels, or a stride-2 conv from `width_in` to `width_out` channels."""

    residual: bool
    width_in: int
    width_out: int


@dataclass(frozen=True)
class MMRealSRShape:
    """What an MMRealSR header says beyond scale, width, block count and growth."""

    degradations: int  # strengths the estimator reads (blur and noise in the published models)
    estimator_width: int  # the estimator's first conv's outputs
    steps: tuple[EstimatorStep, ...]


def looks_like_mmrealsr(tensors: Mapping[str, _Shaped]) -> bool:
    # Any one of its modulation / estimator names: a file missing some is still an MMRealSR, refused by name.
    return any(probe in tensors for probe in MMREALSR_PROBES)


def inspect_mmrealsr(tensors: Mapping[str, _Shaped], name: str) -> tuple[MMRealSRShape, int, int, int, int]:
    """(shape, blocks, width, growth, scale) of an MMRealSR header for RGB images; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an MMRealSR upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    width, combined = shape("conv_first.weight")[:2]
    out_channels = shape("conv_last.weight")[0]
    # The published network unshuffles a 2x model's input to 4x the channels (a 1x model's to 16x) before
    # conv_first, but its estimator sees the bare image: such files cannot run (their first conv's inputs
    # and the image's channels disagree), in spandrel as in the original code.
    if combined != 3 or out_channels != 3:
        scale = {12: "2x", 48: "1x"}.get(combined)
        what = f"a {scale} MMRealSR" if scale else f"an MMRealSR for {combined}-channel input"
        raise ModelError(f"{name} is {what}; only the 4x colour (RGB) MMRealSR network can run: the others' "
                         "degradation estimator does not fit the image it is given.")  # fmt: skip
    blocks = sorted(int(m[1]) for key in tensors if (m := _BLOCK.fullmatch(key)))
    if not blocks or blocks != list(range(len(blocks))):
        raise ModelError(f"{name}: its MMRealSR trunk holds blocks {blocks}, not 0..N: the file is incomplete.")
    growth = shape("body.0.rdb1.conv1.weight")[0]
    embed = shape("dd_embed.0.weight")
    if embed[0] != EMBEDDING:
        raise ModelError(f"{name}'s degradation embedding is {embed[0]} wide; MMRealSR's is {EMBEDDING}.")
    estimator_width, estimator_in = shape("de_net.conv_first.0.weight")[:2]
    if estimator_in != combined:
        raise ModelError(f"{name}'s degradation estimator reads {estimator_in} channels, not the image's {combined}.")
    steps: list[EstimatorStep] = []
    current = estimator_width
    for index in sorted({int(m[1]) for key in tensors if (m := _STEP.fullmatch(key))}):
        if index != len(steps):
            raise ModelError(f"{name} lacks de_net.body.0.{len(steps)}: its degradation estimator is incomplete.")
        if f"de_net.body.0.{index}.conv1.weight" in tensors:
            steps.append(EstimatorStep(True, current, shape(f"de_net.body.0.{index}.conv1.weight")[0]))
            if steps[-1].width_out != current:  # a residual block keeps its width; a conv changes it
                raise ModelError(f"{name}'s degradation estimator block {index} makes {steps[-1].width_out} "
                                 f"channels from {current}: the file is damaged.")  # fmt: skip
        else:
            steps.append(EstimatorStep(False, current, shape(f"de_net.body.0.{index}.weight")[0]))
        current = steps[-1].width_out
    if not steps:
        raise ModelError(f"{name} looks like an MMRealSR upscaler but lacks de_net.body.0.0: the file is incomplete.")
    return MMRealSRShape(embed[1], estimator_width, tuple(steps)), len(blocks), width, growth, 4


def mmrealsr_label(info: MMRealSRShape, scale: int, blocks: int, width: int) -> str:
    return f"MMRealSR {scale}x ({blocks} blocks, {width} features; degradation strengths estimated from the image)"
