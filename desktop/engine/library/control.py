"""Control models without torch: what a ControlNet / Control-LoRA / T2I-Adapter file is, from its header.

A control model is chosen per control unit by its library name and never downloaded. Its tensors say
which kind it is and which base family it was trained for:

- ControlNet, original layout (what A1111's extension and model sites use): `input_blocks.*`,
  `zero_convs.*`, `input_hint_block.*`, often under `control_model.`;
- ControlNet, diffusers layout (`diffusion_pytorch_model.safetensors`): `controlnet_cond_embedding.*`,
  `controlnet_down_blocks.*`;
- Control-LoRA (Stability's "control-lora"): a `lora_controlnet` marker tensor and LoRA halves; Flux.1's
  (BFL's Canny / Depth dev LoRAs: library/flux_control_lora.py), layout "bfl" or "diffusers";
- T2I-Adapter: `adapter.conv_in` / `adapter.body.*` (diffusers) or `conv_in` / `body.*` (original).
- IP-Adapter (`image_proj.*` + `ip_adapter.*`) and the CLIP image encoders IP-Adapters read with
  (`vision_model.*` + `visual_projection.weight`): desktop/engine/library/ip_adapter.py.
- insightface's ONNX face detector (SCRFD) and recognizer (ArcFace), which FaceID IP-Adapters need: stored
  as the .onnx files they ship as, annotators of the tasks "face_detector" / "face_recognizer"
  (desktop/engine/library/onnx_file.py).

- DiT ControlNets, diffusers layout: `controlnet_x_embedder` and `controlnet_blocks.*` beside their base's
  input layers: Flux.1's (InstantX, Shakker-Labs, the Union models) `x_embedder` + `context_embedder`, a
  union model adding `controlnet_mode_embedder` (which kind of control image it reads); Qwen-Image's
  (InstantX's Union) `img_in` + `txt_in`. XLabs' Flux.1 ControlNets, in their own (BFL's) names
  (`double_blocks.*`, `pos_embed_input`, `input_hint_block.N`: layout "xlabs", converted when loaded) or in
  diffusers' (`input_hint_block.conv_in`), encode the control picture themselves. Z-Image's (alibaba-pai's
  Fun ControlNet Union): `control_all_x_embedder.*` + `control_layers.N.after_proj`. SD3's (InstantX's for
  SD3 medium; Stability's SD3.5 Large blur / canny / depth, in diffusers' names or Stability's own, layout
  "sai"): `pos_embed_input.proj` + `controlnet_blocks.*` + `transformer_blocks.*`.

Family: SDXL ControlNets carry the added (size/crop) embedding (`label_emb` / `add_embedding`) and a
2048-wide cross-attention; SD 1.x reads 768-wide CLIP-L states, SD 2.x 1024-wide OpenCLIP states.
T2I-Adapters have no attention: SDXL's unshuffles the image by 16 (in-channels 3*256), SD 1.x's by 8 (3*64).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import ModelError
from desktop.engine.library.annotator import inspect_annotator
from desktop.engine.library.checkpoint import SafetensorsHeader
from desktop.engine.library.flux_control_lora import control_lora_layout
from desktop.engine.library.ip_adapter import (
    inspect_image_encoder,
    inspect_ip_adapter,
    inspect_xlabs_flux_ip_adapter,
    is_image_encoder,
    is_ip_adapter,
    is_xlabs_flux_ip_adapter,
    variant_label,
)
from desktop.engine.library.onnx_file import DETECTOR, RECOGNIZER, FaceModelInfo, inspect_face_model, read_onnx
from desktop.engine.library.redux import inspect_redux, inspect_siglip, is_redux, is_siglip_encoder

CONTROLNET = "controlnet"
CONTROL_LORA = "control-lora"
T2I_ADAPTER = "t2i-adapter"
IP_ADAPTER = "ip-adapter"  # layout: its variant (plain / plus / full / faceid / faceid-plus): library/ip_adapter.py
REDUX = "redux"  # an IP_ADAPTER's layout for Flux.1 Redux (library/redux.py)
IMAGE_ENCODER = "image-encoder"  # the CLIP vision model IP-Adapters read reference images with
# A learned preprocessor's weights (depth, lineart, pose: desktop/engine/library/annotator.py), kept in the
# control library; its layout is the task ("depth", "lineart", "openpose").
ANNOTATOR = "annotator"
_KIND_LABELS = {
    CONTROLNET: "ControlNet", CONTROL_LORA: "Control-LoRA", T2I_ADAPTER: "T2I-Adapter", IP_ADAPTER: "IP-Adapter",
    IMAGE_ENCODER: "image encoder",
}  # fmt: skip
FLUX, QWEN_IMAGE, Z_IMAGE, SD3, SANA = "flux", "qwen-image", "z-image", "sd3", "sana"
# The DiTs whose ControlNets Marble runs (backends/control_dit.py). "sd3": SD3 and SD3.5 alike (which model a
# ControlNet fits is its width: checked when it is shaped).
DIT_CONTROLNET_FAMILIES = (FLUX, QWEN_IMAGE, Z_IMAGE, SD3, SANA)
# A control unit's model naming the loaded model's own control input, not a library file: BFL's Flux.1 Canny /
# Depth dev read the unit's (preprocessed) picture beside the noise (backends/control.py's prepare_built_in).
BUILT_IN = "built-in"


def is_built_in(model: str) -> bool:
    """Whether a control unit's model names BUILT_IN (in any case, as a CLI user or an API client may write it)."""
    return model.strip().casefold() == BUILT_IN


_FAMILY_LABELS = {
    "sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", FLUX: "Flux.1", QWEN_IMAGE: "Qwen-Image", Z_IMAGE: "Z-Image",
    SD3: "SD3", SANA: "Sana",
}  # fmt: skip


# The window's model families (library/native_size.py) whose control models are of one family here.
# Sana Sprint takes none (its pipeline has no ControlNet sibling).
_CONTROL_FAMILY_OF_MODEL = {"flux-dev": FLUX, "flux-schnell": FLUX, "sd3": SD3, QWEN_IMAGE: QWEN_IMAGE,
                            Z_IMAGE: Z_IMAGE, SANA: SANA, "sana-sprint": None}  # fmt: skip


def fits_model(control_family: str | None, model_family: str | None) -> bool:
    """Whether a control model of `control_family` can serve a model of the window's `model_family`
    ("sd1", "sdxl-turbo", "flux-dev", "sd3" ...: library/native_size.py). True when either is unknown (a
    model of no released family, the demo model), so nothing usable is hidden."""
    if not control_family or not model_family:
        return True
    if model_family in _CONTROL_FAMILY_OF_MODEL:
        return _CONTROL_FAMILY_OF_MODEL[model_family] == control_family
    unet = model_family.split("-")[0]  # a few-step kind rides on its family: "sdxl-turbo"
    return unet == control_family if unet in ("sd1", "sd2", "sdxl") else True


def controlnet_family(dit_family: str) -> str:
    """The control library's family for a loaded DiT's family ("sd3.5" models take "sd3" ControlNets)."""
    return SD3 if dit_family == "sd3.5" else dit_family


def family_label(family: str | None) -> str:
    """How a control model's base family is shown ("SD 1.x", "Flux.1" ...); "" when unknown."""
    return _FAMILY_LABELS.get(family or "", "")
_WIDTH_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_ATTN2_TO_K = re.compile(r".*attn2\.to_k\.(weight|down)$")
# The LDM prefix diffusers' converter strips (desktop/engine/backends/control.py feeds it the rest).
LDM_PREFIX = "control_model."


@dataclass(frozen=True)
class ControlInfo:
    """What a control model's header says."""

    kind: str  # CONTROLNET | CONTROL_LORA | T2I_ADAPTER | IP_ADAPTER | IMAGE_ENCODER | ANNOTATOR
    # "ldm" (original names) | "diffusers" | "sai" (an SD3.5 ControlNet in Stability's names) | "xlabs" (a Flux.1
    # ControlNet in XLabs' own names)
    layout: str
    prefix: str  # the prefix before the layout's names ("control_model.", "adapter." or "")
    family: str | None  # "sd1" | "sd2" | "sdxl" | "flux" | "qwen-image"; None: no released family's shapes
    conditioning_channels: int | None  # channels of the control image the model reads (3 = RGB)
    # An annotator's own label; "union" for a Flux ControlNet reading several kinds, "XLabs" for one encoding its
    # control picture itself, "inpainting" for an inpainting ControlNet (Qwen-Image's, SD3's).
    detail: str = ""

    @property
    def label(self) -> str:
        if self.kind == ANNOTATOR:
            return self.detail
        base = family_label(self.family)
        kind = _KIND_LABELS[self.kind]
        if self.kind == IP_ADAPTER:
            kind = variant_label(self.layout)
        elif self.kind == IMAGE_ENCODER:
            kind = f"{self.layout} {kind}"
        elif self.detail:
            kind = f"{kind} ({self.detail})"
        return f"{base} {kind}".strip()


def inspect_control(header: SafetensorsHeader, name: str = "this file") -> ControlInfo:
    """Kind, layout and family of a control model from its tensor names and shapes; raise if it is none."""
    names = header.tensors
    if any(n.startswith("model.diffusion_model.") for n in names):
        raise ModelError(f"{name} is a whole checkpoint (it has a UNet), not a control model. Import it as a model.")
    if is_ip_adapter(header):
        ip = inspect_ip_adapter(header, name)
        return ControlInfo(IP_ADAPTER, ip.variant, "", ip.family, None)
    if is_xlabs_flux_ip_adapter(header):
        ip = inspect_xlabs_flux_ip_adapter(header, name)
        return ControlInfo(IP_ADAPTER, ip.variant, "", FLUX, None)
    if is_image_encoder(header):
        encoder = inspect_image_encoder(header, name)
        return ControlInfo(IMAGE_ENCODER, encoder.short_name, "", None, None)
    if is_redux(header):  # Flux.1 Redux: an image prompt for Flux, run as an IP-Adapter-like unit
        inspect_redux(header, name)
        return ControlInfo(IP_ADAPTER, REDUX, "", FLUX, None)
    if is_siglip_encoder(header):
        siglip = inspect_siglip(header, name)
        return ControlInfo(IMAGE_ENCODER, siglip.short_name, "", None, None)
    if is_xlabs_controlnet(header):
        return ControlInfo(CONTROLNET, "xlabs", "", FLUX, 3, "XLabs")
    if (family := dit_controlnet_family(header)) is not None:
        detail = "union" if "controlnet_mode_embedder.weight" in names else ""
        if family == FLUX and "input_hint_block.conv_in.weight" in names:
            detail = "XLabs"  # XLabs' kind in diffusers' names
        # An inpainting ControlNet (InstantX's for Qwen-Image, alimama's for SD3): the mask beside the masked
        # source's latents, so its input reads more than its base's.
        if (family == QWEN_IMAGE and _reads_more(header, "controlnet_x_embedder.weight", "img_in.weight", -1)) or (
            family == SD3 and _reads_more(header, "pos_embed_input.proj.weight", "pos_embed.proj.weight", 1)
        ):
            detail = "inpainting"
        layout = "sai" if "transformer_blocks.0.attn.qkv.weight" in names else "diffusers"
        layout = "nvlabs" if "controlnet.0.before_proj.weight" in names else layout
        return ControlInfo(CONTROLNET, layout, "", family, 3, detail)
    if "lora_controlnet" in names:
        return ControlInfo(CONTROL_LORA, "ldm", "", _controlnet_family(header), _hint_channels(header, "", "ldm"))
    if (layout := control_lora_layout(header)) is not None:  # BFL's Canny / Depth LoRAs for Flux.1 dev
        return ControlInfo(CONTROL_LORA, layout, "", FLUX, 3)
    for prefix in (LDM_PREFIX, ""):
        if f"{prefix}input_hint_block.0.weight" in names and f"{prefix}zero_convs.0.0.weight" in names:
            return ControlInfo(
                CONTROLNET, "ldm", prefix, _controlnet_family(header), _hint_channels(header, prefix, "ldm")
            )
    if "controlnet_cond_embedding.conv_in.weight" in names and "controlnet_down_blocks.0.weight" in names:
        channels = _hint_channels(header, "", "diffusers")
        return ControlInfo(CONTROLNET, "diffusers", "", _controlnet_family(header), channels)
    for prefix, layout in (("adapter.", "diffusers"), ("", "ldm")):
        conv_in = header.shape(f"{prefix}conv_in.weight")
        if conv_in is not None and len(conv_in) == 4 and header.has_prefix(f"{prefix}body."):
            family, channels = _adapter_family(conv_in[1])
            return ControlInfo(T2I_ADAPTER, layout, prefix, family, channels)
    annotator = inspect_annotator(header, name)
    if annotator is not None:
        return ControlInfo(ANNOTATOR, annotator.task, "", None, None, annotator.label)
    raise ModelError(
        f"{name} is not a control model: it has none of the ControlNet (input_hint_block / zero_convs, or "
        "controlnet_cond_embedding), Control-LoRA (lora_controlnet), T2I-Adapter (conv_in + body), IP-Adapter "
        "(image_proj + ip_adapter) or CLIP image encoder (vision_model + visual_projection) tensors, nor a depth, "
        "lineart or OpenPose preprocessor's."
    )


def dit_controlnet_family(header: SafetensorsHeader) -> str | None:
    """"flux", "qwen-image", "z-image", "sd3" or "sana" for a DiT ControlNet in diffusers' layout (whose transformer
    blocks would also pass for a LoRA's names), else None.

    Z-Image's (alibaba-pai's Fun ControlNet Union, 1.0 to 2.1) are published in diffusers' names: control
    blocks (`control_layers.N`, each with its `after_proj`) over the control picture's own patch embedder."""
    names = header.tensors
    if header.has_prefix("control_all_x_embedder.") and "control_layers.0.after_proj.weight" in names:
        return Z_IMAGE
    if "input_block.weight" in names and header.has_prefix("controlnet_blocks.") and "caption_norm.weight" in names:
        # Sana's (NVIDIA's, in diffusers' names: a copy of its first blocks over the control picture's latents,
        # added to the noise's through `input_block`).
        return SANA
    if "controlnet.0.before_proj.weight" in names and header.has_prefix("controlnet.0.copied_block."):
        # The same in NVlabs' names (their .pth checkpoint converted: the Sana model beside its ControlNet).
        return SANA
    if "pos_embed_input.proj.weight" in names and header.has_prefix("controlnet_blocks.") and header.has_prefix(
        "transformer_blocks."
    ):
        # SD3's: InstantX's (SD3 medium) and Stability's SD3.5 Large ones, in diffusers' names or Stability's own
        # (`attn.qkv`, `mlp.fc1`, `adaLN_modulation`).
        return SD3
    if "controlnet_x_embedder.weight" not in names or not header.has_prefix("controlnet_blocks."):
        return None
    if "x_embedder.weight" in names and "context_embedder.weight" in names:
        return FLUX
    if "img_in.weight" in names and "txt_in.weight" in names:
        return QWEN_IMAGE
    return None


def is_xlabs_controlnet(header: SafetensorsHeader) -> bool:
    """XLabs' Flux.1 ControlNets (canny, depth, hed ... v3) in their own names: Black Forest Labs' double blocks
    (which would also pass for a LoRA's or a Flux model's names) over a small convolutional encoder of the
    control picture (`input_hint_block`) and its input layer (`pos_embed_input`)."""
    return "pos_embed_input.weight" in header.tensors and header.has_prefix("double_blocks.")


def _reads_more(header: SafetensorsHeader, layer: str, than: str, axis: int) -> bool:
    """Whether the layer `layer` reads more inputs than the layer `than` (their weights' `axis`: -1 for a linear
    layer, 1 for a convolution)."""
    ours, theirs = header.tensors.get(layer), header.tensors.get(than)
    return ours is not None and theirs is not None and ours.shape[axis] > theirs.shape[axis]


def inspect_onnx_control(path: Path, name: str = "this file") -> ControlInfo:
    """An ONNX file in the control library: insightface's face detector or recognizer, as an annotator whose
    layout is its task; ModelError for any other ONNX graph."""
    face = inspect_face_model(read_onnx(path, name), name)
    return ControlInfo(ANNOTATOR, face.task, "", None, None, face.label)


def find_face_model(folder: Path, task: str) -> tuple[Path, FaceModelInfo]:
    """The control library's first face model (by name) doing `task` (DETECTOR | RECOGNIZER), with what its
    graph says (input size, normalisation); ModelError saying what to import when there is none.

    Each .onnx file is read whole (its inputs and outputs follow the weights): callers keep the result."""
    candidates = sorted(folder.glob("*.onnx"), key=lambda p: p.name.casefold()) if folder.is_dir() else []
    for path in candidates:
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            face = inspect_face_model(read_onnx(path, path.name), path.name)
        except ModelError:
            continue  # a damaged or foreign file is reported when it is imported or looked at
        if face.task == task:
            return path, face
    what, files = {
        DETECTOR: ("face detector", "SCRFD: det_10g.onnx from buffalo_l, or scrfd_10g_bnkps.onnx from antelopev2"),
        RECOGNIZER: ("face recognizer", "ArcFace: w600k_r50.onnx from buffalo_l, or glintr100.onnx from antelopev2"),
    }[task]  # fmt: skip
    raise ModelError(
        f"FaceID needs a {what}, and the control library has none: import insightface's ({files}) with "
        "marble controls import FILE."
    )


def _controlnet_family(header: SafetensorsHeader) -> str | None:
    names = header.tensors
    if any(".label_emb." in f".{n}" or n.startswith("add_embedding.") for n in names):
        return "sdxl"
    for tensor_name in sorted(names):
        if _ATTN2_TO_K.match(tensor_name):
            shape = names[tensor_name].shape
            return _WIDTH_FAMILIES.get(shape[1]) if len(shape) == 2 else None
    return None


def _hint_channels(header: SafetensorsHeader, prefix: str, layout: str) -> int | None:
    first = "input_hint_block.0.weight" if layout == "ldm" else "controlnet_cond_embedding.conv_in.weight"
    shape = header.shape(prefix + first)
    return shape[1] if shape is not None and len(shape) == 4 else None


def _adapter_family(in_channels: int) -> tuple[str | None, int | None]:
    # The adapter pixel-unshuffles the control image: by 8 for SD 1.x (latent size), by 16 for SDXL.
    for family, factor in (("sdxl", 256), ("sd1", 64)):
        if in_channels % factor == 0 and in_channels // factor in (1, 3):
            return family, in_channels // factor
    return None, None
