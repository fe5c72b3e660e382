"""SAFMN upscalers without torch: what a SAFMN or SAFMN-BCIE file is, judged from its tensor names and shapes.

SAFMN (Sun et al. 2023, "Spatially-Adaptive Feature Modulation") is a conv to features (`to_feat`), a chain
of blocks (`feats.N`) and a conv to colour x scale^2 channels before a pixel shuffle (`to_img.0`). Each
block normalises its channels, modulates them by a four-level feature pyramid (`safm`: the channels in
four groups, each but the first max-pooled 2^i times smaller, a depth-wise 3x3 conv, brought back by
nearest upsampling, then a 1x1 aggregation through a GELU gate) and runs a conv feed-forward (`ccm`).

SAFMN-BCIE, its image-enhancement variant (brightness / contrast, a 1x model), uses the same blocks in
groups (`feats.G.layers.L`, each group closed by a 3x3 conv and its own skip) on an input pixel-unshuffled
by a factor f (`to_feat.1` sees 3f^2 channels), and brings the result back with a conv to width x f^2
channels, a pixel shuffle and a conv to colour (`to_img.0`, `to_img.2`).

The header tells the width, the block (and group) counts, the feed-forward width and the scale or the
unshuffle factor.
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


# The pyramid's aggregation under a plain block index is SAFMN's alone; under `layers` SAFMN-BCIE's.
SAFMN_PROBE = "feats.0.safm.aggr.weight"
BCIE_PROBE = "feats.0.layers.0.safm.aggr.weight"
LEVELS = 4  # the pyramid's levels in every SAFMN (the channels split in four groups)
_BLOCK = re.compile(r"feats\.(\d+)\.norm1\.weight")
_GROUP = re.compile(r"feats\.(\d+)\.conv\.weight")
_LAYER = re.compile(r"feats\.(\d+)\.layers\.(\d+)\.norm1\.weight")


@dataclass(frozen=True)
class SAFMNShape:
    """What a SAFMN header says beyond scale and width."""

    blocks: int  # blocks; for SAFMN-BCIE, groups of `layers` blocks
    layers: int  # blocks per group (SAFMN-BCIE); 0 for plain SAFMN, whose blocks are not grouped
    hidden: int  # the feed-forward's hidden width
    unshuffle: int  # SAFMN-BCIE's pixel-unshuffle factor; 1 for plain SAFMN

    @property
    def padding_unit(self) -> int:
        """The side the input is padded to a multiple of: the pyramid's deepest level pools 8x, after
        SAFMN-BCIE's unshuffle (spandrel asks for the same: 8, and 16 for the published 2x unshuffle)."""
        return 2 ** (LEVELS - 1) * self.unshuffle


def looks_like_safmn(tensors: Mapping[str, _Shaped]) -> bool:
    return SAFMN_PROBE in tensors or BCIE_PROBE in tensors


def inspect_safmn(tensors: Mapping[str, _Shaped], name: str) -> tuple[SAFMNShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of a SAFMN or SAFMN-BCIE header; ModelError otherwise."""
    bcie = BCIE_PROBE in tensors
    architecture = "SAFMN-BCIE" if bcie else "SAFMN"

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a {architecture} upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    def numbered(pattern: re.Pattern[str], what: str) -> int:
        found = sorted({int(m[1]) for key in tensors if (m := pattern.fullmatch(key))})
        if not found or found != list(range(len(found))):
            raise ModelError(f"{name}: its {architecture} {what} are numbered {found}, with gaps: the file is "
                             "incomplete.")  # fmt: skip
        return len(found)

    if bcie:
        width, unshuffled = shape("to_feat.1.weight")[:2]
        unshuffle = math.isqrt(unshuffled // 3)
        if 3 * unshuffle * unshuffle != unshuffled:
            raise ModelError(f"{name}'s first conv sees {unshuffled} channels, which fits no unshuffle of RGB.")
        groups = numbered(_GROUP, "groups")  # each group's closing conv
        blocks: dict[int, set[int]] = {}
        for key in tensors:
            if m := _LAYER.fullmatch(key):
                blocks.setdefault(int(m[1]), set()).add(int(m[2]))
        layers = len(blocks.get(0, ()))
        if any(blocks.get(group) != set(range(layers)) for group in range(groups)) or not layers:
            found = {group: sorted(blocks.get(group, ())) for group in range(groups)}
            raise ModelError(f"{name}: its SAFMN-BCIE groups hold blocks {found}, not the same whole count: the "
                             "file is incomplete.")  # fmt: skip
        if shape("to_img.0.weight")[0] != width * unshuffle**2 or shape("to_img.2.weight")[:2] != (3, width):
            raise ModelError(f"{name}'s SAFMN-BCIE output convs do not fit {width} features unshuffled {unshuffle}x.")
        info = SAFMNShape(groups, layers, shape("feats.0.layers.0.ccm.ccm.0.weight")[0], unshuffle)
        in_channels, out_channels, scale = 3, 3, 1
    else:
        width, in_channels = shape("to_feat.weight")[:2]
        outputs = shape("to_img.0.weight")[0]
        scale = math.isqrt(outputs // 3)
        if 3 * scale * scale != outputs:
            raise ModelError(f"{name}'s last conv makes {outputs} channels, which fits no scale of RGB.")
        info = SAFMNShape(numbered(_BLOCK, "blocks"), 0, shape("feats.0.ccm.ccm.0.weight")[0], 1)
        out_channels = 3
    prefix = "feats.0.layers.0." if bcie else "feats.0."
    if shape(f"{prefix}safm.mfr.0.weight")[0] * LEVELS != width:
        raise ModelError(f"{name} is a {architecture} {width} features wide; its four-level pyramid needs a "
                         "multiple of 4.")  # fmt: skip
    return info, scale, width, in_channels, out_channels


def safmn_label(info: SAFMNShape, scale: int, width: int) -> str:
    if info.layers:
        return f"SAFMN-BCIE ({info.blocks}x{info.layers} blocks, {width} features)"
    blocks = "1 block" if info.blocks == 1 else f"{info.blocks} blocks"
    return f"SAFMN {scale}x ({blocks}, {width} features)"
