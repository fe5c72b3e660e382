"""A tiny random Qwen-Image-Edit (and Edit-2509 "Plus"): Qwen-Image's tiny transformer and VAE
(tiny_qwen_zimage.py), a Qwen2.5-VL text encoder whose tiny vision tower really reads the source image,
and the Qwen2VL processor (image processor + byte-level tokenizer with Qwen's vision tokens) the Edit
pipelines prompt it through. The processor is built without a video processor: transformers' needs
torchvision, which Marble does not install (Marble builds it the same way: families_qwen_edit.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from desktop.engine.backends.families_qwen_edit import image_only_processor
from tests.support.tiny_qwen_zimage import _CHAT, SHIPPED_VOCAB, WIDTH, build_tiny_qwen_image

_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>")  # fmt: skip
VOCAB = 256 + len(_SPECIALS)
# Token ids of the vision tokens: the text encoder's config must name the tokenizer's.
_IDS = {token: 256 + index for index, token in enumerate(_SPECIALS)}
# Qwen2.5's own ids of them (Marble's shipped tokenizer).
_SHIPPED_IDS = {"<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
# The vision tower sees at most 4 merged patches of the source (the pipeline resizes it to ~1 MP first).
_PATCH = 14
_MAX_PIXELS = (_PATCH * 2) ** 2 * 4


def tiny_edit_tokenizer() -> Qwen2Tokenizer:
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_SPECIALS))
    tokenizer = Qwen2Tokenizer(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.chat_template = _CHAT
    return tokenizer


def tiny_processor():
    images = Qwen2VLImageProcessorPil(min_pixels=_MAX_PIXELS // 4, max_pixels=_MAX_PIXELS, patch_size=_PATCH)
    return image_only_processor(images, tiny_edit_tokenizer())


def tiny_vl_encoder(seed: int = 0, *, shipped: bool = False) -> Qwen2_5_VLForConditionalGeneration:
    """`shipped`: of Marble's Qwen tokenizer's vocabulary and vision-token ids (resources/tokenizers/qwen), else of
    tiny_edit_tokenizer()'s."""
    torch.manual_seed(seed)
    vocab, ids, bos, eos = (SHIPPED_VOCAB, _SHIPPED_IDS, 151643, 151645) if shipped else (VOCAB, _IDS, 256, 258)
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": vocab, "rope_theta": 1000000.0, "bos_token_id": bos,
            "eos_token_id": eos,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        },
        vision_config={"depth": 2, "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_heads": 2,
                       "out_hidden_size": WIDTH, "patch_size": _PATCH, "fullatt_block_indexes": [1],
                       "window_size": 56},
        vocab_size=vocab, vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], bos_token_id=bos, eos_token_id=eos,
    )  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_tiny_qwen_edit(seed: int = 0, *, plus: bool = False) -> QwenImageEditPipeline:
    base = build_tiny_qwen_image(seed)
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    return cls(
        scheduler=base.scheduler, vae=base.vae, text_encoder=tiny_vl_encoder(seed), tokenizer=tiny_edit_tokenizer(),
        processor=tiny_processor(), transformer=base.transformer,
    )  # fmt: skip


def save_edit_folder(pipe, folder: Path, *, slot: str = "processor") -> Path:
    """The pipeline as a diffusers folder laid out as Qwen/Qwen-Image-Edit's (LongCat-Image-Edit's with `slot`
    "text_processor"): `slot`/ holds the image processor's config and the tokenizer, model_index.json names
    transformers' Qwen2VLProcessor."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    processor = getattr(pipe, slot)
    processor.image_processor.save_pretrained(str(folder / slot))
    processor.tokenizer.save_pretrained(str(folder / slot))
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    index[slot] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder
