"""Efficient upscaler networks without torch: what a SPAN or (Real)PLKSR file is, judged from its tensor
names and shapes.

SPAN (Swift Parameter-free Attention Network, NTIRE 2024's efficient-SR winner; community models such as
4xNomos8k_span or ClearRealityV1) is a fixed stack: an input conv, six attention blocks of three convs each,
a 1x1 merge of four feature maps, a last conv and a pixel shuffle. Every conv is a "Conv3XC": a 1x1 skip
beside a 1x1 -> 3x3 -> 1x1 chain (twice as wide inside), trained apart and fused into one 3x3 conv to run.
Its header tells the width (`conv_1.sk.weight`), the colour channels and the scale (the upsampler conv's
outputs are channels x scale^2); a `no_norm` tensor marks a model trained without the mean/255 input
normalisation.

PLKSR (Partial Large Kernel CNNs, 2024) and its community variant RealPLKSR (4xNomos2_realplksr_dysample,
the "realplksr" models of OpenModelDB) are a plain stack `feats`: an input conv, N blocks, (RealPLKSR: a
dropout,) a conv to 3 x scale^2 channels added to the input repeated scale^2 times, and a pixel shuffle.
A block mixes channels (two convs; PLKSR's `channe_mixer` [sic] in three kinds told by kernel sizes,
RealPLKSR's `channel_mixer`), runs one large-kernel conv over its first channels only, gates by an
element-wise attention, refines with a 1x1 and (RealPLKSR) normalises (GroupNorm, or a LayerNorm first).
RealPLKSR may upsample with DySample (learned offsets where each output pixel samples the features)
instead of the pixel shuffle. PLKSR's sparse large-kernel ablations are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError

SPAN_BLOCKS = 6  # fixed by the architecture; a file with more or fewer is not SPAN
# The tensors every SPAN file has (the skip and the fused conv of the first and last Conv3XC, the merge, the
# upsampler): enough to tell it from the other upscalers, whose names share none of them.
_SPAN_PROBES = (
    "conv_1.sk.weight", "block_1.c1_r.sk.weight", "block_1.c3_r.eval_conv.weight", "conv_cat.weight",
    "conv_2.sk.weight", "upsampler.0.weight",
)  # fmt: skip


class _Shaped(Protocol):
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SPANShape:
    """What a SPAN file's header says beyond scale and width."""

    normalised: bool  # the input is (x - mean) * 255 (every published model but those saved with `no_norm`)


def looks_like_span(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _SPAN_PROBES)


def inspect_span(tensors: Mapping[str, _Shaped], name: str) -> tuple[SPANShape, int, int, int, int]:
    """(shape, scale, width, input channels, output channels) of a SPAN header; ModelError when it is not one."""
    skip = tuple(tensors["conv_1.sk.weight"].shape)
    if len(skip) != 4 or skip[2:] != (1, 1):
        raise ModelError(f"{name} has SPAN's names but its first convolution is {skip}, not a 1x1 skip.")
    width, in_channels = skip[0], skip[1]
    blocks = sorted({int(key.split(".")[0].removeprefix("block_")) for key in tensors if key.startswith("block_")})
    if blocks != list(range(1, SPAN_BLOCKS + 1)):
        raise ModelError(f"{name} has SPAN blocks {blocks}; the architecture has {SPAN_BLOCKS} (the file is damaged).")
    outputs = tensors["upsampler.0.weight"].shape[0]
    scale = round((outputs / in_channels) ** 0.5)
    if scale < 1 or scale * scale * in_channels != outputs:
        raise ModelError(f"{name}'s upsampler makes {outputs} channels, which fits no scale of {in_channels} channels.")
    return SPANShape(normalised="no_norm" not in tensors), scale, width, in_channels, in_channels


_PLKSR_MIXERS = {(3, 1): "CCM", (1, 3): "ICCM", (3, 3): "DCCM"}  # (first conv's kernel, last's) -> kind
PLKSR_NORM_GROUPS = 4  # RealPLKSR's GroupNorm; not in the file (every published model uses 4)


@dataclass(frozen=True)
class PLKSRShape:
    """What a (Real)PLKSR header says beyond scale and width."""

    real: bool  # RealPLKSR (Mish mixer, normalisation) rather than the paper's PLKSR (GELU, none)
    kernel: int  # the large kernel's size
    partial: int  # how many of the channels the large kernel sees
    mixer: str  # "CCM" | "ICCM" | "DCCM" (RealPLKSR: always "DCCM")
    attention: bool  # the element-wise attention (every published model has it)
    layer_norm: bool  # RealPLKSR with a LayerNorm before each block instead of a GroupNorm after it
    dysample: bool = False  # RealPLKSR upsampling by learned sampling (DySample) instead of a pixel shuffle


def looks_like_plksr(tensors: Mapping[str, _Shaped]) -> bool:
    return "feats.0.weight" in tensors and "feats.1.refine.weight" in tensors and (
        "feats.1.channe_mixer.0.weight" in tensors or "feats.1.channel_mixer.0.weight" in tensors
    )


def inspect_plksr(tensors: Mapping[str, _Shaped], name: str) -> tuple[PLKSRShape, int, int, int, int]:
    """(shape, scale, width, input channels, output channels) of a (Real)PLKSR header; ModelError otherwise."""
    real = "feats.1.channel_mixer.0.weight" in tensors
    if "feats.1.lk.conv.weight" not in tensors:
        raise ModelError(f"{name} is a PLKSR variant with a sparse large-kernel ablation; Marble runs PLKSR and "
                         "RealPLKSR with plain large kernels only.")
    first = tuple(tensors["feats.0.weight"].shape)
    width, in_channels = first[0], first[1]
    indices = sorted({int(key.split(".")[1]) for key in tensors if key.startswith("feats.")})
    # Input conv, blocks 1..N, (RealPLKSR: a dropout, which holds no tensor,) the last conv.
    blocks = indices[-1] - (2 if real else 1)
    expected = [*range(blocks + 1), indices[-1]]
    if blocks < 1 or indices != expected:
        missing = sorted(set(expected) - set(indices))
        raise ModelError(f"{name} is a PLKSR with layer(s) {missing} of feats missing: the file is damaged.")
    last = tensors[f"feats.{indices[-1]}.weight"].shape
    scale = round((last[0] / in_channels) ** 0.5)
    if scale < 1 or scale * scale * in_channels != last[0]:
        raise ModelError(f"{name}'s last convolution makes {last[0]} channels, which fits no scale of "
                         f"{in_channels} channels.")
    mixer_key = "feats.1.channel_mixer" if real else "feats.1.channe_mixer"
    kernels = (tensors[f"{mixer_key}.0.weight"].shape[2], tensors[f"{mixer_key}.2.weight"].shape[2])
    mixer = _PLKSR_MIXERS.get(kernels)
    if mixer is None or (real and mixer != "DCCM"):
        raise ModelError(f"{name} has a PLKSR channel mixer of kernels {kernels}, which Marble does not know.")
    large = tensors["feats.1.lk.conv.weight"].shape
    shape = PLKSRShape(real, large[2], large[0], mixer, "feats.1.attn.f.0.weight" in tensors,
                       "feats.1.layer_norm.weight" in tensors, "to_img.init_pos" in tensors)  # fmt: skip
    if shape.dysample:
        _check_dysample(tensors, scale, in_channels, name)
    return shape, scale, width, in_channels, in_channels


def dysample_groups(scale: int) -> int:
    """DySample's sampling groups in RealPLKSR: 4, or 3 (one per colour) at odd scales; not in the file."""
    return 3 if scale % 2 else 4


def _check_dysample(tensors: Mapping[str, _Shaped], scale: int, channels: int, name: str) -> None:
    offsets = 2 * dysample_groups(scale) * scale**2
    keys = ("to_img.offset.weight", "to_img.scope.weight")
    shapes = {key: tuple(tensors[key].shape) for key in keys if key in tensors}
    if len(shapes) != 2 or any(shape[:2] != (offsets, channels * scale**2) for shape in shapes.values()):
        raise ModelError(f"{name} has a DySample upsampler of shapes {shapes}; a {scale}x one has {offsets} offsets "
                         f"from {channels * scale**2} channels.")


def plksr_label(shape: PLKSRShape, scale: int, width: int, blocks: int) -> str:
    kind = "RealPLKSR" if shape.real else f"PLKSR ({shape.mixer})"
    upsampler = ", DySample" if shape.dysample else ""
    return f"{kind} {scale}x ({width} features, {blocks} blocks, kernel {shape.kernel}{upsampler})"


def span_label(shape: SPANShape, scale: int, width: int) -> str:
    return f"SPAN {scale}x ({width} features{'' if shape.normalised else ', no input normalisation'})"
