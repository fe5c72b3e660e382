"""Tiny IP-Adapters and CLIP image encoders for tests: seeded random weights in the layouts users have.

The adapter is written in h94's layout (`image_proj.*` + `ip_adapter.N.to_k_ip/to_v_ip`), sized to a tiny
UNet: one key/value pair per cross-attention, numbered 1, 3, 5, ... in the UNet's processor order, as
diffusers' loader reads them. The encoder is a CLIPVisionModelWithProjection with 16 heads (the rule Marble
uses for files without a config).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

ENCODER_HIDDEN, ENCODER_PROJECTION = 32, 24


def build_tiny_image_encoder(seed: int = 0, hidden: int = ENCODER_HIDDEN, projection: int = ENCODER_PROJECTION):
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=projection, num_hidden_layers=2,
        num_attention_heads=16, image_size=32, patch_size=8, hidden_act="gelu",
    )  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def save_image_encoder(model, path: Path) -> Path:
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    save_file(state, str(path))
    return path


def ip_adapter_state(unet: UNet2DConditionModel, seed: int = 0, image_width: int = ENCODER_PROJECTION) -> dict:
    """A plain IP-Adapter's flat state dict (h94's names) for `unet`, reading `image_width`-wide embeds."""
    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    state = {
        "image_proj.proj.weight": torch.randn(cross * 4, image_width, generator=generator) * 0.5,
        "image_proj.proj.bias": torch.randn(cross * 4, generator=generator) * 0.1,
        "image_proj.norm.weight": 1 + torch.randn(cross, generator=generator) * 0.1,
        "image_proj.norm.bias": torch.randn(cross, generator=generator) * 0.1,
    }
    key_id = 1
    channels = list(unet.config.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{part}.weight"] = torch.randn(hidden, cross, generator=generator) * 0.5
        key_id += 2
    return state


def nested(state: dict) -> dict:
    """The flat state dict as diffusers' load_ip_adapter takes it."""
    return {
        part: {k.removeprefix(f"{part}."): v for k, v in state.items() if k.startswith(f"{part}.")}
        for part in ("image_proj", "ip_adapter")
    }


def plus_header_state(cross: int = 768, encoder_hidden: int = 1280) -> dict:
    """Tensors with a plus adapter's names and shapes (zeros): enough for detection."""
    return {
        "image_proj.latents": torch.zeros(1, 16, 64),
        "image_proj.proj_in.weight": torch.zeros(64, encoder_hidden),
        "image_proj.proj_out.weight": torch.zeros(cross, 64),
        "image_proj.layers.0.0.to_q.weight": torch.zeros(64, 64),
        "ip_adapter.1.to_k_ip.weight": torch.zeros(320, cross),
        "ip_adapter.1.to_v_ip.weight": torch.zeros(320, cross),
    }


def save_state(state: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def plus_face_header_state() -> dict:
    """The names and shapes of h94's ip-adapter-plus-face_sd15 (zeros, half precision: detection only); the
    same perceiver resampler as Plus, 16 tokens of 768 from ViT-H's 1280-wide hidden states."""
    half = torch.float16
    return {
        "image_proj.latents": torch.zeros(1, 16, 768, dtype=half),
        "image_proj.proj_in.weight": torch.zeros(768, 1280, dtype=half),
        "image_proj.proj_in.bias": torch.zeros(768, dtype=half),
        "image_proj.proj_out.weight": torch.zeros(768, 768, dtype=half),
        "image_proj.norm_out.weight": torch.zeros(768, dtype=half),
        "image_proj.layers.0.0.norm1.weight": torch.zeros(768, dtype=half),
        "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768, dtype=half),
        "ip_adapter.1.to_v_ip.weight": torch.zeros(320, 768, dtype=half),
    }


def faceid_header_state(plus: bool = False) -> dict:
    """h94's IP-Adapter FaceID (or FaceID Plus) names: an MLP from a 512-wide face embedding (`proj.0`,
    `proj.2`, `norm`), Plus adding a `perceiver_resampler` over CLIP hidden states. Zeros, small widths."""
    state = {
        "image_proj.proj.0.weight": torch.zeros(64, 512),
        "image_proj.proj.2.weight": torch.zeros(4 * 32, 64),
        "image_proj.norm.weight": torch.zeros(32),
        "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768),
        "ip_adapter.1.to_v_ip.weight": torch.zeros(320, 768),
    }
    if plus:
        state["image_proj.perceiver_resampler.proj_in.weight"] = torch.zeros(32, 1280)
    return state
