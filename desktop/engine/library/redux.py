"""Flux.1 Redux and the SigLIP image encoder it reads, from a safetensors header (no torch).

Redux (BFL's `flux1-redux-dev.safetensors`) turns a reference picture into extra prompt tokens for Flux.1: a
SigLIP vision model reads the picture (its last hidden states, one per 14-pixel patch of a 384x384 picture),
and Redux's two layers (`redux_up`: SigLIP width -> 3 x T5 width, `redux_down`: -> T5 width) map them into the
T5 prompt's space, where they are appended to the prompt (diffusers' FluxPriorReduxPipeline). In Marble a
Redux model is an image-prompt unit's model, like an IP-Adapter.

The SigLIP encoder is transformers' SiglipVisionModel (`vision_model.*` with its attention-pooling head
`vision_model.head.*`, no `visual_projection`), as google/siglip-so400m-patch14-384 (whose file holds the text
tower too, `text_model.*`, left unread) and ComfyUI's `sigclip_vision_patch14_384.safetensors` hold it, or
the same names without `vision_model.` (a vision tower saved by transformers 5). Its tensors give everything
but the attention heads, which come from the published sizes (so400m: 1152 wide, 16 heads of 72).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import SafetensorsHeader

_LAYER = re.compile(r"(?:vision_model\.)?encoder\.layers\.(\d+)\.")
VISION_PREFIX = "vision_model."
# Attention heads of the published SigLIP vision towers by width (base, large, so400m); another width (a test's
# tiny model) gets heads of 64.
_HEADS = {768: 12, 1024: 16, 1152: 16}
_NAMES = {768: "base", 1024: "large", 1152: "so400m"}


@dataclass(frozen=True)
class ReduxInfo:
    """What a Redux file's header says: the encoder width it reads and the prompt width it writes."""

    encoder_width: int
    prompt_width: int


@dataclass(frozen=True)
class SiglipInfo:
    """A SigLIP vision tower's shape, enough to build it without a config file."""

    hidden_size: int
    layers: int
    intermediate_size: int
    patch_size: int
    image_size: int
    channels: int

    @property
    def heads(self) -> int:
        return _HEADS.get(self.hidden_size, max(1, self.hidden_size // 64))

    @property
    def short_name(self) -> str:
        return f"SigLIP {_NAMES.get(self.hidden_size, f'{self.hidden_size} wide')}"

    @property
    def label(self) -> str:
        return f"{self.short_name} image encoder"


def is_redux(header: SafetensorsHeader) -> bool:
    return "redux_up.weight" in header.tensors and "redux_down.weight" in header.tensors


def siglip_prefix(header: SafetensorsHeader) -> str | None:
    """"vision_model." or "" before a SigLIP vision tower's names; None when the file is not one."""
    if "visual_projection.weight" in header.tensors:
        return None  # a CLIP vision model (IP-Adapters' encoders)
    for prefix in (VISION_PREFIX, ""):
        if f"{prefix}head.probe" in header.tensors and f"{prefix}embeddings.patch_embedding.weight" in header.tensors:
            return prefix
    return None


def is_siglip_encoder(header: SafetensorsHeader) -> bool:
    return siglip_prefix(header) is not None


def inspect_redux(header: SafetensorsHeader, name: str = "this file") -> ReduxInfo:
    up, down = header.shape("redux_up.weight"), header.shape("redux_down.weight")
    if up is None or down is None or len(up) != 2 or len(down) != 2 or up[0] != down[1] or up[0] != 3 * down[0]:
        raise ModelError(f"{name} has Redux tensors of shapes Marble does not know (redux_up {up}, redux_down {down}).")
    return ReduxInfo(encoder_width=up[1], prompt_width=down[0])


def inspect_siglip(header: SafetensorsHeader, name: str = "this file") -> SiglipInfo:
    """The shape of a SigLIP vision tower; raise ModelError when the file is not one."""
    prefix = siglip_prefix(header)
    if prefix is None:
        raise ModelError(f"{name} is not a SigLIP image encoder: it has no vision_model.head.* tensors.")
    patch = header.shape(f"{prefix}embeddings.patch_embedding.weight")
    positions = header.shape(f"{prefix}embeddings.position_embedding.weight")
    fc1 = header.shape(f"{prefix}encoder.layers.0.mlp.fc1.weight")
    layers = {int(m[1]) for n in header.tensors if n.startswith(prefix) and (m := _LAYER.match(n))}
    if patch is None or len(patch) != 4 or positions is None or fc1 is None or not layers:
        raise ModelError(f"{name} looks like a SigLIP image encoder but misses embedding or layer tensors.")
    side = math.isqrt(positions[0])  # one position per patch, no class token
    if side * side != positions[0]:
        raise ModelError(f"{name}: {positions[0]} position embeddings do not make a square grid of patches.")
    return SiglipInfo(
        hidden_size=patch[0], layers=max(layers) + 1, intermediate_size=fc1[0], patch_size=patch[2],
        image_size=side * patch[2], channels=patch[1],
    )  # fmt: skip
