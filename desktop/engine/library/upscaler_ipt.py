"""IPT upscalers without torch: what an IPT file is, judged from its tensor names and shapes.

IPT (Chen et al. 2021, "Pre-Trained Image Processing Transformer") is a multi-task network: one conv head
(`head.T`: a conv and two 5x5 residual blocks) and one tail (`tail.T`: a pixel-shuffle upsampler and a conv)
per task, around one shared transformer body that works on a fixed-size crop (the patch size, 48 px in the
published models): the crop's features are cut into patch_dim x patch_dim tokens (`body.encoder`,
`body.decoder`: DETR-style encoder and decoder layers, the decoder's queries offset by a learned per-task
embedding, `body.query_embed`), optionally with a linear encoding and an MLP head (`body.linear_encoding`,
`body.mlp_head`) and learned positions (`body.position_encoding.pe`). Whole images run as overlapping crops
(desktop.engine.backends.upscale_ipt).

The header tells the width (`head.0.0`), the token width (the encoder's in_proj: width x patch_dim^2), the
layer count, the norms, the MLP, the positions and so the patch size (the position table's rows or the query
embedding's width are the tokens per crop), and each tail's scale (its upsampling convs make 4x or 9x their
inputs). Three settings are not in the tensors and take spandrel's defaults: 12 attention heads (the published
models'), positions added once before the encoder (not in every layer), and of several tails the largest
scale's (the pre-trained all-task file runs as its 4x super-resolution). The colour range (255 in the
published models) is read from the mean-shift's bias when the tensors are loaded.
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


IPT_PROBE = "body.decoder.layers.0.multihead_attn.in_proj_weight"
HEADS = 12  # not in the file: the published models' (and spandrel's) count
DEFAULT_PATCH = 48  # the patch size of a file without positions or MLP, which does not record it
_LAYER = re.compile(r"body\.(encoder|decoder)\.layers\.(\d+)\.linear1\.weight")
_TAIL = re.compile(r"tail\.(\d+)\.1\.weight")
_UPSAMPLE = re.compile(r"tail\.(\d+)\.0\.(\d+)\.weight")


@dataclass(frozen=True)
class IPTShape:
    """What an IPT header says beyond scale and width."""

    patch_dim: int  # each token is patch_dim x patch_dim features
    patch_size: int  # the crop the body works on (a multiple of patch_dim)
    layers: int  # encoder layers (the decoder has as many)
    norms: bool  # layer norms in the encoder and decoder layers
    mlp: bool  # linear encoding, MLP head and per-task query embeddings
    positions: bool  # learned positions added before the encoder
    queries: int  # per-task query embeddings (with the MLP)
    scales: tuple[int, ...]  # each tail's scale; the largest one's task runs
    task: int  # the tail (and query) index that runs


def looks_like_ipt(tensors: Mapping[str, _Shaped]) -> bool:
    return IPT_PROBE in tensors and "sub_mean.weight" in tensors


def inspect_ipt(tensors: Mapping[str, _Shaped], name: str) -> tuple[IPTShape, int, int]:
    """(shape, scale, width) of an IPT header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an IPT upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    width, colours = shape("head.0.0.weight")[:2]
    if colours != 3:
        raise ModelError(f"{name} is an IPT for {colours}-channel images; IPT runs colour (RGB) ones only.")
    embed = shape("body.encoder.layers.0.self_attn.in_proj_weight")[1]
    patch_dim = math.isqrt(embed // width)
    if patch_dim * patch_dim * width != embed:
        raise ModelError(f"{name}'s tokens are {embed} wide, not its {width} features times a square patch.")
    if embed % HEADS:
        raise ModelError(f"{name}'s tokens are {embed} wide, which IPT's {HEADS} attention heads do not divide.")
    layers = {kind: sorted(int(m[2]) for key in tensors if (m := _LAYER.fullmatch(key)) and m[1] == kind)
              for kind in ("encoder", "decoder")}  # fmt: skip
    count = len(layers["encoder"])
    if not count or any(found != list(range(count)) for found in layers.values()):
        raise ModelError(f"{name}: its IPT encoder and decoder hold layers {layers}, not the same 0..N: the file "
                         "is incomplete.")  # fmt: skip
    mlp = "body.linear_encoding.weight" in tensors
    positions = "body.position_encoding.pe.weight" in tensors
    queries, tokens = 1, 0
    if mlp:
        queries, query_width = shape("body.query_embed.weight")
        tokens = query_width // embed
    if positions:
        tokens = shape("body.position_encoding.pe.weight")[0]
    side = math.isqrt(tokens)
    if (mlp or positions) and (side * side != tokens or not side):
        raise ModelError(f"{name}'s IPT crop holds {tokens} tokens, which is no square.")
    patch_size = side * patch_dim if (mlp or positions) else DEFAULT_PATCH
    if patch_size % 4:
        # The crops overlap by quarters of a crop; the published code's seams only line up on whole quarters.
        raise ModelError(f"{name}'s IPT patch size {patch_size} is not a multiple of 4; Marble runs ones that are.")
    tails = sorted(int(m[1]) for key in tensors if (m := _TAIL.fullmatch(key)))
    if not tails or tails != list(range(len(tails))):
        raise ModelError(f"{name}: its IPT tails are {tails}, not 0..N: the file is incomplete.")
    scales = []
    for tail in tails:
        scale = 1
        for key in sorted(k for k in tensors if (m := _UPSAMPLE.fullmatch(k)) and int(m[1]) == tail):
            outputs, inputs = shape(key)[:2]
            step = math.isqrt(outputs // inputs)
            if step not in (2, 3) or step * step * inputs != outputs:
                raise ModelError(f"{name}'s {key} makes {outputs} channels from {inputs}, no 2x or 3x step.")
            scale *= step
        scales.append(scale)
    task = scales.index(max(scales))
    if mlp and task >= queries:
        raise ModelError(f"{name} has {queries} IPT task queries but its {max(scales)}x tail is number {task + 1}.")
    info = IPTShape(patch_dim, patch_size, count, "body.encoder.layers.0.norm1.weight" in tensors, mlp, positions,
                    queries, tuple(scales), task)  # fmt: skip
    return info, max(scales), width


def ipt_label(info: IPTShape, scale: int, width: int) -> str:
    tasks = f", the {scale}x of {len(info.scales)} tasks" if len(info.scales) > 1 else ""
    return f"IPT {scale}x ({width} features, {info.layers} layers, {info.patch_size} px crops{tasks})"
