"""GRL upscalers without torch: what a GRL file is, judged from its tensor names and shapes.

GRL (Li et al. 2023, "Efficient and Explicit Modelling of Image Hierarchies for Image Restoration";
GRL-T, GRL-S and GRL-B differ in width and depth) is a shallow conv, a LayerNorm, stages of blocks each
closed by a conv, a LayerNorm, a conv and one of SwinIR's four reconstructions (1x restoration too). Each
block splits one qkv projection in two: half the channels attend in square windows (shifted by half a
window in even blocks), half in stripes through "anchors" (the image shrunk by a down factor): stripe
pixels -> anchors -> stripe pixels, two cosine attentions with their own position-bias MLPs. GRL-B adds a
conv branch with channel attention (`conv.cab`) to each block.

The header tells the width, the stages and blocks, each stage's window and stripe heads (the logit
scales), the qkv and anchor projections (which tensors are present), the anchor's down factor where the
projection is a conv (its kernel) or a multi-step one (its step count), the MLP width, the closing convs
and the reconstruction. The window and stripe sizes and the pooled anchors' down factor are in the file
only where it carries the published code's position buffers (`table_w`, `table_sh`, `index_sh_a2w`);
otherwise the published training configurations are assumed, as spandrel does: window 8 and stripes 8x8
for 1x restoration, 16 and 32x64 for the real-world (nearest+conv) models, 32 and 64x64 for the others,
anchors pooled by averaging at a down factor of 4. Labels show the sizes used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from desktop.engine.errors import ModelError
from desktop.engine.library.upscaler_transformers import blocks_text, shuffle_stages

# The stripe attention's first (stripe -> anchor) logit scale: GRL's alone.
GRL_PROBE = "layers.0.blocks.0.attn.stripe_attn.attn_transform1.logit_scale"
# The published code's position buffers some files carry: recomputed by the backend, never loaded.
GRL_DERIVED = (
    "table_w", "table_sh", "table_sv", "index_w", "index_sh_a2w", "index_sh_w2a", "index_sv_a2w", "index_sv_w2a",
    "mask_w", "mask_sh_a2w", "mask_sh_w2a", "mask_sv_a2w", "mask_sv_w2a",
)  # fmt: skip
_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.")
_ANCHOR = "layers.0.blocks.0.attn.anchor.body"
_DEFAULT_DOWN = 4  # the published configurations' anchor down factor
_T = TypeVar("_T")
_Shape = Callable[[str], tuple[int, ...]]  # a tensor's shape by name, ModelError when it is missing


@dataclass(frozen=True)
class GRLShape:
    """Everything beyond UpscalerInfo's fields that building a GRL needs."""

    upsampler: str  # "pixelshuffle" | "pixelshuffledirect" | "nearest+conv" | "" (1x restoration)
    depths: tuple[int, ...]  # blocks per stage
    window_heads: tuple[int, ...]
    stripe_heads: tuple[int, ...]
    window: int
    stripe: tuple[int, int]  # (height, width) of the even blocks' stripes; odd blocks use it transposed
    down: int  # the anchors are the image shrunk by this factor
    anchor: str  # "avgpool" | "conv2d" | "separable_conv" | "patchmerging"
    anchor_steps: int  # 1: one projection by `down`; n: n halving steps (down = 2^n)
    qkv: str  # "linear" | "separable_conv"
    qkv_bias: bool
    local: bool  # GRL-B's conv branch with channel attention in each block
    hidden: int  # the MLP's hidden width
    bias_width: int  # the position-bias MLPs' hidden width
    conv: str  # "1conv" | "3conv" | "1conv1x1" | "linear": what closes each stage and the body
    stages: tuple[int, ...]  # pixel-shuffle factors (pixelshuffle)
    features: int  # the reconstruction convs' width (pixelshuffle, nearest+conv); 0 where there are none
    sizes_from_file: bool  # False: window, stripes (and a pooled anchor's factor) assumed, see above
    width: int  # the embedding width (also UpscalerInfo.features), for the size name

    @property
    def size_name(self) -> str:
        # The published sizes: GRL-B has 7 stages, GRL-S (128 dims) and GRL-T (64) have 4.
        return "B" if len(self.depths) >= 6 else "S" if self.width >= 96 else "T"


def looks_like_grl(tensors: Mapping[str, object]) -> bool:
    return any(prefix + GRL_PROBE in tensors for prefix in ("", "model.", "model_g."))


def unprefixed(tensors: Mapping[str, _T]) -> dict[str, _T]:
    """The tensors under the names the network has. Some published GRL files (saved by their training
    wrapper) prefix every name with `model.`; the blind-SR one keeps its generator under `model_g.` beside
    the discriminator's and the loss's tensors, which are not the upscaler's."""
    for prefix in ("model_g.", "model."):
        if prefix + "conv_first.weight" in tensors:
            return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    return dict(tensors)


def inspect_grl(tensors: Mapping[str, object], name: str) -> tuple[GRLShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of a GRL header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like a GRL upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)  # type: ignore[attr-defined]

    width, in_channels = shape("conv_first.weight")[:2]
    stages: dict[int, set[int]] = {}
    for key in tensors:
        if m := _BLOCK.match(key):
            stages.setdefault(int(m[1]), set()).add(int(m[2]))
    if sorted(stages) != list(range(len(stages))):
        raise ModelError(f"{name}: its GRL stages are not numbered 0..{len(stages) - 1} "
                         f"(found {sorted(stages)}): the file is incomplete.")  # fmt: skip
    depths, window_heads, stripe_heads = [], [], []
    for stage in range(len(stages)):
        blocks = sorted(stages[stage])
        if blocks != list(range(len(blocks))):
            raise ModelError(f"{name}: GRL stage {stage} has blocks {blocks}, with gaps: the file is incomplete.")
        depths.append(len(blocks))
        attn = f"layers.{stage}.blocks.0.attn"
        window_heads.append(shape(f"{attn}.window_attn.attn_transform.logit_scale")[0])
        stripe_heads.append(shape(f"{attn}.stripe_attn.attn_transform1.logit_scale")[0])
    half = width // 2
    if width % 2 or any(half % h for h in window_heads + stripe_heads):
        raise ModelError(f"{name} has a GRL layout Marble cannot run ({width} dims, window heads {window_heads}, "
                         f"stripe heads {stripe_heads}).")  # fmt: skip

    upsampler, scale, out_channels, stages_found = _reconstruction(tensors, shape, in_channels, name)
    anchor, steps, down = _anchor(tensors, shape, name)
    qkv_linear = "layers.0.blocks.0.attn.qkv.body.weight" in tensors
    qkv_bias = "layers.0.blocks.0.attn.qkv.body.bias" if qkv_linear else "layers.0.blocks.0.attn.qkv.body.0.bias"
    if "conv_after_body.weight" not in tensors:
        conv = "3conv"
    elif len(closing := shape("conv_after_body.weight")) == 2:
        conv = "linear"
    else:
        conv = "1conv1x1" if closing[2] == 1 else "1conv"

    tail = "conv_before_upsample.0.weight"
    features = shape(tail)[0] if tail in tensors else 0
    from_file = all(key in tensors for key in ("table_w", "table_sh", "index_sh_a2w"))
    if from_file:
        window, stripe, down = _sizes_from_buffers(shape, name)
    elif anchor == "patchmerging" and steps == 1:
        raise ModelError(f"{name} is a GRL whose anchors are one patch-merging step: the file does not say the "
                         "down factor its stripes were trained with (the published code saves it only in position "
                         "buffers this file lacks), so Marble cannot run it.")  # fmt: skip
    elif scale == 1:
        window, stripe = 8, (8, 8)
    elif upsampler == "nearest+conv":
        window, stripe = 16, (32, 64)
    else:
        window, stripe = 32, (64, 64)
    pad = max(window, *stripe)
    if any(pad % s for s in (window, *stripe)) or any(s % down for s in stripe) or any((s // 2) % down for s in stripe):
        raise ModelError(f"{name} is a GRL with window {window}, stripes {stripe[0]}x{stripe[1]} and anchors "
                         f"{down}x smaller, which do not tile one padded image; Marble cannot run it.")  # fmt: skip
    if anchor == "patchmerging" and steps == 1 and down != 2:
        raise ModelError(f"{name} is a GRL whose one patch-merging step halves the image, but its position "
                         f"buffers say the anchors are {down}x smaller: the file is inconsistent.")  # fmt: skip

    info = GRLShape(
        upsampler, tuple(depths), tuple(window_heads), tuple(stripe_heads), window, stripe, down, anchor, steps,
        "linear" if qkv_linear else "separable_conv", qkv_bias in tensors,
        "layers.0.blocks.0.conv.cab.0.weight" in tensors, shape("layers.0.blocks.0.mlp.fc1.weight")[0],
        shape("layers.0.blocks.0.attn.window_attn.attn_transform.cpb_mlp.0.weight")[0], conv, stages_found,
        features, from_file, width,
    )  # fmt: skip
    return info, scale, width, in_channels, out_channels


def _reconstruction(
    tensors: Mapping[str, object], shape: _Shape, in_channels: int, name: str
) -> tuple[str, int, int, tuple[int, ...]]:
    """(upsampler, scale, out channels, pixel-shuffle factors): which tail tensors the file has."""
    if "conv_before_upsample.0.weight" in tensors and "upsample.up.0.weight" in tensors:
        features = shape("conv_before_upsample.0.weight")[0]
        # shuffle_stages reads DAT's names (upsample.N); GRL nests the same convs one level down.
        prefix = "upsample.up."
        renamed = {"upsample." + k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        found = shuffle_stages(renamed, features, name, "GRL")
        return "pixelshuffle", math.prod(found), shape("conv_last.weight")[0], found
    if "upsample.up.0.weight" in tensors:
        produced = shape("upsample.up.0.weight")[0]
        for scale in (2, 3, 4, 8):  # the one conv makes out channels x scale^2 for the pixel shuffle
            if produced == in_channels * scale * scale:
                return "pixelshuffledirect", scale, in_channels, ()
        raise ModelError(f"{name}: a GRL upsampling conv makes {produced} channels, which fits no 2x, 3x, 4x or 8x "
                         f"pixel shuffle of {in_channels} channels.")  # fmt: skip
    if "conv_up1.weight" in tensors:
        return "nearest+conv", 4, shape("conv_last.weight")[0], ()  # the published code: 4x only
    return "", 1, shape("conv_last.weight")[0], ()


def _anchor(tensors: Mapping[str, object], shape: _Shape, name: str) -> tuple[str, int, int]:
    """(projection, steps, down factor) of the anchor projection; a pooled anchor's factor is assumed."""
    steps = 0
    while any(key.startswith(f"{_ANCHOR}.{steps}.") for key in tensors):
        steps += 1
    if steps == 0:
        raise ModelError(f"{name} looks like a GRL upscaler but lacks {_ANCHOR}.0: the file is incomplete.")
    first = f"{_ANCHOR}.0"
    if f"{first}.reduction.weight" in tensors:
        # A pooled linear (with a bias) or patch merging (without): pooling has no weights to tell its factor.
        projection = "avgpool" if f"{first}.reduction.bias" in tensors else "patchmerging"
    else:
        projection = "conv2d" if f"{first}.weight" in tensors else "separable_conv"
    if steps > 1:
        if projection == "avgpool":
            raise ModelError(f"{name} is a GRL with {steps} pooled anchor steps, a layout the published code does "
                             "not build.")  # fmt: skip
        return projection, steps, 2**steps
    if projection == "conv2d":
        return projection, 1, shape(f"{first}.weight")[2] - 1  # kernel = factor + 1
    if projection == "separable_conv":
        return projection, 1, shape(f"{first}.0.weight")[2] - 1
    return projection, 1, _DEFAULT_DOWN


def _sizes_from_buffers(shape: _Shape, name: str) -> tuple[int, tuple[int, int], int]:
    """(window, stripe, down factor) from the published code's position buffers: the window table has
    2w-1 columns; the stripe-to-anchor index is (stripe / down)^2 x stripe^2 tokens; the stripe table has
    s + s / down - 1 rows and columns."""
    window = (shape("table_w")[1] + 1) // 2
    small, large = sorted(shape("index_sh_a2w")[:2])
    down = math.isqrt(large // max(1, small))
    table = shape("table_sh")
    stripe = []
    for extent in table[1:3]:
        size = next((s for s in range(1, extent + 2) if s + s // max(1, down) == extent + 1), 0)
        stripe.append(size)
    if not window or not down or down * down * small != large or 0 in stripe:
        raise ModelError(f"{name} is a GRL whose position buffers (table_w {shape('table_w')}, table_sh {table}) "
                         "fit no window and stripe sizes: the file is damaged.")  # fmt: skip
    return window, (stripe[0], stripe[1]), down


def grl_label(info: GRLShape, scale: int, width: int) -> str:
    what = f"{scale}x" if scale > 1 else "1x restoration"
    return (f"GRL-{info.size_name} {what} ({width} dims, {blocks_text(info.depths)} blocks, window {info.window}, "
            f"stripes {info.stripe[0]}x{info.stripe[1]})")  # fmt: skip
