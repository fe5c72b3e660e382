"""Tiny random LoRAs for the tiny Flux.1 and SD3 transformers of `tiny_dit`, in the layouts people share.

- diffusers/PEFT (ai-toolkit, `save_lora_weights`): `transformer.<module>.lora_A.weight` / `.lora_B.weight`;
- kohya/sd-scripts for Flux: Black Forest Labs' module names with `_`, `lora_unet_double_blocks_0_img_attn_qkv`
  `.lora_down.weight` / `.lora_up.weight` / `.alpha` (the fused qkv and linear1 that diffusers splits);
- XLabs for Flux: `double_blocks.0.processor.qkv_lora1.down.weight` / `.up.weight`.
Written out here from the formats' key names, not produced by a library. Seeded random values, large
enough to change a tiny model's image at weight 1.
"""

from __future__ import annotations

import torch

RANK = 4
PEFT_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")


def _pair(inputs: int, outputs: int, generator: torch.Generator, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(RANK, inputs, generator=generator) * scale, torch.randn(
        outputs, RANK, generator=generator
    ) * scale


def peft_lora(transformer: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A LoRA on every attention projection of a Flux / SD3 transformer, in diffusers' names."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if name.endswith(PEFT_TARGETS) and isinstance(module, torch.nn.Linear):
            down, up = _pair(module.in_features, module.out_features, generator, scale)
            tensors[f"transformer.{name}.lora_A.weight"] = down
            tensors[f"transformer.{name}.lora_B.weight"] = up
    return tensors


def flux_kohya_lora(transformer: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """sd-scripts' Flux LoRA: the double blocks' fused qkv and output projections and the single blocks'
    linear2, with an alpha of half the rank. Not linear1: diffusers splits its fused q/k/v/MLP output
    at FLUX.1's own widths (3072 x 3 + 12288), which a tiny model does not have."""
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    mlp = transformer.single_transformer_blocks[0].proj_mlp.out_features
    generator = torch.Generator().manual_seed(seed)
    tensors = {}

    def add(module: str, inputs: int, outputs: int) -> None:
        down, up = _pair(inputs, outputs, generator, scale)
        key = f"lora_unet_{module}"
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(RANK / 2)})  # fmt: skip

    for i in range(config.num_layers):
        for stream in ("img", "txt"):
            add(f"double_blocks_{i}_{stream}_attn_qkv", width, 3 * width)
            add(f"double_blocks_{i}_{stream}_attn_proj", width, width)
    for i in range(config.num_single_layers):
        add(f"single_blocks_{i}_linear2", width + mlp, width)
    return tensors


def flux_xlabs_lora(transformer: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """XLabs' Flux LoRA: the double blocks' image and text attention (qkv_lora1/2, proj_lora1/2)."""
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(config.num_layers):
        for part, outputs in (("qkv_lora1", 3 * width), ("qkv_lora2", 3 * width),
                              ("proj_lora1", width), ("proj_lora2", width)):  # fmt: skip
            down, up = _pair(width, outputs, generator, scale)
            tensors[f"double_blocks.{i}.processor.{part}.down.weight"] = down
            tensors[f"double_blocks.{i}.processor.{part}.up.weight"] = up
    return tensors


def lora_on(
    transformer: torch.nn.Module, blocks: str, layers: tuple[str, ...], seed: int = 3
) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA in diffusers' names (`transformer.<module>.lora_A/B.weight`) on every module under `blocks`
    whose name ends with one of `layers` (the newer DiTs' tests: Krea 2, ERNIE-Image)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if name.startswith(blocks) and name.endswith(layers):
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator) / 2
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator) / 2
    return tensors


def trainer_form(tensors: dict[str, torch.Tensor], kohya: bool) -> dict[str, torch.Tensor]:
    """A LoRA in `diffusion_model.<module>.lora_A/B.weight` names as musubi-tuner writes it (lora_down / lora_up and
    an alpha of 2: over rank 4, the up matrices doubled to keep the update), or (`kohya`) the same under kohya's
    flattened `lora_unet_` names."""
    out = {}
    for key, value in tensors.items():
        module, _, part = key.rpartition(".lora_")
        if kohya:
            module = "lora_unet_" + module.removeprefix("diffusion_model.").replace(".", "_")
        up = part == "B.weight"
        out[f"{module}.lora_{'up' if up else 'down'}.weight"] = value * 2 if up else value
        out[f"{module}.alpha"] = torch.tensor(2.0)
    return out
