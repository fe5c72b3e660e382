"""HVI-CIDNet low-light enhancers without torch: what an HVI-CIDNet file is, judged from its tensor names and
shapes.

HVI-CIDNet (Yan et al. 2025, "HVI: A New Color Space for Low-light Image Enhancement") is a 1x network that
moves the image into its HVI colour space (hue and saturation on a plane whose radius shrinks in the dark
by a learned density `trans.density_k`, and intensity), enhances the colour plane (`HVE_*`, `HVD_*`) and the
intensity (`IE_*`, `ID_*`) in two three-level U-Nets that exchange information through cross-attention
blocks (`HV_LCA1..6`, `I_LCA1..6`), and maps the result back to RGB. The header tells the four widths
(the first conv's, then each level's), the attention heads per level (each block's `ffn.temperature`)
and whether the resampling steps end in a layer norm (`HVE_block1.norm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from desktop.engine.errors import ModelError


class _Shaped(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...


# The colour space's learned density beside the first cross-attention block: HVI-CIDNet's alone.
PROBE = "trans.density_k"
_ATTENTION = "HV_LCA1.ffn.temperature"


@dataclass(frozen=True)
class CIDNetShape:
    """What an HVI-CIDNet header says beyond scale and width (the width is `channels[0]`)."""

    channels: tuple[int, int, int, int]  # the first conv's width, then each of the three levels'
    heads: tuple[int, int, int]  # attention heads at each level
    norm: bool  # the down- and upsampling steps end in a layer norm

    @property
    def padding_unit(self) -> int:
        """The side the input is padded to a multiple of: three halvings, whose skips must meet again."""
        return 8


def looks_like_cidnet(tensors: Mapping[str, _Shaped]) -> bool:
    return PROBE in tensors and _ATTENTION in tensors


def inspect_cidnet(tensors: Mapping[str, _Shaped], name: str) -> tuple[CIDNetShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of an HVI-CIDNet header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an HVI-CIDNet but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    width, in_channels = shape("HVE_block0.1.weight")[:2]
    if in_channels != 3:  # the colour plane's first conv sees H, V and I: the network is RGB only
        raise ModelError(f"{name} is an HVI-CIDNet for {in_channels}-channel images; Marble runs colour (RGB) "
                         "ones only.")  # fmt: skip
    channels = (width, *(shape(f"HVE_block{level}.down.0.weight")[0] for level in (1, 2, 3)))
    heads = tuple(shape(f"HV_LCA{level}.ffn.temperature")[0] for level in (1, 2, 3))
    for level, (dim, count) in enumerate(zip(channels[1:], heads, strict=True), start=1):
        if not count or dim % count:
            raise ModelError(f"{name}: its HVI-CIDNet level {level} is {dim} channels wide in {count} attention "
                             "heads, which do not divide it.")  # fmt: skip
    info = CIDNetShape(channels, heads, "HVE_block1.norm.weight" in tensors)  # type: ignore[arg-type]
    return info, 1, width, 3, 3


def cidnet_label(info: CIDNetShape) -> str:
    norm = ", layer norms" if info.norm else ""
    return f"HVI-CIDNet 1x low-light ({'-'.join(map(str, info.channels))} channels{norm})"
