"""A tiny random Ovis-Image: diffusers' OvisImageTransformer2DModel with small dimensions (one double-stream block,
two single-stream ones, SwiGLU feed-forwards), Flux.1's kind of VAE (three levels: its factor, 4, is the real one's
halved), a tiny Qwen3 (Ovis 2.5's language model is a Qwen3) and the byte-level Qwen tokenizer of the Z-Image tests (or
Marble's shipped one). Saved as its release's folder, as a transformer file in its release's (diffusers') names, and in
Comfy-Org's: Flux's BFL names with the SwiGLU's gate_proj / up_proj / down_proj and `txt_norm` (written here from the
layout's names, as stable-diffusion.cpp reads them)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, OvisImagePipeline, OvisImageTransformer2DModel
from safetensors.torch import save_file

from tests.support.tiny_dit import CONFIGS, _jitter, flux_to_bfl
from tests.support.tiny_longcat import tiny_vae
from tests.support.tiny_qwen_zimage import WIDTH, shipped_tokenizer, tiny_qwen3, tiny_tokenizer

LATENT_CHANNELS = 16  # Flux's VAE's; the pipeline reads as many as the transformer's input over 4


def tiny_transformer(seed: int = 0, layers: int = 1, single_layers: int = 2) -> OvisImageTransformer2DModel:
    torch.manual_seed(seed)
    transformer = OvisImageTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, out_channels=4 * LATENT_CHANNELS, num_layers=layers,
        num_single_layers=single_layers, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=WIDTH,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    _jitter(transformer, seed)  # its modulation and output layer start at zero
    return transformer


def build_tiny_ovis(
    seed: int = 0, *, shipped: bool = False, layers: int = 1, single_layers: int = 2
) -> OvisImagePipeline:
    """`shipped`: with Marble's Qwen tokenizer and an encoder of its vocabulary."""
    transformer = tiny_transformer(seed, layers, single_layers)
    torch.manual_seed(seed + 1)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(CONFIGS / "ovis-image" / "scheduler"))
    return OvisImagePipeline(
        scheduler=scheduler, vae=tiny_vae(), text_encoder=tiny_qwen3(shipped=shipped),
        tokenizer=shipped_tokenizer() if shipped else tiny_tokenizer(), transformer=transformer,
    )  # fmt: skip


def comfy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' Ovis-Image names -> Comfy-Org's: Flux's BFL names (no vector_in, no guidance_in), each double block's
    SwiGLU as gate_proj / up_proj / down_proj (diffusers' ff.net.0.proj rows: the up projection, then the gate), the
    text norm as `txt_norm.scale`."""
    state = dict(state)
    norm = state.pop("context_embedder_norm.weight")
    flux = {("time_text_embed." + key if key.startswith("timestep_embedder.") else key): value
            for key, value in state.items()}  # fmt: skip
    out = {}
    for key, value in flux_to_bfl(flux).items():
        stem, _, kind = key.rpartition(".")
        if stem.endswith("_mlp.0"):
            up, gate = value.chunk(2, dim=0)
            out[f"{stem.removesuffix('.0')}.up_proj.{kind}"] = up
            out[f"{stem.removesuffix('.0')}.gate_proj.{kind}"] = gate
        elif stem.endswith("_mlp.2"):
            out[f"{stem.removesuffix('.2')}.down_proj.{kind}"] = value
        else:
            out[key] = value
    return out | {"txt_norm.scale": norm}


def save_transformer(pipe, path: Path, *, comfy: bool = False, prefix: str = "", drop: str | None = None) -> Path:
    """The transformer alone: diffusers' names, or (`comfy`) Comfy-Org's; `drop` leaves out the tensors whose names
    start with it."""
    state = pipe.transformer.state_dict()
    state = comfy_names(state) if comfy else state
    save_file({prefix + k: v.contiguous() for k, v in state.items() if drop is None or not k.startswith(drop)},
              str(path))  # fmt: skip
    return path
