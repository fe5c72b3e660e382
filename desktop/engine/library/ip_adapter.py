"""IP-Adapters and their CLIP image encoders, from a safetensors header (no torch).

An IP-Adapter file (h94's layout, what A1111's ControlNet extension and diffusers' `load_ip_adapter` read)
holds `image_proj.*` (turns the reference image's CLIP features into a few extra "tokens") and
`ip_adapter.N.to_k_ip / to_v_ip` (the extra keys and values each cross-attention reads them with).
Variants, as diffusers tells them apart:

- plain: `image_proj.proj` + `image_proj.norm`; reads the encoder's projected embedding (image_embeds),
  so it needs an encoder whose projection is `proj.weight`'s input width;
- plus: a perceiver resampler (`image_proj.latents`, `proj_in`, `proj_out`); reads the encoder's
  penultimate hidden states, so it needs an encoder of `proj_in`'s input width;
- full (full-face): an MLP (`image_proj.proj.0` ... `proj.3`); hidden states like plus.
FaceID adapters read face embeddings from a separate face model (insightface) and are refused.

Family: `to_k_ip` maps the image tokens from the base model's cross-attention width (768 SD 1.x,
1024 SD 2.x, 2048 SDXL).

An image encoder is a CLIP vision model with projection (`vision_model.*` + `visual_projection.weight`,
transformers' CLIPVisionModelWithProjection, e.g. h94's `image_encoder/model.safetensors`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import SafetensorsHeader

PLAIN, PLUS, FULL = "plain", "plus", "full"
_VARIANT_LABELS = {PLAIN: "IP-Adapter", PLUS: "IP-Adapter Plus", FULL: "IP-Adapter Full"}
_WIDTH_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
# The released encoders by width: OpenAI's ViT-L/14, OpenCLIP's ViT-H/14 and ViT-bigG/14.
_ENCODER_NAMES = {1024: "ViT-L", 1280: "ViT-H", 1664: "ViT-bigG"}
_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class IpAdapterInfo:
    """What an IP-Adapter's header says: variant, family and the encoder it needs."""

    variant: str  # PLAIN | PLUS | FULL
    family: str | None  # "sd1" | "sd2" | "sdxl"; None for widths no released family has
    # Which encoder output it reads ("image_embeds" = the projection, "hidden" = the hidden states) and
    # how wide that output must be: the encoder is picked from the library by these.
    encoder_output: str
    encoder_width: int
    attention_width: int | None  # the base model's cross-attention width `to_k_ip` reads

    @property
    def variant_label(self) -> str:
        return _VARIANT_LABELS[self.variant]


@dataclass(frozen=True)
class ImageEncoderInfo:
    """A CLIP vision model's shape, enough to build it without a config file."""

    hidden_size: int
    projection_dim: int
    layers: int
    intermediate_size: int
    patch_size: int
    image_size: int
    channels: int

    @property
    def short_name(self) -> str:
        return _ENCODER_NAMES.get(self.hidden_size) or f"{self.hidden_size} wide"

    @property
    def label(self) -> str:
        return f"CLIP image encoder ({self.short_name})"

    def width_of(self, output: str) -> int:
        return self.projection_dim if output == "image_embeds" else self.hidden_size


def is_ip_adapter(header: SafetensorsHeader) -> bool:
    return header.has_prefix("image_proj.") and header.has_prefix("ip_adapter.")


def is_image_encoder(header: SafetensorsHeader) -> bool:
    return "visual_projection.weight" in header.tensors and header.has_prefix("vision_model.")


def inspect_ip_adapter(header: SafetensorsHeader, name: str = "this file") -> IpAdapterInfo:
    """Variant, family and needed encoder of an IP-Adapter; raise ModelError naming what is wrong."""
    if not is_ip_adapter(header):
        raise ModelError(f"{name} is not an IP-Adapter: it has no image_proj.* and ip_adapter.* tensors.")
    if header.has_prefix("image_proj.perceiver_resampler.") or (
        "image_proj.norm.weight" in header.tensors and "image_proj.proj.0.weight" in header.tensors
    ):
        # FaceID's projection reads a 512-wide ArcFace identity embedding, not CLIP's: without the face model
        # (and the package that runs it) there is nothing to give it. h94's Plus Face is a Plus adapter.
        kind = "FaceID Plus" if header.has_prefix("image_proj.perceiver_resampler.") else "FaceID"
        raise ModelError(
            f"{name} is an IP-Adapter {kind}: it reads a face embedding from insightface's face-recognition "
            "model (buffalo_l / antelopev2, run by the insightface package), which Marble does not have. Use a "
            "CLIP IP-Adapter instead (plain, Plus, Plus Face or Full Face)."
        )
    to_k = next((header.shape(n) for n in sorted(header.tensors) if n.endswith(".to_k_ip.weight")), None)
    width = to_k[1] if to_k is not None and len(to_k) == 2 else None
    family = _WIDTH_FAMILIES.get(width or 0)
    proj, proj_in, mlp = (header.shape(f"image_proj.{n}.weight") for n in ("proj", "proj_in", "proj.0"))
    if proj is not None and len(proj) == 2:
        return IpAdapterInfo(PLAIN, family, "image_embeds", proj[1], width)
    if "image_proj.latents" in header.tensors and proj_in is not None and len(proj_in) == 2:
        return IpAdapterInfo(PLUS, family, "hidden", proj_in[1], width)
    if mlp is not None and len(mlp) == 2 and "image_proj.proj.3.weight" in header.tensors:
        return IpAdapterInfo(FULL, family, "hidden", mlp[1], width)
    raise ModelError(
        f"{name} has IP-Adapter tensors but no image projection Marble knows (plain proj, plus latents/proj_in, "
        "or full proj.0/proj.3)."
    )


def inspect_image_encoder(header: SafetensorsHeader, name: str = "this file") -> ImageEncoderInfo:
    """The shape of a CLIP vision model with projection; raise ModelError when the file is not one."""
    if not is_image_encoder(header):
        raise ModelError(
            f"{name} is not a CLIP image encoder: it has no vision_model.* and visual_projection.weight tensors."
        )
    patch = header.shape("vision_model.embeddings.patch_embedding.weight")
    positions = header.shape("vision_model.embeddings.position_embedding.weight")
    fc1 = header.shape("vision_model.encoder.layers.0.mlp.fc1.weight")
    projection = header.shape("visual_projection.weight")
    layers = {int(m[1]) for n in header.tensors if (m := _LAYER.match(n))}
    if patch is None or len(patch) != 4 or positions is None or fc1 is None or projection is None or not layers:
        raise ModelError(f"{name} looks like a CLIP image encoder but misses embedding or layer tensors.")
    side = math.isqrt(positions[0] - 1)  # one position per patch plus the class token
    if side * side != positions[0] - 1:
        raise ModelError(f"{name}: {positions[0]} position embeddings do not make a square grid of patches.")
    return ImageEncoderInfo(
        hidden_size=patch[0], projection_dim=projection[0], layers=max(layers) + 1, intermediate_size=fc1[0],
        patch_size=patch[2], image_size=side * patch[2], channels=patch[1],
    )  # fmt: skip
