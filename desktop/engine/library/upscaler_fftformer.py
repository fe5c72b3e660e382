"""FFTformer deblurring networks without torch: what an FFTformer file is, judged from its tensor names and
shapes.

FFTformer (Kong et al. 2023, "Efficient Frequency Domain-based Transformers for High-Quality Image
Deblurring") is a 1x network: a three-level U-Net of blocks whose feed-forward filters each 8x8 patch in
the frequency domain (a learned `ffn.fft` table) and whose decoder blocks add an attention computed as a
product of query and key spectra per patch; two fusion blocks join the skips, refinement blocks follow. The
header tells the width (`patch_embed.proj`), the colour channels, the block counts of the three encoder
levels (the decoder mirrors them), the refinement count, each level's feed-forward width and whether the
convs carry biases.
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


# The first block's spectral filter beside the fusion block's: no other architecture Marble reads has them.
PROBE = "encoder_level1.0.ffn.fft"
PATCH = 8  # the published spectral patch side (the `fft` tables are PATCH x PATCH//2+1)
LEVELS = 3
PUBLISHED_REFINEMENT = 4


@dataclass(frozen=True)
class FFTformerShape:
    """What an FFTformer header says beyond scale and width."""

    blocks: tuple[int, int, int]  # per encoder level (the decoder level mirrors each)
    refinement: int
    hidden: tuple[int, int, int]  # each level's feed-forward width (published: 3x the level's width)
    fuse_hidden: tuple[int, int]  # the fusion blocks' feed-forward widths: fuse1 (level 1), fuse2 (level 2)
    bias: bool  # the blocks' convs, the unused channel reduction and the output conv

    @property
    def padding_unit(self) -> int:
        """Two halvings, then 8 px spectral patches: the input side must be a multiple of 32."""
        return PATCH * 2 ** (LEVELS - 1)


def looks_like_fftformer(tensors: Mapping[str, _Shaped]) -> bool:
    return PROBE in tensors and "fuse1.att_channel.ffn.fft" in tensors


def inspect_fftformer(tensors: Mapping[str, _Shaped], name: str) -> tuple[FFTformerShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of an FFTformer header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an FFTformer but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    def count(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.ffn\.fft")
        found = sorted({int(m[1]) for key in tensors if (m := pattern.fullmatch(key))})
        if not found or found != list(range(len(found))):
            raise ModelError(f"{name}: its FFTformer blocks under {prefix} are numbered {found}, with gaps: the "
                             "file is incomplete.")  # fmt: skip
        return len(found)

    width, in_channels = shape("patch_embed.proj.weight")[:2]
    out_channels = shape("output.weight")[0]
    if in_channels != 3 or out_channels != 3:
        # The network adds its input to its output, and upscale() feeds RGB.
        raise ModelError(f"{name} is an FFTformer for {in_channels}-channel images; Marble runs colour (RGB) ones "
                         "only.")  # fmt: skip
    blocks = tuple(count(f"encoder_level{level}") for level in range(1, LEVELS + 1))
    for level, n in enumerate(blocks, 1):
        if count(f"decoder_level{level}") != n:
            raise ModelError(f"{name}: its FFTformer decoder level {level} has {count(f'decoder_level{level}')} "
                             f"blocks for the encoder's {n}: the file is damaged.")  # fmt: skip
    hidden = tuple(shape(f"encoder_level{level}.0.ffn.project_out.weight")[1] for level in range(1, LEVELS + 1))
    fuse_hidden = tuple(shape(f"fuse{level}.att_channel.ffn.project_out.weight")[1] for level in (1, 2))
    detail = FFTformerShape(
        blocks=blocks,  # type: ignore[arg-type]
        refinement=count("refinement"),
        hidden=hidden,  # type: ignore[arg-type]
        fuse_hidden=fuse_hidden,  # type: ignore[arg-type]
        bias="encoder_level1.0.ffn.project_in.bias" in tensors,
    )
    return detail, 1, width, in_channels, out_channels


def fftformer_label(info: FFTformerShape, width: int) -> str:
    refinement = "" if info.refinement == PUBLISHED_REFINEMENT else f", {info.refinement} refinement"
    return f"FFTformer 1x deblur ({width} features, {'-'.join(map(str, info.blocks))} blocks{refinement})"
