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
- FaceID: an MLP (`image_proj.proj.0`, `proj.2`, `norm`) from a 512-wide ArcFace identity embedding of the
  reference face (insightface's recognizer, e.g. buffalo_l's w600k_r50): no CLIP encoder at all;
- FaceID Plus: that MLP's tokens as the queries of a perceiver resampler (`image_proj.perceiver_resampler.*`)
  over the CLIP hidden states of the aligned face crop, so it also needs an encoder of `proj_in`'s width
  (ViT-H, 1280). Plus v2 adds the identity tokens back after the resampler (diffusers' `shortcut`); v1 and
  v2 have the same tensors. A1111's extension and ComfyUI IPAdapter plus tell them by the file name ("v2" /
  "plusv2" in it), and so does Marble (`faceid_v2`): the user chooses by the library name (`rename`).
FaceID files also carry a LoRA for the UNet's own attention (`N.to_q_lora.*`); h94 ships it separately too
(ip-adapter-faceid_sd15_lora.safetensors), and as in A1111 it is applied from the LoRA library, not here.

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

PLAIN, PLUS, FULL, FACEID, FACEID_PLUS = "plain", "plus", "full", "faceid", "faceid-plus"
XLABS = "xlabs"  # XLabs' Flux.1 IP-Adapter (flux-ip-adapter, -v2)
_VARIANT_LABELS = {
    PLAIN: "IP-Adapter", PLUS: "IP-Adapter Plus", FULL: "IP-Adapter Full", FACEID: "IP-Adapter FaceID",
    FACEID_PLUS: "IP-Adapter FaceID Plus", "redux": "Redux", XLABS: "IP-Adapter (XLabs)",
}  # fmt: skip
# XLabs' Flux.1 IP-Adapter files: the image projection and, in each double block, the image tokens' keys and values.
XLABS_PROJECTION = "ip_adapter_proj_model.proj.weight"
XLABS_KEYS = ".processor.ip_adapter_double_stream_k_proj.weight"
FACE_VARIANTS = (FACEID, FACEID_PLUS)
# What a FaceID adapter reads instead of (or besides) CLIP: insightface's face models, as users have them.
FACE_MODELS = (
    "insightface's buffalo_l det_10g.onnx (detector) and w600k_r50.onnx (recognizer), or antelopev2's "
    "scrfd_10g_bnkps.onnx and glintr100.onnx"
)
NO_ENCODER = ""  # IpAdapterInfo.encoder_output of a FaceID adapter: it reads no CLIP encoder
_WIDTH_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
# The released encoders by width: OpenAI's ViT-L/14, OpenCLIP's ViT-H/14 and ViT-bigG/14.
_ENCODER_NAMES = {1024: "ViT-L", 1280: "ViT-H", 1664: "ViT-bigG"}
_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class IpAdapterInfo:
    """What an IP-Adapter's header says: variant, family and the encoder it needs."""

    variant: str  # PLAIN | PLUS | FULL | FACEID | FACEID_PLUS | XLABS
    family: str | None  # "sd1" | "sd2" | "sdxl" | "flux" (XLABS); None for widths no released family has
    # Which encoder output it reads ("image_embeds" = the projection, "hidden" = the hidden states, NO_ENCODER
    # = none) and how wide that output must be: the encoder is picked from the library by these.
    encoder_output: str
    encoder_width: int
    attention_width: int | None  # the base model's cross-attention width `to_k_ip` reads
    face_width: int = 0  # FaceID: the identity embedding's width `proj.0` reads (512 for insightface's ArcFace)

    @property
    def variant_label(self) -> str:
        return _VARIANT_LABELS[self.variant]

    @property
    def reads_faces(self) -> bool:
        return self.variant in FACE_VARIANTS


def variant_label(variant: str) -> str:
    return _VARIANT_LABELS.get(variant, f"IP-Adapter {variant}")


def runs_as(fmt: str, name: str) -> str | None:
    """How a control library entry of format `fmt` named `name` runs, where its name decides (FaceID Plus)."""
    if fmt != f"ip-adapter ({FACEID_PLUS})":
        return None
    if faceid_v2(name):
        return "FaceID Plus v2 (the name says v2; rename it without v2 for v1)"
    return "FaceID Plus v1 (rename it with v2 in the name for Plus v2)"


def faceid_v2(name: str) -> bool:
    """Whether a FaceID Plus adapter runs as Plus v2 (the identity shortcut): by its name, as A1111's
    extension decides ("v2" in the model name) — the tensors of v1 and v2 are the same."""
    return "v2" in name.casefold()


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


def is_xlabs_flux_ip_adapter(header: SafetensorsHeader) -> bool:
    """XLabs' Flux.1 IP-Adapter (`ip_adapter_proj_model.*` + `double_blocks.N.processor.ip_adapter_double_stream_*`),
    whose block names would also pass for an XLabs LoRA's."""
    return XLABS_PROJECTION in header.tensors and any(name.endswith(XLABS_KEYS) for name in header.tensors)


def inspect_xlabs_flux_ip_adapter(header: SafetensorsHeader, name: str = "this file") -> IpAdapterInfo:
    """XLabs' Flux.1 IP-Adapter: it reads a CLIP encoder's projected embedding (OpenAI's ViT-L/14: 768 wide) and
    feeds its tokens to the double blocks' attention at the text width (`attention_width`: 4096 for Flux.1)."""
    projection = header.shape(XLABS_PROJECTION)
    keys = header.shape(next(n for n in sorted(header.tensors) if n.endswith(XLABS_KEYS)))
    if projection is None or len(projection) != 2 or keys is None or len(keys) != 2:
        raise ModelError(f"{name} looks like XLabs' Flux.1 IP-Adapter but its projection or key tensors are not 2-D.")
    return IpAdapterInfo(XLABS, "flux", "image_embeds", projection[1], keys[1])


def is_image_encoder(header: SafetensorsHeader) -> bool:
    return "visual_projection.weight" in header.tensors and header.has_prefix("vision_model.")


def inspect_ip_adapter(header: SafetensorsHeader, name: str = "this file") -> IpAdapterInfo:
    """Variant, family and needed encoder of an IP-Adapter; raise ModelError naming what is wrong."""
    if not is_ip_adapter(header):
        raise ModelError(f"{name} is not an IP-Adapter: it has no image_proj.* and ip_adapter.* tensors.")
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
    if mlp is not None and len(mlp) == 2 and "image_proj.norm.weight" in header.tensors:
        # FaceID: proj.0 reads the identity embedding; Plus resamples the CLIP hidden states of the face crop.
        resampler = header.shape("image_proj.perceiver_resampler.proj_in.weight")
        if header.has_prefix("image_proj.perceiver_resampler."):
            if resampler is None or len(resampler) != 2:
                raise ModelError(f"{name} is an IP-Adapter FaceID Plus without its resampler's proj_in tensor.")
            return IpAdapterInfo(FACEID_PLUS, family, "hidden", resampler[1], width, mlp[1])
        return IpAdapterInfo(FACEID, family, NO_ENCODER, 0, width, mlp[1])
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
