"""Tiny random LoRAs for the tiny Qwen-Image and Z-Image transformers of `tiny_qwen_zimage`, in the layouts
diffusers 0.42 converts for them (QwenImageLoraLoaderMixin / ZImageLoraLoaderMixin):

- diffusers/PEFT: `transformer.<module>.lora_A.weight` / `.lora_B.weight`;
- ComfyUI / ai-toolkit: the same under `diffusion_model.`;
- kohya/sd-scripts: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`.
Written out here from the formats' key names; seeded random values, large enough to change the image.
"""

from __future__ import annotations

import torch

RANK = 4
# Attention in both; the image stream's MLP in Qwen-Image (a name only Qwen-Image has); the feed-forward in
# Z-Image. kohya files keep to the attention projections, the layers every sd-scripts trainer writes.
QWEN_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "img_mlp.net.2")
Z_IMAGE_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w2")
KOHYA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attention.to_q", "attention.to_k", "attention.to_v")


def lora_for(
    transformer: torch.nn.Module, targets: tuple[str, ...], layout: str, seed: int = 0, scale: float = 0.5
) -> dict[str, torch.Tensor]:
    """`layout`: "peft", "comfy" or "kohya"."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    wanted = KOHYA_TARGETS if layout == "kohya" else targets
    for name, module in transformer.named_modules():
        if not (name.endswith(wanted) and isinstance(module, torch.nn.Linear)):
            continue
        down = torch.randn(RANK, module.in_features, generator=generator) * scale
        up = torch.randn(module.out_features, RANK, generator=generator) * scale
        if layout == "kohya":
            key = "lora_unet_" + name.replace(".", "_")
            tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": torch.tensor(RANK / 2)})  # fmt: skip
        else:
            prefix = "transformer." if layout == "peft" else "diffusion_model."
            tensors[f"{prefix}{name}.lora_A.weight"] = down
            tensors[f"{prefix}{name}.lora_B.weight"] = up
    return tensors
