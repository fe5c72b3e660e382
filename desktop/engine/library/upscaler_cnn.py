"""Plain convolutional upscalers without torch: what an RCAN or a Swift-SRGAN file is, judged from its
tensor names and shapes.

RCAN (Zhang et al. 2018, "Residual Channel Attention Networks") is a head conv, G residual groups of B
channel-attention blocks (conv, ReLU, conv, then a squeeze-excite gate: global average, 1x1 down to
width/reduction channels, ReLU, 1x1 back up, sigmoid) each closed by a conv, a body conv, a pixel-shuffle
upsampler and a tail conv. Variants the published and community files use, all told by the header:
- the mean shift (`sub_mean` / `add_mean`, 1x1 convs): the network works on 0-255 values with the
  DIV2K mean taken off; without them, on 0-1 values as they are;
- the pixel-unshuffle head (`head.0` is the unshuffle, `head.1` the conv): a 1x or 2x model that shrinks
  its input 4x or 2x first and keeps a 4x upsampler;
- the kernel size (the head conv's), the width, the reduction, the group and block counts, the scale
  (the upsampler's convs: 2x stages, or one 3x; none at 1x).

Swift-SRGAN (Krishnan et al. 2021) is SRGAN's generator with depth-wise separable convs: a 9x9 conv
with PReLU, B residual blocks (two separable convs with BatchNorm, PReLU between), a separable conv with
BatchNorm added to the first conv's output, 2x pixel-shuffle stages with PReLU, and a 9x9 separable
conv whose tanh is mapped to 0-1. The header tells the colour channels, the width, the blocks and the
stages.
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


# The channel-attention gate's first 1x1 conv: RCAN's alone among the upscalers Marble reads.
RCAN_PROBE = "body.0.body.0.body.3.conv_du.0.weight"
_RCAN_GROUP = re.compile(r"body\.(\d+)\.body\.")
_RCAN_BLOCK = re.compile(r"body\.(\d+)\.body\.(\d+)\.body\.0\.weight")
SWIFT_PROBES = ("initial.cnn.depthwise.weight", "final_conv.pointwise.weight")
_SWIFT_BLOCK = re.compile(r"residual\.(\d+)\.")
_SWIFT_STAGE = re.compile(r"upsampler\.(\d+)\.")


@dataclass(frozen=True)
class RCANShape:
    """What an RCAN header says beyond scale and width."""

    groups: int
    blocks: int  # channel-attention blocks per group
    squeeze: int  # the attention gate's inner width (width // reduction)
    kernel: int  # the head, body and tail convs' kernel (the upsampler's are always 3x3)
    stages: tuple[int, ...]  # the upsampler's pixel-shuffle factors
    unshuffle: int  # the input's pixel-unshuffle factor; 1 without one
    mean_shift: bool  # 0-255 values less the DIV2K mean (sub_mean/add_mean), else 0-1 values


def looks_like_rcan(tensors: Mapping[str, _Shaped]) -> bool:
    return RCAN_PROBE in tensors and "tail.1.weight" in tensors


def inspect_rcan(tensors: Mapping[str, _Shaped], name: str) -> tuple[RCANShape, int, int, int, int]:
    """(shape, scale, width, colour channels in, out) of an RCAN header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an RCAN upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    unshuffled = "head.1.weight" in tensors
    head = shape("head.1.weight" if unshuffled else "head.0.weight")
    width, head_in, kernel = head[0], head[1], head[-1]
    colours = shape("tail.1.weight")[0]
    if kernel % 2 == 0:
        raise ModelError(f"{name} is an RCAN with {kernel}x{kernel} convs; Marble runs odd kernel sizes only.")
    # Each group's blocks sit at body.G.body.0..B-1, its closing conv at body.G.body.B; the body conv
    # after the groups at body.G.
    groups = sorted({int(m[1]) for key in tensors if (m := _RCAN_GROUP.match(key))})
    if groups != list(range(len(groups))):
        raise ModelError(f"{name}: its RCAN groups are {groups}, with gaps: the file is incomplete.")
    shape(f"body.{len(groups)}.weight")
    blocks = {g: sorted(int(m[2]) for key in tensors if (m := _RCAN_BLOCK.fullmatch(key)) and int(m[1]) == g)
              for g in groups}  # fmt: skip
    count = len(blocks[0])
    for group, found in blocks.items():
        if found != list(range(count)):
            raise ModelError(f"{name}: RCAN group {group} has blocks {found} where group 0 has {count}: "
                             "the file is incomplete.")  # fmt: skip
        shape(f"body.{group}.body.{count}.weight")
    stages, index = [], 0
    while (conv := tensors.get(f"tail.0.{index}.weight")) is not None:
        produced = conv.shape[0]
        factor = math.isqrt(produced // width)
        if factor * factor * width != produced or factor not in (2, 3):
            raise ModelError(f"{name}: an RCAN upsampling conv makes {produced} channels from {width}, which "
                             "fits no 2x or 3x pixel shuffle.")  # fmt: skip
        stages.append(factor)
        index += 2
    if 3 in stages and len(stages) > 1:
        raise ModelError(f"{name}: an RCAN upsampler of {stages} stages; a 3x one stands alone.")
    factor = math.isqrt(head_in // colours) if unshuffled else 1
    upscaled = math.prod(stages)
    if factor * factor * colours != head_in or upscaled % factor:
        raise ModelError(f"{name}: an RCAN head reading {head_in} channels fits no pixel unshuffle of {colours} "
                         f"colours before a {upscaled}x upsampler.")  # fmt: skip
    mean_shift = "sub_mean.weight" in tensors
    if mean_shift:
        shape("add_mean.weight")
    squeeze = shape(RCAN_PROBE)[0]
    info = RCANShape(len(groups), count, squeeze, kernel, tuple(stages), factor, mean_shift)
    return info, upscaled // factor, width, colours, colours


def rcan_label(info: RCANShape, scale: int, width: int) -> str:
    groups = f"{info.groups} group{'s' if info.groups != 1 else ''}"
    return f"RCAN {scale}x ({groups} of {info.blocks} block{'s' if info.blocks != 1 else ''}, {width} features)"


def looks_like_swiftsrgan(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in SWIFT_PROBES)


def inspect_swiftsrgan(tensors: Mapping[str, _Shaped], name: str) -> tuple[int, int, int, int, int]:
    """(residual blocks, scale, width, colour channels in, out) of a Swift-SRGAN header; ModelError otherwise."""
    in_channels = tensors["initial.cnn.depthwise.weight"].shape[0]
    if "initial.cnn.pointwise.weight" not in tensors:
        raise ModelError(f"{name} looks like a Swift-SRGAN but lacks initial.cnn.pointwise.weight: "
                         "the file is incomplete.")  # fmt: skip
    width = tensors["initial.cnn.pointwise.weight"].shape[0]
    blocks = sorted({int(m[1]) for key in tensors if (m := _SWIFT_BLOCK.match(key))})
    stages = sorted({int(m[1]) for key in tensors if (m := _SWIFT_STAGE.match(key))})
    for what, found in (("residual blocks", blocks), ("upsampling stages", stages)):
        if found != list(range(len(found))):
            raise ModelError(f"{name}: its Swift-SRGAN {what} are {found}, with gaps: the file is incomplete.")
    return len(blocks), 2 ** len(stages), width, in_channels, tensors["final_conv.pointwise.weight"].shape[0]


def swiftsrgan_label(scale: int, blocks: int, width: int) -> str:
    return f"Swift-SRGAN {scale}x ({blocks} block{'s' if blocks != 1 else ''}, {width} features)"
