"""LoRAs without torch: find them by name, read what they fit from their header, parse prompt tags.

A LoRA file is untrusted input like any model: it is judged by its safetensors header (tensor names and
shapes), and a name from a prompt (`<lora:name:0.8>`), a PNG or a header is looked up in the LoRA folder's
listing, never joined into a path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.catalog import find_by_name
from desktop.engine.library.checkpoint import SafetensorsHeader, read_safetensors_header, sniff_file_type
from desktop.engine.library.control import dit_controlnet_family, inspect_control, is_xlabs_controlnet
from desktop.engine.library.flux_control_lora import control_lora_layout
from desktop.engine.library.ip_adapter import is_xlabs_flux_ip_adapter
from desktop.engine.request import MAX_LORA_WEIGHT, LoraRef

T = TypeVar("T")

# Cross-attention context width of each base family: what the UNet's attn2.to_k/to_v read.
_FAMILY_BY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_FAMILY_BY_TEXT_WIDTH = {768: "sd1", 1024: "sd2"}
FAMILY_LABELS = {
    "sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "flux": "Flux.1", "sd3": "SD3/SD3.5", "qwen-image": "Qwen-Image",
    "qwen-image-2.1": "Qwen-Image 2.1", "z-image": "Z-Image", "krea2": "Krea 2", "flux2": "Flux.2",
    "lumina2": "Lumina Image 2.0", "ernie-image": "ERNIE-Image", "longcat-image": "LongCat-Image",
    "ovis-image": "Ovis-Image", "hidream-i1": "HiDream-I1", "auraflow": "AuraFlow", "sana": "Sana",
    "pixart": "PixArt", "flux3": "FLUX.3",
}  # fmt: skip
# Base models whose LoRAs carry another family's layer names, so are detected as that family's, and the formats they
# come in: LongCat-Image's and Ovis-Image's blocks are Flux.1's, named as diffusers names them (their loader refuses a
# LoRA that reaches past their blocks: a Flux.1 one; backends/flux_like_loras.py).
_NAMED_AS = {"longcat-image": ("flux", ("peft", "diffusers")), "ovis-image": ("flux", ("peft", "diffusers")),
             # PixArt's attention layers have Sana's names (`attn1`, `attn2`): a LoRA of those alone reads as Sana's.
             "pixart": ("sana", ("peft", "diffusers", "kohya"))}
# Released transformer widths: Flux.1 3072; SD3/SD3.5 medium 1536, SD3.5 large 2432.
_FLUX_WIDTH = 3072

# A1111 extra-network syntax; `lyco` is the LyCORIS extension's spelling of the same thing. Extra
# fields after the weight (`<lora:name:0.8:0.5>`, text-encoder/UNet split) are accepted and ignored.
_TAG = re.compile(r"<(?:lora|lyco):([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]{2,}")
# LyCORIS kinds by the tensor-name suffixes only they use.
_LYCORIS_MARKS = (
    ("loha", {"hada_w1_a", "hada_w1_b"}),
    ("lokr", {"lokr_w1", "lokr_w1_a", "lokr_w2", "lokr_w2_a"}),
    ("ia3", {"on_input"}),
    ("full", {"diff"}),
)


# --------------------------------------------------------------------------------------------------
# What a LoRA fits


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file's header says about it. Widths are None where the file has no such layers."""

    format: str  # "kohya" | "peft" | "diffusers" | "xlabs"
    family: str | None  # "sd1" | "sd2" | "sdxl" | "flux" | "sd3", or None for a width no released model has
    context_dim: int | None  # UNet cross-attention input width (768 SD1, 1024 SD2, 2048 SDXL)
    text_width: int | None  # first text encoder's hidden width
    text_width_2: int | None  # SDXL's second text encoder's hidden width
    unet: bool
    text_encoder: bool
    tensors: int
    # "lora", or the LyCORIS kind ("loha", "lokr", "ia3", "full"), which Marble merges into the weights.
    algorithm: str = "lora"
    # A diffusion-transformer LoRA's block width (the input of its attention layers), else None.
    transformer_width: int | None = None

    @property
    def label(self) -> str:
        return FAMILY_LABELS.get(self.family or "", "unknown base model")


def inspect_lora(header: SafetensorsHeader, name: str = "this file") -> LoraInfo:
    """Format and base architecture of a LoRA from tensor names and shapes; raise if it is no LoRA."""
    names = list(header.tensors)
    if control_lora_layout(header) is not None:
        # Loaded as a plain LoRA it would widen the model's input layer for good: it goes in a control unit.
        raise ModelError(
            f"{name} is a Flux.1 Control-LoRA (BFL's Canny / Depth dev LoRA): import it as a control model "
            "(marble controls import FILE) and use it in a control unit with its picture."
        )
    if dit_controlnet_family(header) is not None or is_xlabs_controlnet(header) or is_xlabs_flux_ip_adapter(header):
        # A DiT ControlNet's transformer blocks (or XLabs' IP-Adapter's block processors) have the names a LoRA's
        # layers sit on, and its weights would pass for a LoRA's.
        raise ModelError(
            f"{name} is a {inspect_control(header, name).label}, not a LoRA: import it as a control model (marble "
            "controls import FILE) and use it in a control unit with its picture."
        )
    algorithm = _lycoris_algorithm(names)
    dit = _inspect_dit_lora(header, names)
    if dit is not None:
        if algorithm is not None:
            raise ModelError(
                f"{name} is a LyCORIS file for {dit.label}; Marble applies only plain LoRA files to those models."
            )
        return dit
    if any(n.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for n in names):
        fmt = "kohya"
    elif any(".lora_A." in n or ".lora_B." in n for n in names):
        fmt = "peft"
    elif any(".lora.down." in n or "_lora.down." in n for n in names):
        fmt = "diffusers"
    else:
        raise ModelError(f"{name} is not a LoRA: it has none of the layer names of kohya or diffusers/PEFT LoRA files.")
    te2 = [n for n in names if n.startswith(("lora_te2_", "text_encoder_2."))]
    te1 = [n for n in names if n.startswith(("lora_te_", "lora_te1_", "text_encoder."))]
    unet = [n for n in names if n not in te1 and n not in te2]

    if algorithm is not None and fmt != "kohya":
        raise ModelError(f"{name} is a LyCORIS file with layer names Marble cannot place (not kohya's lora_unet_...).")
    width = _first_width if algorithm is None else _first_lycoris_width
    context = width(header, unet, _is_context_down)
    text_width = width(header, te1, _is_q_proj_down)
    text_width_2 = width(header, te2, _is_q_proj_down)
    sgm_names = any(n.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_")) for n in unet)
    if te2 or context == 2048 or (sgm_names and context is None):
        # kohya writes SDXL UNet layers by their original (SGM) names, SD 1/2 ones by diffusers names.
        family: str | None = "sdxl"
    elif context is not None:
        family = _FAMILY_BY_CONTEXT.get(context)
    else:
        family = _FAMILY_BY_TEXT_WIDTH.get(text_width or 0)
    return LoraInfo(
        format=fmt,
        family=family,
        context_dim=context,
        text_width=text_width,
        text_width_2=text_width_2,
        unet=bool(unet),
        text_encoder=bool(te1 or te2),
        tensors=len(names),
        algorithm=algorithm or "lora",
    )


# Flux.1 and SD3 LoRAs in the layouts diffusers converts (docs/model-families.md): kohya/sd-scripts
# (`lora_unet_double_blocks_0_img_attn_qkv`), XLabs (`double_blocks.0.processor.qkv_lora1`), and
# diffusers/PEFT/ai-toolkit names (`transformer.single_transformer_blocks.0.attn.to_q.lora_A`).
_FLUX_KOHYA = ("lora_unet_double_blocks_", "lora_unet_single_blocks_")
_SD3_KOHYA = ("lora_unet_joint_blocks_",)
_TRANSFORMER_PREFIXES = ("transformer.", "base_model.model.", "diffusion_model.")
# Qwen-Image and Z-Image LoRAs in the layouts diffusers converts for them (QwenImageLoraLoaderMixin,
# ZImageLoraLoaderMixin): diffusers/PEFT names, the same under ComfyUI's `diffusion_model.`, and kohya's.
# Qwen-Image's blocks share SD3's and Flux's name (`transformer_blocks.N.attn...`) but only its own have the
# separate image/text MLPs and modulations; Z-Image's (`layers.N.attention...`) are its own.
# Krea 2's blocks: a gated attention (`attn.to_gate`, its makers' `attn.gate` beside `attn.wq`) and a SwiGLU
# feed-forward (`ff.gate`, theirs `mlp.gate`), no other family's.
_KREA2_MARKS = (".attn.to_gate.", ".ff.gate.", ".attn.wq.", ".mlp.gate.")
_KREA2_KOHYA = ("lora_unet_blocks_", "lora_unet_txtfusion_")
# ERNIE-Image's blocks (`layers.N`, as Z-Image's) name their attention `self_attention` and their feed-forward's
# output `mlp.linear_fc2`, no other family's; in kohya's names too (`lora_unet_layers_0_self_attention_to_q`).
_ERNIE_MARKS = (".self_attention.", ".mlp.linear_fc2.", ".mlp.gate_proj.", "_self_attention_", "_mlp_linear_fc2",
                "_mlp_gate_proj")  # fmt: skip
# HiDream-I1's blocks (`double_stream_blocks.N.block`, `single_stream_blocks.N.block`), no other family's; kohya's
# flattened names of them too (backends/lora_forms.py renames those).
_HIDREAM_BLOCKS = ("double_stream_blocks.", "single_stream_blocks.")
_HIDREAM_KOHYA = ("lora_unet_double_stream_blocks_", "lora_unet_single_stream_blocks_")
# AuraFlow's (Pony V7's) joint blocks (`joint_transformer_blocks.N`) and feed-forwards (`ff.linear_1`, `ff.linear_2`,
# `ff.out_projection`: Flux.1's single blocks share its single blocks' name but have none), in diffusers' names and
# kohya's flattened ones (backends/lora_forms.py renames those).
_AURAFLOW_MARKS = (".ff.out_projection.", ".ff.linear_1.", ".ff.linear_2.", ".ff_context.out_projection.")
_AURAFLOW_KOHYA = ("lora_unet_joint_transformer_blocks_",)
# Its makers' names (`double_layers.N`, `single_layers.N`: LoRAs made on ComfyUI's model), dotted or kohya's.
_AURAFLOW_MAKERS = ("double_layers.", "single_layers.", "lora_unet_double_layers_", "lora_unet_single_layers_")
_AURAFLOW_KOHYA_MARKS = ("_ff_out_projection.", "_ff_linear_1.", "_ff_linear_2.")
# Sana's blocks name their attentions `attn1` / `attn2` (SD3.5's `attn` / `attn2`) and their feed-forward's convolutions
# `ff.conv_inverted` / `conv_depth` / `conv_point`, no other family's; kohya's flattened names of them too.
_SANA_MARKS = (".attn1.", ".ff.conv_inverted.", ".ff.conv_depth.", ".ff.conv_point.")
_SANA_KOHYA_MARKS = ("_attn1_", "_ff_conv_inverted", "_ff_conv_depth", "_ff_conv_point")
# PixArt's blocks share Sana's attention names but have a plain feed-forward (`ff.net.0.proj`, `ff.net.2`: SD3's and
# Flux.1's blocks have it too, with `attn`, not `attn1`); diffusers' PixArt trainer saves its LoRAs under the UNet's
# prefix, where no UNet keeps `transformer_blocks` at the top.
_PIXART_TRAINER = "unet.transformer_blocks."
# OneTrainer's PixArt LoRAs: diffusers' modules under `lora_transformer` (dotted, or flattened in its legacy files),
# or its makers' under `transformer.` (OMI files: fused layers split as `attn.qkv.0`; Sana's makers' blocks have
# convolutions in their feed-forward, PixArt's `mlp.fc1`).
_PIXART_ONETRAINER = ("lora_transformer.transformer_blocks.", "lora_transformer_transformer_blocks_")
_PIXART_OMI_MARKS = (".attn.qkv.0.", ".cross_attn.kv_linear.0.", ".cross_attn.q_linear.", ".mlp.fc1.")
_SANA_CONVS = ("conv_inverted", "conv_depth", "conv_point", "inverted_conv", "depth_conv", "point_conv")
_QWEN_KOHYA = ("lora_unet_transformer_blocks_",)
_QWEN_MARKS = (".img_mlp.", ".txt_mlp.", ".img_mod.", ".txt_mod.")
# Qwen-Image 2.1's blocks share those names but have a single stream: a SwiGLU MLP (`img_mlp.gate_layer` /
# `.proj` / `.out`, fused as `img_mlp.gate_up` in LoRAs made on ComfyUI's model; Qwen-Image's is `img_mlp.net.N`)
# and no text MLP, modulation or added projections; its blocks are 4096 wide (Qwen-Image's 3072), which is what
# tells an attention-only LoRA.
_QWEN21_MARKS = (".img_mlp.gate_layer.", ".img_mlp.proj.", ".img_mlp.out.", ".img_mlp.gate_up.", "_img_mlp_gate_layer.",
                 "_img_mlp_proj.", "_img_mlp_out.", "_img_mlp_gate_up.")  # fmt: skip
_QWEN_ONLY = (".txt_mlp.", ".img_mod.", ".txt_mod.", ".add_q_proj.", ".img_mlp.net.", "_txt_mlp_", "_img_mod_",
              "_txt_mod_", "_add_q_proj.", "_img_mlp_net_")  # fmt: skip
_QWEN21_WIDTH = 4096
_Z_IMAGE_KOHYA = ("lora_unet_layers_", "lora_unet_noise_refiner_", "lora_unet_context_refiner_")
_Z_IMAGE_BLOCKS = ("layers.", "noise_refiner.", "context_refiner.")
_LUMINA2_WIDTH = 2304  # Lumina Image 2.0's block width (Z-Image's is 3840)


# FLUX.3's own modules: its per-mode blocks (diffusers' and BFL's names), and its single blocks' separate projections
# and SwiGLU feed-forward (Flux.1's single blocks have a fused `linear1`, Flux.2's `to_qkv_mlp_proj` and no `ff`;
# AuraFlow's single blocks' feed-forward is `ff.linear_1` / `linear_2`).
_FLUX3_LORA = re.compile(r"^(mode_blocks|txt_mode_blocks|content_mode_blocks)\.|"
                         r"^single_transformer_blocks\.\d+\.ff\.linear_(in|out)\.|^single_blocks\.\d+\.(q_proj|mlp_in|attn_out)\.")
# The same in kohya's flattened names (backends/lora_forms.py renames them); Flux.1's single blocks there say `linear1`.
_FLUX3_KOHYA = re.compile(r"^lora_unet_(mode_blocks|txt_mode_blocks|content_mode_blocks)_|"
                          r"^lora_unet_single_transformer_blocks_\d+_ff_linear_(in|out)\.|"
                          r"^lora_unet_single_blocks_\d+_(q_proj|k_proj|v_proj|mlp_in|mlp_out|attn_out)\.")


def _inspect_dit_lora(header: SafetensorsHeader, names: list[str]) -> LoraInfo | None:
    """LoraInfo for a Flux.1 / SD3 LoRA, or None when the names are not those of a transformer LoRA."""
    bare = [_strip_transformer_prefix(n) for n in names]
    te1 = [n for n in names if n.startswith(("lora_te_", "lora_te1_", "text_encoder."))]
    te2 = [n for n in names if n.startswith(("lora_te2_", "text_encoder_2."))]
    if any(_FLUX3_LORA.match(n) for n in bare) or any(_FLUX3_KOHYA.match(n) for n in names):
        # diffusers' FLUX.3 loader reads BFL's names and its own; backends/lora_forms.py renames kohya's.
        fmt, family = ("kohya" if any(n.startswith("lora_unet_") for n in names) else "peft"), "flux3"
    elif any(any(mark in n for mark in _KREA2_MARKS) or n.startswith(("txtfusion.", "text_fusion.")) for n in bare):
        fmt, family = "peft", "krea2"  # diffusers' Krea 2 loader reads its makers' names and its own
    elif any(n.startswith(_KREA2_KOHYA) for n in names):
        fmt, family = "kohya", "krea2"  # musubi-tuner's (backends/families_krea2.py renames them)
    elif any(n.startswith(("layers.", "lora_unet_layers_")) and any(m in n for m in _ERNIE_MARKS) for n in bare):
        # Before Z-Image's, whose blocks share the `layers.N` name (backends/families_ernie.py renames kohya's).
        fmt, family = ("kohya" if any(n.startswith("lora_unet_") for n in names) else "peft"), "ernie-image"
    elif any(n.startswith(_HIDREAM_BLOCKS) for n in bare) or any(n.startswith(_HIDREAM_KOHYA) for n in names):
        fmt, family = ("kohya" if any(n.startswith("lora_unet_") for n in names) else "peft"), "hidream-i1"
    elif any(n.startswith(_AURAFLOW_MAKERS) for n in bare):
        fmt, family = ("kohya" if any(n.startswith("lora_unet_") for n in names) else "peft"), "auraflow"
    elif any(n.startswith("joint_transformer_blocks.") or any(m in n for m in _AURAFLOW_MARKS) for n in bare):
        fmt, family = "peft", "auraflow"
    elif any(n.startswith(_AURAFLOW_KOHYA) or (n.startswith("lora_unet_single_transformer_blocks_") and any(
            m in n for m in _AURAFLOW_KOHYA_MARKS)) for n in names):
        fmt, family = "kohya", "auraflow"
    elif (any(n.startswith(_PIXART_ONETRAINER) for n in names) or any(
            n.startswith("transformer.blocks.") and any(m in n for m in _PIXART_OMI_MARKS) for n in names)) and not any(
            c in n for n in names for c in _SANA_CONVS):  # fmt: skip
        fmt = "kohya" if any(n.startswith(_PIXART_ONETRAINER[1]) for n in names) else "peft"
        family = "pixart"
    elif any(n.startswith(_PIXART_TRAINER) for n in names) or (
            any(n.startswith("transformer_blocks.") and ".attn1." in n for n in bare)
            and any(n.startswith("transformer_blocks.") and ".ff.net." in n for n in bare)):  # fmt: skip
        fmt, family = "peft", "pixart"
    elif any(n.startswith("transformer_blocks.") and any(m in n for m in _SANA_MARKS) for n in bare):
        fmt, family = "peft", "sana"
    elif any(n.startswith(_QWEN_KOHYA) and any(m in n for m in _SANA_KOHYA_MARKS) for n in names):
        fmt, family = "kohya", "sana"
    elif any(n.startswith(_FLUX_KOHYA) for n in names):
        fmt, family = "kohya", "flux"
    elif any(n.startswith(_QWEN_KOHYA) for n in names):
        fmt, family = "kohya", "qwen-image"
    elif any(n.startswith(_Z_IMAGE_KOHYA) for n in names):
        fmt, family = "kohya", "z-image"
    elif any(n.startswith("transformer_blocks.") and any(m in n for m in _QWEN_MARKS) for n in bare):
        fmt, family = "peft", "qwen-image"
    elif any(n.startswith(_Z_IMAGE_BLOCKS) and ".attn." in n for n in bare):
        fmt, family = "peft", "lumina2"  # diffusers' Lumina2Transformer2DModel names (Z-Image's say `attention`)
    elif any(n.startswith(_Z_IMAGE_BLOCKS) and (".attention." in n or ".feed_forward." in n) for n in bare):
        fmt, family = "peft", "z-image"
    elif any(n.startswith(_SD3_KOHYA) for n in names):
        fmt, family = "kohya", "sd3"
    elif any(n.startswith("double_blocks.") and ".processor." in n for n in names):
        fmt, family = "xlabs", "flux"
    elif any(n.startswith(("single_transformer_blocks.", "double_blocks.", "single_blocks.")) for n in bare):
        fmt, family = "peft", "flux"
    elif any(n.startswith(("joint_blocks.", "transformer_blocks.")) for n in bare) and any(
        n.startswith(_TRANSFORMER_PREFIXES) for n in names
    ):
        fmt, family = "peft", "sd3"  # until the width says Flux (a LoRA of Flux's double blocks only)
    else:
        return None
    width = None
    marks = _ATTENTION_INPUTS + (_FLUX3_INPUTS if family == "flux3" else ())
    text_layers = {*te1, *te2}  # their `q_proj` layers read the text encoder's width, not the transformer's
    for tensor, short in sorted(zip(names, bare, strict=True)):
        if tensor in text_layers:
            continue
        shape = header.tensors[tensor].shape
        down = tensor.endswith(("lora_down.weight", ".lora_A.weight", "down.weight"))
        if down and len(shape) == 2 and any(mark in short for mark in marks):
            width = shape[1]
            break
    if fmt == "peft" and family == "sd3" and width == _FLUX_WIDTH:
        family = "flux"
    if family in ("qwen-image", "sd3") and not any(m in n for n in names for m in _QWEN_ONLY):
        if any(m in n for n in names for m in _QWEN21_MARKS) or width == _QWEN21_WIDTH:
            family = "qwen-image-2.1"
    if family == "z-image" and width == _LUMINA2_WIDTH:
        family = "lumina2"  # Lumina Image 2.0 shares Z-Image's original names; its blocks are 2304 wide
    if family == "flux" and _is_flux2_lora(header, names, bare):
        family = "flux2"
    if fmt == "peft" and not any(".lora_A." in n or ".lora_B." in n for n in names):
        fmt = "diffusers"
    return LoraInfo(
        format=fmt, family=family, context_dim=None,
        text_width=_first_width(header, te1, _is_q_proj_down), text_width_2=_first_width(header, te2, _is_q_proj_down),
        unet=len(te1) + len(te2) < len(names), text_encoder=bool(te1 or te2), tensors=len(names),
        transformer_width=width,
    )  # fmt: skip


# The layers whose input is the transformer's width, in each naming (diffusers, BFL/kohya, XLabs, AuraFlow's makers').
# FLUX.3's attention inputs in BFL's and kohya's names, read for its LoRAs only: other families' `q_proj` layers (a
# text encoder's, a text stream's `add_q_proj`) do not read the transformer's width.
_FLUX3_INPUTS = (".q_proj.", "_q_proj.")
_ATTENTION_INPUTS = (".attn.to_q.", "_img_attn_qkv.", "_img_attn_proj.", "_x_block_attn_qkv.", ".qkv_lora1.",
                     ".proj_lora1.", "_linear1.", ".attn.qkv.", ".attention.to_q.", "_attn_to_q.",
                     "_attention_to_q.", ".attention.qkv.", "_attention_qkv.", ".self_attention.to_q.",
                     "_self_attention_to_q.", ".attn1.to_q.", "_attn1_to_q.", ".attn.w2q.", "_attn_w2q.",
                     ".attn.w1q.", "_attn_w1q.")  # fmt: skip


# Flux.2 LoRAs share Flux.1's block names in BFL/kohya/ai-toolkit form. diffusers' names give Flux.2 away by
# its own modules (the single blocks' fused projection, the SwiGLU feed-forward's linear_in/out); BFL names
# by a fused layer's widths: a single block's linear1 holds q, k, v and the MLP input, 3 + 4 widths in
# Flux.1, 3 + 2 x 3 in Flux.2 (SwiGLU, MLP ratio 3); a double block's img_mlp.0 4 and 6.
_FLUX2_MODULES = (".to_qkv_mlp_proj.", ".ff.linear_in.", ".ff.linear_out.", ".ff_context.linear_in.",
                  "_ff_linear_in.", "_to_qkv_mlp_proj.", "stream_modulation")  # fmt: skip
_FLUX2_FUSED = {"linear1": 9, "img_mlp.0": 6, "img_mlp_0": 6, "txt_mlp.0": 6, "txt_mlp_0": 6}


def _is_flux2_lora(header: SafetensorsHeader, names: list[str], bare: list[str]) -> bool:
    if any(mark in name for name in bare for mark in _FLUX2_MODULES):
        return True
    for name in names:
        if not name.endswith((".lora_down.weight", ".lora_A.weight")):
            continue
        stem = name.rsplit(".", 2)[0]
        up = next((f"{stem}.{k}.weight" for k in ("lora_up", "lora_B") if f"{stem}.{k}.weight" in header.tensors), None)
        ratio = next((r for layer, r in _FLUX2_FUSED.items() if stem.endswith(("." + layer, "_" + layer))), None)
        if up is None or ratio is None:
            continue
        down_shape, up_shape = header.tensors[name].shape, header.tensors[up].shape
        if len(down_shape) == 2 and len(up_shape) == 2 and down_shape[1]:
            return up_shape[0] == ratio * down_shape[1]
    return False


def _strip_transformer_prefix(name: str) -> str:
    for prefix in _TRANSFORMER_PREFIXES:
        if name.startswith(prefix):
            return _strip_transformer_prefix(name.removeprefix(prefix))
    return name


def _lycoris_algorithm(names: list[str]) -> str | None:
    suffixes = {name.rpartition(".")[2] for name in names}
    for algorithm, marks in _LYCORIS_MARKS:
        if suffixes & marks:
            return algorithm
    return None


def _first_lycoris_width(header: SafetensorsHeader, names: Iterable[str], wanted: Callable[[str], bool]) -> int | None:
    """The input width of the first wanted layer of a LyCORIS file: what its tensors multiply out to."""
    tensors = header.tensors
    for stem in sorted({n.partition(".")[0] for n in names if wanted(n)}):

        def shape(suffix: str, stem: str = stem) -> tuple[int, ...] | None:
            info = tensors.get(f"{stem}.{suffix}")
            return tuple(info.shape) if info is not None else None

        if (b := shape("hada_w1_b")) and len(b) == 2:
            return b[1]
        if (diff := shape("diff")) and len(diff) == 2:
            return diff[1]
        w1, w2 = shape("lokr_w1") or shape("lokr_w1_b"), shape("lokr_w2") or shape("lokr_w2_b")
        if w1 and w2 and len(w1) == 2 and len(w2) == 2:
            return w1[1] * w2[1]
    return None


def _is_context_down(name: str) -> bool:
    # attn2.to_k / to_v read the text context; their down (A) matrix is (rank, context width).
    # Covers kohya (attn2_to_k), PEFT (attn2.to_k) and old diffusers (attn2.processor.to_k_lora) names.
    lowered = name.replace("_", ".")
    return ".attn2." in lowered and (".to.k." in lowered or ".to.v." in lowered)


def _is_q_proj_down(name: str) -> bool:
    return "q_proj" in name


def _is_down(name: str) -> bool:
    return name.endswith((".lora_down.weight", ".lora_A.weight", "lora.down.weight"))


def _first_width(header: SafetensorsHeader, names: Iterable[str], wanted: Callable[[str], bool]) -> int | None:
    for tensor_name in sorted(names):
        if wanted(tensor_name) and _is_down(tensor_name):
            shape = header.tensors[tensor_name].shape
            if len(shape) == 2:
                return shape[1]
    return None


@dataclass(frozen=True)
class ModelShape:
    """The facts about a loaded model that decide whether a LoRA fits it."""

    family: str
    context_dim: int | None
    text_width: int | None
    text_width_2: int | None
    transformer_width: int | None = None  # a Flux.1 / SD3 transformer's block width


def check_lora_fits(info: LoraInfo, model: ModelShape, lora_name: str, model_name: str) -> None:
    """Refuse a LoRA made for another base model: diffusers would otherwise skip its layers silently."""
    model_label = FAMILY_LABELS.get(model.family, model.family)
    problem = None
    named_as, formats = _NAMED_AS.get(model.family, (None, ()))
    if named_as is not None and info.family == named_as and info.format not in formats:
        problem = f"it is in {info.format}'s {info.label} names, and {model_label} LoRAs come in diffusers' names only"
    elif info.family is not None and info.family not in (model.family, named_as):
        problem = f"it is a LoRA for {info.label} models, and {model_name} is {model_label}"
    elif info.context_dim is not None and model.context_dim is not None and info.context_dim != model.context_dim:
        problem = (
            f"its UNet layers read a text context of width {info.context_dim}, and {model_name}'s UNet "
            f"reads width {model.context_dim}"
        )
    elif (
        info.transformer_width is not None
        and model.transformer_width is not None
        and info.transformer_width != model.transformer_width
    ):
        problem = (
            f"its transformer layers have width {info.transformer_width}, {model_name}'s have {model.transformer_width}"
        )
    elif info.text_width is not None and model.text_width is not None and info.text_width != model.text_width:
        problem = f"its text-encoder layers have width {info.text_width}, {model_name}'s have {model.text_width}"
    elif info.text_width_2 is not None and model.text_width_2 is None:
        problem = f"it has layers for SDXL's second text encoder, which {model_name} does not have"
    elif info.text_width_2 is not None and model.text_width_2 is not None and info.text_width_2 != model.text_width_2:
        problem = (
            f"its second text-encoder layers have width {info.text_width_2}, {model_name}'s have {model.text_width_2}"
        )
    if problem:
        raise ModelError(
            f"The LoRA {lora_name!r} does not fit the selected model: {problem}. Pick a LoRA made for "
            f"{model_label}, or a model it was made for."
        )


# --------------------------------------------------------------------------------------------------
# Prompt tags and command-line values


def split_lora_tags(prompt: str) -> tuple[str, tuple[LoraRef, ...]]:
    """Take `<lora:name:weight>` tags out of a prompt: (text for the encoder, LoRAs in order)."""
    refs: list[LoraRef] = []

    def take(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        refs.append(LoraRef(name, _weight(match.group(2), match.group(0))))
        return ""

    text = _TAG.sub(take, prompt)
    if not refs:
        return prompt, ()
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line), tuple(refs)


def lora_tag_names(prompt: str) -> set[str]:
    """The LoRA names tagged in a prompt, casefolded; never raises (a bad weight is the backend's to report)."""
    return {match.group(1).strip().casefold() for match in _TAG.finditer(prompt)}


def prompt_with_lora_tags(prompt: str, loras: Iterable[LoraRef]) -> str:
    """`prompt` with a `<lora:NAME:WEIGHT>` tag added for each LoRA it does not tag already, as A1111
    writes the LoRAs of an image into its prompt, so that A1111 and Forge apply them again.

    A tag already in the prompt wins over the panel's weight (`merge_loras` puts the prompt's last), so
    that LoRA is not written twice. Tags follow a space, not a comma: taking them out again leaves the
    prompt exactly as it was encoded."""
    tagged = lora_tag_names(prompt)
    tags = [f"<lora:{ref.name}:{ref.weight:g}>" for ref in loras if ref.name.strip().casefold() not in tagged]
    if not tags:
        return prompt
    return " ".join([prompt, *tags]) if prompt.strip() else " ".join(tags)


def _weight(raw: str | None, tag: str) -> float:
    if raw is None or not raw.strip():
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"The LoRA tag {tag} has weight {raw.strip()!r}, which is not a number.") from None
    if not -MAX_LORA_WEIGHT <= value <= MAX_LORA_WEIGHT:
        raise InvalidRequest(
            f"The LoRA tag {tag} has weight {value:g}; use {-MAX_LORA_WEIGHT:g} to {MAX_LORA_WEIGHT:g}."
        )
    return value


def merge_loras(*groups: Iterable[LoraRef]) -> tuple[LoraRef, ...]:
    """One entry per LoRA name (ignoring case), in first-seen order; a later weight wins.

    The prompt's tags come last, so a tag the user typed overrides the panel's weight for that LoRA.
    """
    merged: dict[str, LoraRef] = {}
    for group in groups:
        for ref in group:
            key = ref.name.casefold()
            if key in merged:
                merged[key] = LoraRef(merged[key].name, ref.weight)
            else:
                merged[key] = ref
    return tuple(merged.values())


def parse_lora_arg(value: str) -> LoraRef:
    """`NAME:WEIGHT` or `NAME` (weight 1) from the command line; a name may itself contain colons."""
    name, sep, weight = value.rpartition(":")
    if sep:
        try:
            return LoraRef(name.strip(), float(weight))
        except ValueError:
            pass
    return LoraRef(value.strip(), 1.0)


# --------------------------------------------------------------------------------------------------
# The adapter folders: LoRAs, and textual-inversion embeddings


@dataclass(frozen=True)
class AdapterFile:
    name: str
    path: Path


def file_identity(path: Path) -> tuple[str, int, int]:
    """A file as it is now (resolved path, size, modification time): a file changed in place is another key."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


class HeaderFacts(Generic[T]):
    """What `read` makes of a catalog entry's safetensors header, read once per file as it is (None for a name the
    catalog lacks or a file that is no safetensors): which control units name a Flux.1 Control-LoRA, say."""

    def __init__(self, catalog: AdapterCatalog, read: Callable[[SafetensorsHeader], T]) -> None:
        self._catalog = catalog
        self._read = read
        self._known: dict[tuple[str, int, int], T | None] = {}

    def __call__(self, name: str) -> T | None:
        entry = self._catalog.find(name.strip())
        if entry is None:
            return None
        key = file_identity(entry.path)
        if key not in self._known:
            safetensors = sniff_file_type(entry.path) == "safetensors"
            header = read_safetensors_header(entry.path, name=entry.name) if safetensors else None
            self._known[key] = self._read(header) if header is not None else None
        return self._known[key]


class AdapterCatalog:
    """The `.safetensors` files of one single-file adapter folder (the LoRAs, or the embeddings), found by
    name only. `get` and `inspect` speak of LoRAs: only LoRAs are looked up by a name from text and read
    for their fit; the embeddings folder is only listed.

    Unlike ModelCatalog.resolve there is no path fallback: every adapter name reaches the engine from
    text (prompt tags, PNG metadata, a panel row), so a name is only ever compared with this listing.
    """

    def __init__(self, folder: Path, noun: str = "LoRA", command: str = "loras") -> None:
        self._folder = folder
        # What `get` calls an entry it cannot find, and the import command it suggests (VAEs use this too).
        self._noun = noun
        self._command = command

    @property
    def folder(self) -> Path:
        return self._folder

    def entries(self) -> list[AdapterFile]:
        if not self._folder.is_dir():
            return []
        found = []
        for child in sorted(self._folder.iterdir(), key=lambda p: p.name.casefold()):
            if child.name.startswith(".") or not child.is_file() or child.suffix.lower() != ".safetensors":
                continue
            found.append(AdapterFile(child.stem, child))
        return found

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def headers(self) -> Iterator[tuple[AdapterFile, SafetensorsHeader]]:
        """Each entry (sorted by name) with its header; a file that is not safetensors or cannot be read is
        passed over (it is reported when it is imported or used by name)."""
        for entry in self.entries():
            if sniff_file_type(entry.path) != "safetensors":
                continue
            try:
                yield entry, read_safetensors_header(entry.path, name=entry.name)
            except ModelError:
                continue

    def find(self, name: str) -> AdapterFile | None:
        return find_by_name(self.entries(), name)

    def get(self, name: str) -> AdapterFile:
        """The entry for a name, or a ModelError that says which entries exist."""
        entry = self.find(name)
        if entry is None:
            known = ", ".join(self.names()) or "none yet"
            raise ModelError(
                f"No {self._noun} named {name!r} in the library ({self._folder}; {self._noun}s there: {known}). "
                f"Import it first (marble {self._command} import FILE)."
            )
        return entry

    def inspect(self, entry: AdapterFile) -> LoraInfo:
        kind = sniff_file_type(entry.path)
        if kind != "safetensors":
            raise ModelError(
                f"The LoRA {entry.name!r} is not a safetensors file ({kind}); a pickled file can run code when "
                "loaded, so Marble refuses it. Get the .safetensors version."
            )
        return inspect_lora(read_safetensors_header(entry.path), entry.name)
