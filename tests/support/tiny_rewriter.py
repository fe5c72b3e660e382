"""A tiny random FLUX.3 prompt rewriter folder, as Black Forest Labs ship theirs (flux-3-image-klein-pup): a Qwen3.5
(its gated-delta linear attention and full attention layers, a tiny vision tower) saved by transformers, a byte-level
Qwen tokenizer whose chat template writes Qwen3's empty think block when thinking is off, the image processor's
settings, and `system_prompts.json`.
Its captions are random bytes, enough to check the rewriter's plumbing against transformers' own generation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2VLImageProcessorPil, Qwen3_5Config, Qwen3_5ForConditionalGeneration

from tests.support.tiny_dit import _jitter
from tests.support.tiny_qwen_edit import _IDS, VOCAB, tiny_edit_tokenizer

# Qwen3.5's chat template in its essentials: system and user turns, their content as text or as lists of parts
# (pictures as Qwen's vision tokens, which the processor widens to the picture's patches), the assistant's turn
# opened, and with thinking off an empty think block first.
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
_PATCH = 14
SYSTEM_PROMPTS = {"t2i": "Expand the request into one detailed caption.", "i2i": "Expand the edit instruction.",
                  "t2i_bbox": "Plan the layout: a caption citing <ids>, then the box table.",
                  "i2i_bbox": "Annotate the edit: a paragraph citing <ids>, then the box table."}
WIDTH = 16


def tiny_rewriter(seed: int = 0) -> Qwen3_5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = Qwen3_5Config(
        text_config={
            "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 8, "vocab_size": VOCAB, "linear_key_head_dim": 8,
            "linear_value_head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 2,
            "layer_types": ["linear_attention", "full_attention"], "bos_token_id": 256, "eos_token_id": 258,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                "mrope_interleaved": True, "partial_rotary_factor": 1.0},
        },
        vision_config={"depth": 1, "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_heads": 2,
                       "out_hidden_size": WIDTH, "patch_size": _PATCH, "num_position_embeddings": 16},
        image_token_id=_IDS["<|image_pad|>"], video_token_id=_IDS["<|video_pad|>"],
        vision_start_token_id=_IDS["<|vision_start|>"], vision_end_token_id=_IDS["<|vision_end|>"],
    )  # fmt: skip
    model = Qwen3_5ForConditionalGeneration(config).eval()
    _jitter(model, seed)
    return model


def tiny_rewriter_tokenizer():
    tokenizer = tiny_edit_tokenizer()
    tokenizer.chat_template = CHAT
    return tokenizer


def save_rewriter(folder: Path, seed: int = 0, *, prompts: dict | None = SYSTEM_PROMPTS) -> Path:
    """The rewriter's folder: config.json and weights, the tokenizer with its chat template, system_prompts.json
    (left out when `prompts` is None)."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_rewriter(seed).save_pretrained(str(folder))
    tiny_rewriter_tokenizer().save_pretrained(str(folder))
    # The processor's image settings: a picture is shown as at most 2 x 2 merged patches.
    Qwen2VLImageProcessorPil(min_pixels=(_PATCH * 2) ** 2, max_pixels=(_PATCH * 2) ** 2 * 4,
                             patch_size=_PATCH).save_pretrained(str(folder))  # fmt: skip
    if prompts is not None:
        (folder / "system_prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    return folder
