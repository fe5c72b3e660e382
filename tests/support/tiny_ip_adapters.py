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
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = _hidden_of(unet, name)
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{part}.weight"] = torch.randn(hidden, cross, generator=generator) * 0.5
        key_id += 2
    return state


def _hidden_of(unet: UNet2DConditionModel, name: str) -> int:
    channels = list(unet.config.block_out_channels)
    if name.startswith("mid_block"):
        return channels[-1]
    if name.startswith("up_blocks"):
        return list(reversed(channels))[int(name[len("up_blocks.")])]
    return channels[int(name[len("down_blocks.")])]


FACE_WIDTH = 512  # insightface's ArcFace identity embedding
LORA_RANK = 4


def faceid_state(
    unet: UNet2DConditionModel, seed: int = 0, plus: bool = False, clip_width: int = ENCODER_HIDDEN
) -> dict:
    """A FaceID (or FaceID Plus) adapter's flat state dict in h94's layout for `unet`: `image_proj.proj.0/2` +
    `norm` (the identity MLP: 512 -> 1024 -> 4 tokens x width), Plus adding `perceiver_resampler.*` (4 layers of
    norm1/norm2/to_q/to_kv/to_out + a LayerNorm/Linear/Linear feed-forward, 64-wide heads) over `clip_width`-
    wide CLIP hidden states; `ip_adapter.N.*` numbered over every attention processor, with the LoRA every
    processor carries (`to_q_lora` ... `to_out_lora`) and `to_k_ip`/`to_v_ip` on the cross-attentions."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    cross = unet.config.cross_attention_dim
    # The identity tokens are as wide as the cross-attention in h94's files, the resampler too (Plus v2 adds
    # the identity tokens to the resampler's output).
    width = embed = cross
    state = {
        "image_proj.proj.0.weight": rand(2 * FACE_WIDTH, FACE_WIDTH, scale=0.05),
        "image_proj.proj.0.bias": rand(2 * FACE_WIDTH, scale=0.05),
        "image_proj.proj.2.weight": rand(4 * width, 2 * FACE_WIDTH, scale=0.05),
        "image_proj.proj.2.bias": rand(4 * width, scale=0.05),
        "image_proj.norm.weight": 1 + rand(width, scale=0.1),
        "image_proj.norm.bias": rand(width, scale=0.1),
    }
    if plus:
        r = "image_proj.perceiver_resampler."
        state |= {
            f"{r}proj_in.weight": rand(embed, clip_width), f"{r}proj_in.bias": rand(embed, scale=0.1),
            f"{r}proj_out.weight": rand(cross, embed), f"{r}proj_out.bias": rand(cross, scale=0.1),
            f"{r}norm_out.weight": 1 + rand(cross, scale=0.1), f"{r}norm_out.bias": rand(cross, scale=0.1),
        }  # fmt: skip
        for i in range(4):
            layer = f"{r}layers.{i}."
            for norm in ("0.norm1", "0.norm2", "1.0"):
                state |= {f"{layer}{norm}.weight": 1 + rand(embed, scale=0.1), f"{layer}{norm}.bias": rand(embed)}
            state |= {f"{layer}0.to_q.weight": rand(64, embed), f"{layer}0.to_kv.weight": rand(128, embed),
                      f"{layer}0.to_out.weight": rand(embed, 64), f"{layer}1.1.weight": rand(4 * embed, embed),
                      f"{layer}1.3.weight": rand(embed, 4 * embed)}  # fmt: skip
    for key_id, name in enumerate(unet.attn_processors):
        hidden = _hidden_of(unet, name)
        source = hidden if name.endswith("attn1.processor") else cross
        for part, (down_in, up_out) in {"to_q": (hidden, hidden), "to_k": (source, hidden),
                                        "to_v": (source, hidden), "to_out": (hidden, hidden)}.items():  # fmt: skip
            state[f"ip_adapter.{key_id}.{part}_lora.down.weight"] = rand(LORA_RANK, down_in)
            state[f"ip_adapter.{key_id}.{part}_lora.up.weight"] = rand(up_out, LORA_RANK)
        if not name.endswith("attn1.processor"):
            for part in ("to_k_ip", "to_v_ip"):
                state[f"ip_adapter.{key_id}.{part}.weight"] = rand(hidden, cross, scale=0.5)
    return state


def without_lora(state: dict) -> dict:
    """The adapter without the LoRA h94 also ships as a separate file (Marble, like A1111, leaves it out)."""
    return {k: v for k, v in state.items() if "_lora." not in k}


def faceid_lora(unet: UNet2DConditionModel, seed: int = 0) -> dict:
    """h94's companion LoRA (ip-adapter-faceid_sd15_lora.safetensors) naming: kohya keys over diffusers' block
    names, `lora_unet_<block>_attentions_<i>_transformer_blocks_<j>_attn<k>_to_<q|k|v|out_0>.lora_down/up` +
    `.alpha`, for every attention of the UNet."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    state = {}
    for name in unet.attn_processors:
        hidden = _hidden_of(unet, name)
        source = hidden if name.endswith("attn1.processor") else cross
        stem = "lora_unet_" + name.removesuffix(".processor").replace(".", "_")
        for part, width in (("to_q", hidden), ("to_k", source), ("to_v", source), ("to_out_0", hidden)):
            state[f"{stem}_{part}.lora_down.weight"] = torch.randn(LORA_RANK, width, generator=g) * 0.3
            state[f"{stem}_{part}.lora_up.weight"] = torch.randn(hidden, LORA_RANK, generator=g) * 0.3
            state[f"{stem}_{part}.alpha"] = torch.tensor(float(LORA_RANK))
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
