"""A tiny random Qwen-Image 2.1: diffusers' QwenImage21Transformer2DModel and AutoencoderKLQwenImage21 (64 latent
channels, 16x, RGBA, as the real ones) with small dimensions, and a tiny Qwen3-VL text encoder whose vision tower
really reads condition images, prompted through a Qwen3-VL processor (a byte-level tokenizer with Qwen's vision
tokens, the PIL image processor; no video processor: transformers' needs torchvision, which Marble does not
install). Saved as a complete diffusers folder laid out as Qwen/Qwen-Image-2.1's (processor/ beside the models).
`to_comfy` writes the transformer as ComfyUI's files do (the SwiGLU's gate and up projections fused)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage21,
    FlowMatchEulerDiscreteScheduler,
    QwenImage21Pipeline,
    QwenImage21Transformer2DModel,
)
from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from desktop.engine.backends.families_qwen21 import qwen3_vl_processor
from tests.support.tiny_dit import CONFIGS, _jitter
from tests.support.tiny_qwen_edit import _IDS, VOCAB, tiny_edit_tokenizer

WIDTH = 16  # the text encoder's hidden size = the transformer's text input width
# Qwen3-VL's chat form of a message whose content is a list of parts (text parts only here: the pipeline asks
# the processor for its system message's tokens that way).
_CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_PATCH = 16  # Qwen3-VL's vision patch
_MAX_PIXELS = 128 * 128  # conditions are shown whole: the pipeline sizes them to the output's pixel count


def tiny_processor():
    images = Qwen2VLImageProcessorPil(
        min_pixels=(_PATCH * 2) ** 2, max_pixels=_MAX_PIXELS, patch_size=_PATCH, image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )  # fmt: skip
    tokenizer = tiny_edit_tokenizer()  # Qwen's vision tokens, as Qwen-Image-Edit's tiny model has them
    tokenizer.chat_template = None  # the processor's own (below) is the one the pipeline asks
    return qwen3_vl_processor(images, tokenizer, _CHAT)


def qwen3_vl_config(vocab: int, ids: dict[str, int], *, layers: int = 2, depth: int = 2) -> Qwen3VLConfig:
    """A tiny Qwen3-VL: `WIDTH` wide, `layers` text layers, a vision tower of `depth` blocks; `ids`: the special
    tokens' ids (bos, eos and the vision tokens) in the tokenizer it goes with."""
    return Qwen3VLConfig(
        text_config={
            "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_hidden_layers": layers, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 8, "vocab_size": vocab, "rope_theta": 5000000.0,
            "rope_scaling": {"mrope_section": [2, 1, 1], "rope_type": "default", "mrope_interleaved": True},
            "bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
        },
        vision_config={"depth": depth, "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_heads": 2,
                       "out_hidden_size": WIDTH, "patch_size": _PATCH, "deepstack_visual_indexes": [0],
                       "num_position_embeddings": 16},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip


def tiny_encoder(seed: int = 0) -> Qwen3VLForConditionalGeneration:
    torch.manual_seed(seed)
    encoder = Qwen3VLForConditionalGeneration(qwen3_vl_config(VOCAB, _IDS | {"bos": 256, "eos": 258})).eval()
    _jitter(encoder, seed + 1)
    return encoder


def build_tiny_qwen21(seed: int = 0, *, layers: int = 2) -> QwenImage21Pipeline:
    torch.manual_seed(seed)
    transformer = QwenImage21Transformer2DModel(
        num_layers=layers, attention_head_dim=16, num_attention_heads=2, context_in_dim=WIDTH, axes_dims_rope=(4, 6, 6)
    )
    _jitter(transformer, seed)
    vae = AutoencoderKLQwenImage21(base_dim=8, decoder_base_dim=8).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(CONFIGS / "qwen-image-2.1" / "scheduler"))
    return QwenImage21Pipeline(
        scheduler=scheduler, vae=vae, text_encoder=tiny_encoder(seed), processor=tiny_processor(),
        transformer=transformer,
    )  # fmt: skip


def save_folder(pipe: QwenImage21Pipeline, folder: Path) -> Path:
    """Laid out as Qwen/Qwen-Image-2.1's: processor/ holds the image processor's preprocessor_config.json, the
    tokenizer and the chat template; model_index.json names transformers' Qwen3VLProcessor."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (folder / "processor" / "processor_config.json").unlink()
    pipe.processor.image_processor.save_pretrained(str(folder / "processor"))
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    index["processor"] = ["transformers", "Qwen3VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


def to_comfy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's names: each block's `img_mlp.gate_layer` and `img_mlp.proj` as one `img_mlp.gate_up` (gate rows
    first), under `model.diffusion_model.`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("img_mlp.proj.weight"):
            continue
        if key.endswith("img_mlp.gate_layer.weight"):
            up = state[key.replace("gate_layer", "proj")]
            key, value = key.replace("gate_layer", "gate_up"), torch.cat([value, up])
        out["model.diffusion_model." + key] = value.contiguous()
    return out
