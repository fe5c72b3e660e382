"""FDAT upscalers without torch: what an FDAT file is, judged from its tensor names, shapes and the upsampler's
settings tensor.

FDAT ("Fast DAT", a 2025 community network) is DAT slimmed down: a shallow conv, groups of blocks closed by a
bias-free conv, a bias-free conv after the body, then one of several upsamplers. Its blocks alternate a
square-window attention with a full learned bias per head and window position pair (even blocks) and DAT's
channel attention (odd blocks); each mixes its attention with a depth-wise conv branch through a gate (the
"simplified AIM": a per-channel gate from the conv branch after window attention, a per-pixel gate from
the attention after channel attention), then a feed-forward network with a depth-wise conv inside.

The upsampler is a shared module that stores its own settings in the file (`upsampler.MetaUpsample`, seven
uint8 values: version, kind, scale, input width, output channels, middle width, DySample groups): the kind
and the scale come from there, since two kinds have the same tensor shapes at 2x and 3x. The "unshuffle"
variant (2x and 1x models) pixel-unshuffles its input first (`conv_first.1`) and upsamples 4x.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.upscaler_transformers import blocks_text, numbered_groups

META = "upsampler.MetaUpsample"
# The upsampler kinds in the order their index is stored in the settings tensor.
UPSAMPLERS = (
    "conv", "pixelshuffledirect", "pixelshuffle", "nearest+conv", "dysample", "transpose+conv", "lda", "pa_up",
)  # fmt: skip
_NAMES = {
    "conv": "conv", "pixelshuffledirect": "direct pixel shuffle", "pixelshuffle": "pixel shuffle",
    "nearest+conv": "nearest + conv", "dysample": "DySample", "transpose+conv": "transposed conv",
    "lda": "LDA sampling", "pa_up": "pixel-attention",
}  # fmt: skip
_VERSION = 3  # the settings layout FDAT's upsampler writes
_BLOCK = re.compile(r"groups\.(\d+)\.blocks\.(\d+)\.n1\.weight")


@dataclass(frozen=True)
class FDATShape:
    """Everything beyond UpscalerInfo's fields that building an FDAT needs."""

    depths: tuple[int, ...]  # blocks per group (window and channel attention alternating)
    heads: int
    window: int
    hidden: int  # the feed-forward's hidden width
    gate: int  # the channel gate's inner width (the width over the published reduction ratio)
    upsampler: str  # one of UPSAMPLERS ("conv" whenever the upsampler's scale is 1)
    mid: int  # the upsampler's middle width
    unshuffle: int  # 1, or the pixel-unshuffle factor of the input (2 for 2x models, 4 for 1x)
    upsampler_scale: int  # the upsampler's own factor (4 for unshuffle models)
    sample_groups: int  # DySample's channel groups (the settings' last value; 4 in the published code)


def looks_like_fdat(tensors: Mapping[str, object]) -> bool:
    # The settings tensor is a name of FDAT's shared upsampler; the gate names are FDAT's blocks'.
    return META in tensors and "groups.0.blocks.0.inter.cg.1.weight" in tensors


def inspect_fdat(
    tensors: Mapping[str, object], values: Mapping[str, bytes], name: str
) -> tuple[FDATShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of an FDAT header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an FDAT upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    meta = values.get(META)
    if meta is None or len(meta) != 7:
        raise ModelError(f"{name} looks like an FDAT upscaler but its {META} is not the seven settings bytes "
                         "FDAT writes: the file is damaged.")  # fmt: skip
    version, kind, up_scale, up_in, out_channels, mid, sample_groups = meta
    if version != _VERSION or kind >= len(UPSAMPLERS) or up_scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} has FDAT upsampler settings Marble does not know (version {version}, kind {kind}, "
                         f"scale {up_scale}).")  # fmt: skip
    unshuffled = "conv_first.1.weight" in tensors
    first = shape("conv_first.1.weight" if unshuffled else "conv_first.weight")
    width = first[0]
    if unshuffled:
        unshuffle = math.isqrt(first[1] // out_channels)
        if unshuffle not in (2, 4) or unshuffle**2 * out_channels != first[1] or up_scale != 4:
            raise ModelError(f"{name}'s unshuffling first conv takes {first[1]} channels; an FDAT unshuffles "
                             f"{out_channels} channels by 2 or 4 and upsamples 4x.")  # fmt: skip
        in_channels, scale = out_channels, 4 // unshuffle
    else:
        unshuffle, in_channels, scale = 1, first[1], up_scale
    # The pixel-attention upsampler records its middle width there instead (it renames its input width as it
    # builds), so spandrel reads such a file right only when the two are equal; Marble reads the body's.
    if up_in != (mid if UPSAMPLERS[kind] == "pa_up" else width):
        raise ModelError(f"{name}'s FDAT upsampler takes {up_in} channels but the body is {width} wide: the file "
                         "is damaged.")  # fmt: skip
    depths = [len(blocks) for blocks in numbered_groups(tensors, _BLOCK, name, "FDAT")]
    heads, tokens, _ = shape("groups.0.blocks.0.attn.bias")
    window = math.isqrt(tokens)
    if window * window != tokens or width % heads:
        raise ModelError(f"{name} has an FDAT window bias of {tokens} positions for {heads} heads of {width} "
                         "dims: no square window fits.")  # fmt: skip
    detail = FDATShape(
        tuple(depths), heads, window, shape("groups.0.blocks.0.ffn.fc1.weight")[0],
        shape("groups.0.blocks.0.inter.cg.1.weight")[0], "conv" if up_scale == 1 else UPSAMPLERS[kind], mid,
        unshuffle, up_scale, sample_groups,
    )  # fmt: skip
    _check_upsampler(detail, width, name)
    return detail, scale, width, in_channels, out_channels


def _check_upsampler(info: FDATShape, width: int, name: str) -> None:
    """The kind and factor combinations the published upsampler builds; others are refused by name."""
    kind, scale = info.upsampler, info.upsampler_scale
    if kind == "lda" and info.mid % 8:
        raise ModelError(f"{name}'s FDAT LDA sampling upsampler is {info.mid} wide; it splits a quarter of its "
                         "width in two groups, so the width divides by 8: the file is damaged.")  # fmt: skip
    if kind == "transpose+conv" and scale not in (2, 3, 4):
        raise ModelError(f"{name} is an FDAT with a transposed-conv upsampler at {scale}x; it exists at 2x, 3x and 4x.")
    if kind == "dysample" and (info.mid <= info.sample_groups or info.mid % max(1, info.sample_groups)):
        raise ModelError(f"{name}'s FDAT DySample splits {info.mid} channels into {info.sample_groups} groups: "
                         "the file is damaged.")  # fmt: skip
    if info.mid == 0 or width == 0:
        raise ModelError(f"{name}'s FDAT upsampler has no channels: the file is damaged.")


def fdat_label(info: FDATShape, scale: int, width: int) -> str:
    blocks = blocks_text(info.depths)
    what = " restoration" if scale == 1 else ""
    unshuffle = ", unshuffled input" if info.unshuffle > 1 else ""
    return f"FDAT {scale}x{what} ({width} dims, {blocks} blocks, {_NAMES[info.upsampler]} upsampler{unshuffle})"
