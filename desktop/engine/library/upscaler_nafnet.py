"""NAFNet restoration models without torch: what a NAFNet file is, judged from its tensor names and shapes.

NAFNet (Chen et al. 2022, "Simple Baselines for Image Restoration": the GoPro deblurring and SIDD denoising
models, and community 1x restoration models) is a U-Net of activation-free blocks. A 3x3 conv (`intro`)
makes `width` features; each encoder level (`encoders.L`, a run of blocks) is followed by a 2x2 stride-2
conv doubling the width (`downs.L`); the bottom runs `middle_blks`; each decoder level is a 1x1 conv to
twice the width and a 2x pixel shuffle (`ups.L`, halving the width, doubling the size), the matching
encoder's output added, then its blocks (`decoders.L`); a 3x3 conv (`ending`) back to colour is added to
the input. The output is the input's size: a 1x model in the upscaler slot.

Each block (`norm1`, `conv1`..`conv5`, `sca.1`, `beta`, `gamma`) has a fixed layout given its width, so the
header tells everything: the width (`intro`), the blocks per encoder level, in the middle and per
decoder level (their indices). KBNet's small variant reuses these names, with its own kernel-basis ones
(`attgamma`, `w`); those files are not NAFNet's.
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


# The channel attention's conv and the plain depth-wise conv2 under the middle blocks: NAFNet's block;
# KBNet-S's has the attention too but a Sequential conv2 and its kernel-basis `attgamma`.
_PROBES = ("middle_blks.0.sca.1.weight", "middle_blks.0.conv2.weight", "intro.weight", "ending.weight")
_KBNET = "middle_blks.0.attgamma"
_ENCODER = re.compile(r"encoders\.(\d+)\.(\d+)\.beta")
_DECODER = re.compile(r"decoders\.(\d+)\.(\d+)\.beta")
_MIDDLE = re.compile(r"middle_blks\.(\d+)\.beta")


@dataclass(frozen=True)
class NAFNetShape:
    """What a NAFNet header says beyond its width."""

    encoders: tuple[int, ...]  # blocks per encoder level, top (full size) first
    middle: int  # blocks at the bottom level
    decoders: tuple[int, ...]  # blocks per decoder level, bottom first (as the file numbers them)

    @property
    def padding_unit(self) -> int:
        """Each level halves the size: the input is padded to a multiple of 2^levels, as published."""
        return 2 ** len(self.encoders)

    @property
    def blocks(self) -> int:
        return sum(self.encoders) + self.middle + sum(self.decoders)


def looks_like_nafnet(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in _PROBES) and _KBNET not in tensors


def inspect_nafnet(tensors: Mapping[str, _Shaped], name: str) -> tuple[NAFNetShape, int, int, int, int]:
    """(shape, scale 1, width, in channels, out channels) of a NAFNet header; ModelError otherwise."""
    unet, width, in_channels, out_channels = inspect_unet(tensors, name, "NAFNet")
    return unet, 1, width, in_channels, out_channels


def inspect_unet(tensors: Mapping[str, _Shaped], name: str, architecture: str) -> tuple[NAFNetShape, int, int, int]:
    """(levels, width, in channels, out channels) of NAFNet's U-Net frame, which KBNet-S shares, whatever its
    blocks are; ModelError naming `architecture` otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a {architecture} restoration model but lacks {key}: the file is "
                             "incomplete.")  # fmt: skip
        return tuple(info.shape)

    def contiguous(found: set[int], what: str) -> int:
        if not found or sorted(found) != list(range(len(found))):
            raise ModelError(f"{name}: its {architecture} {what} are numbered {sorted(found)}, with gaps: the file "
                             "is incomplete.")  # fmt: skip
        return len(found)

    def levels(pattern: re.Pattern[str], what: str) -> tuple[int, ...]:
        blocks: dict[int, set[int]] = {}
        for key in tensors:
            if m := pattern.fullmatch(key):
                blocks.setdefault(int(m[1]), set()).add(int(m[2]))
        if not blocks:  # a NAFNet without levels is a plain stack: spandrel's detection wants one, so does Marble
            raise ModelError(f"{name} looks like a {architecture} restoration model but has no {what} levels.")
        contiguous(set(blocks), f"{what} levels")
        return tuple(contiguous(blocks[level], f"{what} level {level} blocks") for level in range(len(blocks)))

    width, in_channels = shape("intro.weight")[:2]
    out_channels, ending_width = shape("ending.weight")[:2]
    encoders, decoders = levels(_ENCODER, "encoder"), levels(_DECODER, "decoder")
    middle = contiguous({int(m[1]) for key in tensors if (m := _MIDDLE.fullmatch(key))}, "middle blocks")
    if len(encoders) != len(decoders) or ending_width != width:
        # Each decoder level adds an encoder level's output: the counts must pair up to come back to `width`.
        raise ModelError(f"{name} has {len(encoders)} {architecture} encoder levels but {len(decoders)} decoder "
                         "levels; its U-Net does not close.")  # fmt: skip
    for level in range(len(encoders)):
        wide = width << level
        if shape(f"downs.{level}.weight") != (2 * wide, wide, 2, 2):
            found = shape(f"downs.{level}.weight")
            raise ModelError(f"{name}'s {architecture} downsampling conv {level} is {found}, not {wide} -> "
                             f"{2 * wide} features.")  # fmt: skip
    return NAFNetShape(encoders, middle, decoders), width, in_channels, out_channels


def nafnet_label(info: NAFNetShape, width: int, architecture: str = "NAFNet") -> str:
    def counts(levels: tuple[int, ...]) -> str:
        return "-".join(str(n) for n in levels)

    return (f"{architecture} 1x restoration ({width} features, {counts(info.encoders)} / {info.middle} / "
            f"{counts(info.decoders)} blocks)")  # fmt: skip
