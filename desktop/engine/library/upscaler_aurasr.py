"""AuraSR upscalers without torch: what an AuraSR file is, judged from its tensor names and shapes.

AuraSR (fal, 2024) is a GAN upscaler after GigaGAN's upsampler: a U-Net whose 3x3 convolutions are
StyleGAN2-style modulated ones (`...proj.weights`, a bank of kernels per convolution, mixed and scaled per
image by a style vector a small mapping network makes from random noise). Its levels, from the tensors:

- `init_conv`: a 7x7 conv from colour to the first down level's width;
- `downs.L`: blocks `downs.L.0.B` at that width, optional full attention (`downs.L.1.0.layers.N`), then a
  3x3 stride-2 conv to the next width (`downs.L.1.1`);
- `mid_block1`, `mid_attn` (full attention), `mid_block2` at the deepest width;
- `ups.L` (five of them): a nearest 2x upsample and 3x3 conv (`ups.L.1.0.conv`), blocks (`ups.L.0.B`; the
  first levels take the matching down level's outputs as skips, so their blocks see twice the width) and
  optional full attention (`ups.L.1.1.layers.N`);
- `final_res_block`, `final_to_rgb`; `style_network.net.2K` (the mapping network's linear layers) and
  `style_to_conv_modulations` (one linear layer making every convolution's modulation at once).

Five upsamples against D downsamples make the scale 2^(5 - D): the published model has three (4x). The
attention heads are not in the tensors: the published model and spandrel use 8.
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


# Modulated kernel banks (`proj.weights`, plural) and the style projection are AuraSR's alone.
PROBES = ("mid_block2.block1.proj.weights", "final_res_block.block1.proj.weights", "style_to_conv_modulations.weight")
UPS = 5  # upsampling levels in every AuraSR (spandrel reads ups.0 to ups.4 too)
HEADS = 8  # attention heads: not recorded in the file; the published model's count
_DOWN = re.compile(r"downs\.(\d+)\.1\.1\.weight")
_STYLE = re.compile(r"style_network\.net\.(\d+)\.weight")


@dataclass(frozen=True)
class AuraSRShape:
    """What an AuraSR header says beyond scale and width."""

    up_widths: tuple[int, ...]  # six: the last upsample's output width ... the deepest (mid) width
    down_widths: tuple[int, ...]  # downs + 1: the first down level's width ... the deepest
    down_attention: tuple[int, ...]  # per down level, its attention layers (0: none)
    up_attention: tuple[int, ...]  # per up level in run order (ups.0 first), its attention layers (0: none)
    mid_attention: int
    blocks: int  # modulated residual blocks per level (6 in the published code)
    head_width: int  # per attention head
    ff_mult: int  # the attention layers' feed-forward width over their input's
    kernels: int  # kernels in each modulated convolution's bank
    style_in: int  # the mapping network's noise width
    style_width: int  # its output (the style vector)
    style_layers: int

    @property
    def downs(self) -> int:
        return len(self.down_widths) - 1

    @property
    def padding_unit(self) -> int:
        """The side the input must be a multiple of: each down level halves it."""
        return 2**self.downs


def looks_like_aurasr(tensors: Mapping[str, _Shaped]) -> bool:
    return all(probe in tensors for probe in PROBES)


def aurasr_label(detail: AuraSRShape, scale: int, features: int) -> str:
    return f"AuraSR {scale}x (GigaGAN, {features} features)"


def inspect_aurasr(tensors: Mapping[str, _Shaped], name: str) -> tuple[AuraSRShape, int, int, int, int]:
    """(shape, scale, width, in channels, out channels) of an AuraSR header; ModelError otherwise."""

    def shape(key: str) -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise ModelError(f"{name} looks like an AuraSR upscaler but lacks {key}: the file is incomplete.")
        return tuple(info.shape)

    def numbered(pattern: re.Pattern[str], what: str, step: int = 1) -> int:
        found = sorted({int(m[1]) for key in tensors if (m := pattern.fullmatch(key))})
        if not found or found != list(range(0, step * len(found), step)):
            raise ModelError(f"{name}: its AuraSR {what} are numbered {found}, with gaps: the file is incomplete.")
        return len(found)

    def attention(prefix: str) -> int:
        """Layers of a full-attention stack under `prefix` (0 when the level has none)."""
        layer = re.compile(re.escape(prefix) + r"\.layers\.(\d+)\.0\.to_qkv\.weight")
        if not any(layer.fullmatch(key) for key in tensors):
            return 0
        return numbered(layer, f"{prefix} attention layers")

    downs = numbered(_DOWN, "down levels")
    if not 2 <= downs <= UPS:
        raise ModelError(f"{name} is an AuraSR with {downs} down levels against {UPS} up levels; Marble runs 2 to 5 "
                         "(8x to 1x).")  # fmt: skip
    rgb = shape("final_to_rgb.weight")
    channels, width = rgb[0], rgb[1]
    first = shape("init_conv.weight")
    # ups.L's upsampling conv goes from up width 5-L to up width 4-L (ups.0 starts at the deepest).
    up_widths = [0] * (UPS + 1)
    for level in range(UPS):
        out, into = shape(f"ups.{level}.1.0.conv.weight")[:2]
        up_widths[UPS - 1 - level], up_widths[UPS - level] = out, into
    down_widths = [first[0]] + [shape(f"downs.{level}.1.1.weight")[0] for level in range(downs)]
    if down_widths[-1] != up_widths[-1]:
        raise ModelError(f"{name}: its AuraSR deepest down width ({down_widths[-1]}) is not its middle's "
                         f"({up_widths[-1]}): the file is damaged.")  # fmt: skip
    blocks = numbered(re.compile(r"ups\.0\.0\.(\d+)\.block1\.proj\.weights"), "blocks")
    bank = shape("mid_block1.block1.proj.weights")
    if bank[0] < 2:
        # The published modulated convolution mixes its bank by a softmax; a single kernel never ran there.
        raise ModelError(f"{name} is an AuraSR with {bank[0]} kernel per convolution; it runs with 2 or more.")
    qkv, out = shape("mid_attn.layers.0.0.to_qkv.weight"), shape("mid_attn.layers.0.0.to_out.weight")
    if out[1] % HEADS or qkv[0] != 3 * out[1]:
        raise ModelError(f"{name}: its AuraSR attention is {out[1]} wide, which {HEADS} heads do not split.")
    hidden = shape("mid_attn.layers.0.1.1.weight")[0]
    if hidden % up_widths[-1]:
        raise ModelError(f"{name}: its AuraSR feed-forward ({hidden}) is no multiple of its width ({up_widths[-1]}).")
    style_layers = numbered(_STYLE, "style layers", step=2)
    style = shape("style_network.net.0.weight")
    detail = AuraSRShape(
        up_widths=tuple(up_widths), down_widths=tuple(down_widths),
        down_attention=tuple(attention(f"downs.{level}.1.0") for level in range(downs)),
        up_attention=tuple(attention(f"ups.{level}.1.1") for level in range(UPS)),
        mid_attention=attention("mid_attn"), blocks=blocks, head_width=out[1] // HEADS,
        ff_mult=hidden // up_widths[-1], kernels=bank[0], style_in=style[1], style_width=style[0],
        style_layers=style_layers,
    )  # fmt: skip
    return detail, 2 ** (UPS - downs), width, first[1], channels
