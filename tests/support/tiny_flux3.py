"""A tiny random FLUX.3: diffusers' Flux3Transformer2DModel (base, or the distilled flow map) with small dimensions,
Flux.2's VAE at 4 latent channels (16 as patches), and a Qwen3-VL text encoder 16 wide with the real depth's
hidden-state picks (layers 4, 8, ... 32 of 32), prompted through a Qwen3-VL processor: the transformer reads eight
layers side by side (128 wide). Run by Marble's pipeline (backends/families_flux3.py) and by diffusers' modular
FLUX.3 pipeline, which the tests compare it with. `to_bfl` writes the transformer in BFL's names (the inverse of
diffusers' converter)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux3Transformer2DModel
from transformers import Qwen3VLForConditionalGeneration

from desktop.engine.backends.families_flux3 import pipeline_class
from tests.support.tiny_dit import CONFIGS, _jitter
from tests.support.tiny_flux2 import tiny_vae
from tests.support.tiny_qwen21 import WIDTH, qwen3_vl_config, tiny_processor
from tests.support.tiny_qwen_edit import _IDS, VOCAB

LATENT_CHANNELS = 4
ENCODER_LAYERS = 32


def tiny_transformer(seed: int = 0, *, distilled: bool = False, layers: int = 1, single: int = 2,
                     heads: int = 2, text_width: int = WIDTH) -> Flux3Transformer2DModel:  # fmt: skip
    torch.manual_seed(seed)
    transformer = Flux3Transformer2DModel(
        in_channels=4 * LATENT_CHANNELS, cond_in_channels=4 * LATENT_CHANNELS, num_layers=layers,
        num_single_layers=single, attention_head_dim=16, num_attention_heads=heads, joint_attention_dim=8 * text_width,
        timestep_channels=32, axes_dims_rope=(4, 4, 4, 4), flow_map=distilled,
    )  # fmt: skip
    _jitter(transformer, seed)
    return transformer.eval()


def tiny_encoder(seed: int = 0) -> Qwen3VLForConditionalGeneration:
    torch.manual_seed(seed + 1)
    config = qwen3_vl_config(VOCAB, _IDS | {"bos": 256, "eos": 258}, layers=ENCODER_LAYERS)
    encoder = Qwen3VLForConditionalGeneration(config).eval()
    _jitter(encoder, seed + 2)
    return encoder


def scheduler(variant: str = "flux3") -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler.from_pretrained(str(CONFIGS / variant / "scheduler"))


def build_tiny_flux3(seed: int = 0, *, distilled: bool = False) -> Any:
    """Marble's FLUX.3 pipeline over the tiny parts."""
    return pipeline_class()(
        scheduler=scheduler("flux3-distilled" if distilled else "flux3"), vae=tiny_vae(LATENT_CHANNELS),
        text_encoder=tiny_encoder(seed), tokenizer=tiny_processor(), transformer=tiny_transformer(seed,
                                                                                                  distilled=distilled),
    )  # fmt: skip


def save_folder(pipe: Any, folder: Path, *, modular_name: str | None = None) -> Path:
    """A diffusers folder: transformer/, vae/, text_encoder/, tokenizer/ (Qwen3-VL's processor: its tokenizer, chat
    template and image processor settings), scheduler/ and model_index.json naming Marble's pipeline, or diffusers'
    modular one (`modular_name`, as a folder of the modular pipeline would)."""
    for part in ("transformer", "vae", "text_encoder"):
        getattr(pipe, part).save_pretrained(str(folder / part), safe_serialization=True)
    pipe.scheduler.save_pretrained(str(folder / "scheduler"))
    processor = pipe.tokenizer
    processor.tokenizer.save_pretrained(str(folder / "tokenizer"))
    processor.image_processor.save_pretrained(str(folder / "tokenizer"))
    (folder / "tokenizer" / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
    index = {"_class_name": modular_name or "Flux3Pipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
             "tokenizer": ["transformers", "Qwen3VLProcessor"],
             "transformer": ["diffusers", "Flux3Transformer2DModel"],
             "vae": ["diffusers", "AutoencoderKLFlux2"]}  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


# diffusers' converter's renames (single_file_utils.convert_flux3_transformer_checkpoint_to_diffusers), inverted.
_EXACT = {"timestep_embedder.linear_1.weight": "time_in.in_layer.weight",
          "timestep_embedder.linear_2.weight": "time_in.out_layer.weight",
          "target_timestep_embedder.linear_1.weight": "ref_time_in.in_layer.weight",
          "target_timestep_embedder.linear_2.weight": "ref_time_in.out_layer.weight",
          "proj_out.weight": "final_layer.image.linear.weight",
          "norm_out.linear.weight": "final_layer.image.adaLN_modulation.1.weight"}  # fmt: skip
_PREFIXES = {"x_embedders.": "emb_in.", "context_embedder.": "txt_in.", "mode_blocks.": "content_mode_blocks.",
             "single_transformer_blocks.": "single_blocks."}  # fmt: skip
_INNER = {"attn.to_q.weight": "q_proj.weight", "attn.to_k.weight": "k_proj.weight", "attn.to_v.weight": "v_proj.weight",
          "attn.to_out.0.weight": "attn_out.weight", "attn.norm_q.weight": "norm.query_norm.scale",
          "attn.norm_k.weight": "norm.key_norm.scale", "ff.linear_in.weight": "mlp_in.weight",
          "ff.linear_out.weight": "mlp_out.weight"}  # fmt: skip


def to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FLUX.3 state dict in BFL's names (the final modulation's halves back to shift, scale)."""
    out = {}
    for key, value in copy.copy(state).items():
        if key in _EXACT:
            if key.startswith("norm_out."):
                scale, shift = value.chunk(2, dim=0)
                value = torch.cat([shift, scale], dim=0)
            out[_EXACT[key]] = value.contiguous()
            continue
        new = key
        for old, bfl in _PREFIXES.items():
            if new.startswith(old):
                new = bfl + new[len(old):]
                break
        new = new.replace(".linear.weight", ".lin.weight") if "modulations" in new else new
        for old, bfl in _INNER.items():
            if new.endswith(old):
                new = new[: -len(old)] + bfl
                break
        out[new] = value.contiguous()
    return out
