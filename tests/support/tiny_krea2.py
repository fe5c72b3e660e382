"""A tiny random Krea 2: diffusers' Krea2Transformer2DModel with small dimensions (query and key/value heads apart,
as the real model's 48 and 12), Qwen-Image's 16-channel VAE (tiny), a tiny Qwen3-VL text encoder whose layers the
pipeline taps, and Marble's own Qwen tokenizer (the real model's: its 34-token system prefix is what the pipeline
drops). `to_original` writes the transformer in its makers' names (Krea's release, ComfyUI's files): the inverse
of diffusers' single-file converter, written here from the two layouts' names."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, Krea2Pipeline, Krea2Transformer2DModel
from transformers import Qwen3VLModel

from tests.support.tiny_dit import CONFIGS, _jitter
from tests.support.tiny_qwen21 import WIDTH, qwen3_vl_config
from tests.support.tiny_qwen_zimage import SHIPPED_VOCAB, shipped_tokenizer

TAPS = (1, 2, 3)  # the encoder's hidden states the pipeline stacks (the real model taps twelve of 37)


def tiny_encoder(seed: int = 0) -> Qwen3VLModel:
    torch.manual_seed(seed)
    # The shipped tokenizer's ids (Qwen's own), three text layers for the pipeline to tap.
    ids = {"bos": 151643, "eos": 151645, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
           "<|vision_start|>": 151652, "<|vision_end|>": 151653}  # fmt: skip
    encoder = Qwen3VLModel(qwen3_vl_config(SHIPPED_VOCAB, ids, layers=3, depth=1)).eval()
    _jitter(encoder, seed + 1)
    return encoder


def build_tiny_krea2(seed: int = 0, *, layers: int = 2, distilled: bool = False) -> Krea2Pipeline:
    torch.manual_seed(seed)
    z_dim = 4
    transformer = Krea2Transformer2DModel(
        in_channels=z_dim * 4, num_layers=layers, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=48, text_hidden_dim=WIDTH, num_text_layers=len(TAPS), text_num_attention_heads=2,
        text_num_key_value_heads=2, text_intermediate_size=24, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    _jitter(transformer, seed)
    # Wan 2.1's block layout (four levels, two residual blocks each), which ComfyUI's qwen_image_vae names follow.
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 1.0],
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(CONFIGS / "krea2" / "scheduler"))
    return Krea2Pipeline(
        scheduler=scheduler, vae=vae, text_encoder=tiny_encoder(seed), tokenizer=shipped_tokenizer(),
        transformer=transformer, text_encoder_select_layers=TAPS, is_distilled=distilled,
    )  # fmt: skip


# diffusers' names -> its makers' (outside the blocks by prefix; inside each block and text-fusion block by part).
_PREFIXES = {
    "img_in.": "first.", "time_embed.linear_1.": "tmlp.0.", "time_embed.linear_2.": "tmlp.2.",
    "time_mod_proj.": "tproj.1.", "txt_in.linear_1.": "txtmlp.1.", "txt_in.linear_2.": "txtmlp.3.",
    "text_fusion.": "txtfusion.", "transformer_blocks.": "blocks.", "final_layer.linear.": "last.linear.",
}  # fmt: skip
_WHOLE = {"txt_in.norm.weight": "txtmlp.0.scale", "final_layer.norm.weight": "last.norm.scale",
          "final_layer.scale_shift_table": "last.modulation.lin"}  # fmt: skip
_PARTS = {
    ".attn.to_q.": ".attn.wq.", ".attn.to_k.": ".attn.wk.", ".attn.to_v.": ".attn.wv.", ".attn.to_out.0.": ".attn.wo.",
    ".attn.to_gate.": ".attn.gate.", ".attn.norm_q.weight": ".attn.qknorm.qnorm.scale",
    ".attn.norm_k.weight": ".attn.qknorm.knorm.scale", ".ff.": ".mlp.", ".norm1.weight": ".prenorm.scale",
    ".norm2.weight": ".postnorm.scale", ".scale_shift_table": ".mod.lin",
}  # fmt: skip


def to_original(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The transformer's tensors in Krea's names; each block's six modulation vectors flattened into one."""
    out = {}
    for key, value in state.items():
        name = _WHOLE.get(key)
        if name is None:
            start = next(p for p in _PREFIXES if key.startswith(p))
            name = _PREFIXES[start] + key[len(start):]
            for new, old in _PARTS.items():
                name = name.replace(new, old)
            if name.startswith("blocks.") and name.endswith(".mod.lin"):
                value = value.reshape(-1)
        out[prefix + name] = value.contiguous()
    return out


def comfy_qwen3_vl(encoder: Qwen3VLModel) -> dict[str, torch.Tensor]:
    """The encoder as ComfyUI's Qwen3-VL files hold it (qwen3vl_4b_fp8_scaled): transformers' names under
    `model.` (`model.language_model.layers.N...`, `model.visual.*`)."""
    return {f"model.{key}": value.contiguous() for key, value in encoder.state_dict().items()}
