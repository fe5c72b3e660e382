"""Real-CUGAN upscalers without torch: what a Real-CUGAN file is, judged from its tensor names and shapes.

Real-CUGAN (bilibili's anime upscaler, after waifu2x's CUNet) is two U-Nets in a row: `unet1`, one level
deep, ends in a transposed conv that upsamples (2x, or 3x in the 3x model); `unet2`, two levels deep,
refines that result, and the two are summed. Every conv is unpadded, so the input is mirrored outwards
first and the U-Nets eat the border. Four networks share the names:

- 2x and 3x: the U-Nets work on the colours themselves; `unet1`'s last deconvolution is 4x4 (2x) or
  5x5 (3x).
- 4x: the U-Nets work on 64 channels, a `conv_final` and a 2x pixel shuffle make the picture, added to
  the nearest-upsampled input.
- 2x "fast": the 4x network fed the input pixel-unshuffled (four times the colour channels at half size),
  so `conv_final`'s outputs are then exactly `unet1`'s inputs.

The "pro" models (2x, 3x, 4x) carry a `pro` entry, a flag rather than a weight: they were trained on
inputs squeezed into 0.15..0.85, so the network maps the range in and out around the same layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from desktop.engine.errors import ModelError

# Names only Real-CUGAN's two U-Nets have (no other architecture calls its modules unet1 / unet2).
_PROBES = ("unet1.conv1_down.weight", "unet2.conv2_down.weight")
WIDTH = 64  # the U-Nets' fixed width (the 4x and fast networks' features)


@dataclass(frozen=True)
class CUGANShape:
    """What a Real-CUGAN header says beyond scale and channels."""

    pro: bool  # trained on 0.15..0.85 inputs (the file's `pro` flag)
    fast: bool  # the 2x network run at half size on unshuffled pixels


def looks_like_cugan(tensors: Mapping[str, object]) -> bool:
    return all(probe in tensors for probe in _PROBES)


def inspect_cugan(tensors: Mapping[str, object], name: str) -> tuple[CUGANShape, int, int, int, int]:
    """(shape, scale, width, input channels, output channels) of a Real-CUGAN header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a Real-CUGAN upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    in_channels = shape("unet1.conv1.conv.0.weight")[1]
    pro, fast = "pro" in tensors, False
    if "conv_final.weight" in tensors:
        outputs = shape("conv_final.weight")[0]
        if outputs % 4:
            raise ModelError(f"{name}'s conv_final makes {outputs} channels; Real-CUGAN's 2x pixel shuffle needs "
                             "a multiple of 4.")  # fmt: skip
        out_channels = outputs // 4
        # The fast network's U-Nets read the unshuffled input: four times the channels conv_final makes
        # per output pixel (a 4x network for 4-channel input would look the same; none was published).
        fast = outputs == in_channels
        scale = 2 if fast else 4
        in_channels //= 4 if fast else 1
        if fast and pro:
            raise ModelError(f"{name} is a fast Real-CUGAN with a pro flag; no such network exists (damaged file).")
    else:
        kernel = shape("unet1.conv_bottom.weight")[2:]
        scale = {(4, 4): 2, (5, 5): 3}.get(kernel, 0)
        if not scale:
            raise ModelError(f"{name}'s unet1 ends in a {kernel} deconvolution, which fits no Real-CUGAN scale "
                             "(4x4 for 2x, 5x5 for 3x).")  # fmt: skip
        out_channels = shape("unet2.conv_bottom.weight")[0]
    return CUGANShape(pro, fast), scale, WIDTH, in_channels, out_channels


def cugan_label(shape: CUGANShape, scale: int) -> str:
    kind = " (pro)" if shape.pro else " (fast)" if shape.fast else ""
    return f"Real-CUGAN {scale}x{kind}"
