"""Uformer restoration networks without torch: what a Uformer file is, judged from its tensor names and shapes.

Uformer (Wang et al. 2022, "Uformer: A General U-Shaped Transformer for Image Restoration") is a 1x network
(published for deblurring, denoising, deraining, demoireing): a four-level U-Net of window-attention blocks
(`encoderlayer_0..3`, the bottleneck `conv`, `decoderlayer_0..3`). The header tells the width (`input_proj`),
each layer's block count (its block indices), heads (its bias table's columns), window (its bias table's
rows, (2w-1)^2) and feed-forward width, how queries/keys/values are projected (linear, or depth-wise
separable convs), which feed-forward it uses (a plain MLP, LeFF's depth-wise conv or FastLeFF's full conv)
and whether the decoder's windows carry a learned modulator and a cross-attention to one.
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


# (layer name, width as a multiple of the first, halvings above it) in the published order.
LAYERS = (
    ("encoderlayer_0", 1, 0), ("encoderlayer_1", 2, 1), ("encoderlayer_2", 4, 2), ("encoderlayer_3", 8, 3),
    ("conv", 16, 4), ("decoderlayer_0", 16, 3), ("decoderlayer_1", 8, 2), ("decoderlayer_2", 4, 1),
    ("decoderlayer_3", 2, 0),
)  # fmt: skip
# The published models were built for 256 px crops; a layer whose window covers that crop's whole side at its
# level was built without the shifted windows (the construction cannot be read from the file).
TRAINING_SIDE = 256
# spandrel's size requirement for every Uformer (square, a multiple of 128): Marble pads the same way so that
# a padded input gives the same result.
SPANDREL_MULTIPLE = 128


@dataclass(frozen=True)
class UformerShape:
    """What a Uformer header says beyond scale and width, per layer in LAYERS' order."""

    depths: tuple[int, ...]
    heads: tuple[int, ...]
    windows: tuple[int, ...]
    hidden: tuple[int, ...]  # feed-forward widths
    projection: str  # "linear" | "conv"
    qkv_bias: bool  # the linear projections' biases (the conv projections always have them)
    mlp: str  # "mlp" | "leff" | "fastleff"
    modulator: bool  # decoder windows: a learned offset added to the attention's input
    cross_modulator: bool  # decoder blocks: a cross-attention from the image to a learned set of tokens

    @property
    def padding_unit(self) -> int:
        """The square side's unit: every layer's windows must tile its level, and spandrel's 128."""
        unit = SPANDREL_MULTIPLE
        for (_, _, level), window in zip(LAYERS, self.windows, strict=True):
            unit = math.lcm(unit, window * 2**level)
        return unit

    def shifted(self, layer: int, block: int) -> bool:
        """Odd blocks shift their windows by half, unless the window covered the training crop's side."""
        return block % 2 == 1 and self.windows[layer] < TRAINING_SIDE >> LAYERS[layer][2]


def looks_like_uformer(tensors: Mapping[str, _Shaped]) -> bool:
    return "input_proj.proj.0.weight" in tensors and "encoderlayer_0.blocks.0.attn.relative_position_bias_table" in (
        tensors
    )


def inspect_uformer(tensors: Mapping[str, _Shaped], name: str) -> tuple[UformerShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of a Uformer header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a Uformer but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    def count(layer: str) -> int:
        pattern = re.compile(re.escape(layer) + r"\.blocks\.(\d+)\.norm1\.weight")
        found = sorted({int(m[1]) for key in tensors if (m := pattern.fullmatch(key))})
        if not found or found != list(range(len(found))):
            raise ModelError(f"{name}: its Uformer blocks under {layer} are numbered {found}, with gaps: the file "
                             "is incomplete.")  # fmt: skip
        return len(found)

    width, in_channels = shape("input_proj.proj.0.weight")[:2]
    out_channels = shape("output_proj.proj.0.weight")[0]
    if in_channels != 3 or out_channels != 3:
        raise ModelError(f"{name} is a Uformer for {in_channels}-channel images; Marble runs colour (RGB) ones "
                         "only.")  # fmt: skip
    first = "encoderlayer_0.blocks.0."
    projection = "conv" if f"{first}attn.qkv.to_q.depthwise.weight" in tensors else "linear"
    if f"{first}mlp.fc1.weight" in tensors:
        mlp, hidden_key = "mlp", "mlp.fc1.weight"
    else:
        mlp = "leff" if shape(f"{first}mlp.dwconv.0.weight")[1] == 1 else "fastleff"
        hidden_key = "mlp.linear1.0.weight"
    depths, heads, windows, hidden = [], [], [], []
    for layer, multiple, _ in LAYERS:
        depths.append(count(layer))
        rows, layer_heads = shape(f"{layer}.blocks.0.attn.relative_position_bias_table")
        window = (math.isqrt(rows) + 1) // 2
        if (2 * window - 1) ** 2 != rows:
            raise ModelError(f"{name}: its Uformer position table under {layer} has {rows} rows, not a window's "
                             "(2w-1)^2: the file is damaged.")  # fmt: skip
        if (width * multiple) % layer_heads:
            raise ModelError(f"{name}: its Uformer layer {layer} has {layer_heads} heads for {width * multiple} "
                             "features, which they do not divide.")  # fmt: skip
        heads.append(layer_heads)
        windows.append(window)
        hidden.append(shape(f"{layer}.blocks.0.{hidden_key}")[0])
    detail = UformerShape(
        depths=tuple(depths),
        heads=tuple(heads),
        windows=tuple(windows),
        hidden=tuple(hidden),
        projection=projection,
        qkv_bias=projection == "conv" or f"{first}attn.qkv.to_q.bias" in tensors,
        mlp=mlp,
        modulator="decoderlayer_0.blocks.0.modulator.weight" in tensors,
        cross_modulator="decoderlayer_0.blocks.0.cross_modulator.weight" in tensors,
    )
    return detail, 1, width, in_channels, out_channels


def uformer_label(info: UformerShape, width: int) -> str:
    extras = [
        *(["conv projections"] if info.projection == "conv" else []),
        *({"mlp": ["plain MLP"], "fastleff": ["FastLeFF"]}.get(info.mlp, [])),
        *(["modulator"] if info.modulator else []),
        *(["cross modulator"] if info.cross_modulator else []),
    ]
    more = "".join(f", {extra}" for extra in extras)
    return f"Uformer 1x restoration ({width} features, {'-'.join(map(str, info.depths))} blocks{more})"
