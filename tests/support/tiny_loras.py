"""Tiny LoRA files in the formats people download, for the tiny models of `tiny_models`.

Key names follow the real formats, written out here rather than produced by a library:
- kohya (sd-scripts, most Civitai files): `lora_unet_<module path with _>.lora_down.weight` /
  `.lora_up.weight` / `.alpha`, text encoders as `lora_te_` (SD 1/2) or `lora_te1_`/`lora_te2_` (SDXL),
  named after the original CLIP module path `text_model.encoder.layers.N...`;
- diffusers/PEFT (`save_lora_weights`): `unet.<module path>.lora_A.weight` / `.lora_B.weight` and
  `text_encoder.text_model.<...>`.
Values are seeded random and large enough to change a tiny model's image visibly at weight 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")  # fmt: skip
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
RANK = 4


def _linear_modules(module: torch.nn.Module, targets: tuple[str, ...]) -> list[tuple[str, torch.nn.Linear]]:
    return [
        (name, m) for name, m in module.named_modules() if name.endswith(targets) and isinstance(m, torch.nn.Linear)
    ]


def _clip_path(name: str) -> str:
    # transformers 5 dropped CLIPTextModel's inner `text_model`; LoRA files keep the original path.
    return name if name.startswith("text_model.") else f"text_model.{name}"


def _pair(layer: torch.nn.Linear, generator: torch.Generator, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, layer.in_features, generator=generator) * scale
    up = torch.randn(layer.out_features, RANK, generator=generator) * scale
    return down, up


def kohya_state_dict(pipe, seed: int = 0, scale: float = 0.5, text: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def add(prefix: str, path: str, layer: torch.nn.Linear) -> None:
        key = prefix + path.replace(".", "_")
        down, up = _pair(layer, generator, scale)
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(float(RANK))

    for name, layer in _linear_modules(pipe.unet, UNET_TARGETS):
        add("lora_unet_", name, layer)
    if text:
        sdxl = getattr(pipe, "text_encoder_2", None) is not None
        for name, layer in _linear_modules(pipe.text_encoder, TEXT_TARGETS):
            add("lora_te1_" if sdxl else "lora_te_", _clip_path(name), layer)
        if sdxl:
            for name, layer in _linear_modules(pipe.text_encoder_2, TEXT_TARGETS):
                add("lora_te2_", _clip_path(name), layer)
    return tensors


def sgm_unet_name(name: str, layers_per_block: int = 2) -> str:
    """A diffusers UNet attention path in the original (SGM) numbering kohya uses for SDXL LoRAs.

    down_blocks.B.attentions.L -> input_blocks.(1 + B*(layers+1) + L).1, mid_block.attentions.0 ->
    middle_block.1, up_blocks.B.attentions.L -> output_blocks.(B*(layers+2) + L).1 (up blocks have one
    layer more).
    """
    parts = name.split(".")
    if parts[0] == "down_blocks":
        block, layer = int(parts[1]), int(parts[3])
        head = f"input_blocks.{1 + block * (layers_per_block + 1) + layer}.1"
        rest = parts[4:]
    elif parts[0] == "mid_block":
        head, rest = "middle_block.1", parts[3:]
    else:
        block, layer = int(parts[1]), int(parts[3])
        head = f"output_blocks.{block * (layers_per_block + 1) + layer}.1"
        rest = parts[4:]
    return ".".join([head, *rest])


def kohya_sgm_sdxl_state_dict(pipe, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """The same values as `kohya_state_dict(pipe, seed, scale)`, with UNet layers named as kohya names SDXL's."""
    tensors = kohya_state_dict(pipe, seed, scale)
    renamed: dict[str, torch.Tensor] = {}
    unet_paths = {"lora_unet_" + name.replace(".", "_"): name for name, _ in _linear_modules(pipe.unet, UNET_TARGETS)}
    for key, value in tensors.items():
        stem, _, suffix = key.partition(".")
        if stem in unet_paths:
            key = "lora_unet_" + sgm_unet_name(unet_paths[stem]).replace(".", "_") + "." + suffix
        renamed[key] = value
    return renamed


def peft_state_dict(pipe, seed: int = 0, scale: float = 0.5, text: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in _linear_modules(pipe.unet, UNET_TARGETS):
        down, up = _pair(layer, generator, scale)
        tensors[f"unet.{name}.lora_A.weight"] = down
        tensors[f"unet.{name}.lora_B.weight"] = up
    if text:
        for name, layer in _linear_modules(pipe.text_encoder, TEXT_TARGETS):
            down, up = _pair(layer, generator, scale)
            tensors[f"text_encoder.{_clip_path(name)}.lora_A.weight"] = down
            tensors[f"text_encoder.{_clip_path(name)}.lora_B.weight"] = up
    return tensors


def save_lora(tensors: dict[str, torch.Tensor], path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def standard_width_kohya(context_dim: int, text_width: int | None, sdxl: bool = False) -> dict[str, torch.Tensor]:
    """Header-shaped stand-ins for real-size LoRAs: one UNet cross-attention layer (and text layers)."""
    block = "lora_unet_input_blocks_4_1" if sdxl else "lora_unet_down_blocks_0_attentions_0"
    tensors = {
        f"{block}_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(2, context_dim),
        f"{block}_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(8, 2),
        f"{block}_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(2.0),
    }
    if text_width is not None:
        prefix = "lora_te1_" if sdxl else "lora_te_"
        tensors[f"{prefix}text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(2, text_width)
        tensors[f"{prefix}text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(text_width, 2)
    if sdxl:
        tensors["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(2, 1280)
        tensors["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(1280, 2)
    return tensors
