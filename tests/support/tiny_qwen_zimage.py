"""Tiny random Qwen-Image and Z-Image models: the families' own classes with small dimensions.

Each pipeline carries a tiny text encoder (Qwen2.5-VL / Qwen3) and a byte-level tokenizer built here
with the `tokenizers` package (256 byte tokens + Qwen's chat special tokens; no merges), so a saved
folder is complete, as the families' diffusers folders are. Single files: Qwen-Image under ComfyUI's
prefix, Z-Image in its original names (fused qkv, `x_embedder`, `final_layer`) and in diffusers' names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen3Config, Qwen3Model
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tests.support.tiny_dit import CONFIGS, _jitter

WIDTH = 16  # the text encoders' hidden size = the transformers' text input width
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = 256 + len(_SPECIALS)


def tiny_tokenizer() -> Qwen2Tokenizer:
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_SPECIALS))
    tokenizer = Qwen2Tokenizer(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.chat_template = _CHAT
    return tokenizer


def _scheduler(family: str) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler.from_pretrained(str(CONFIGS / family / "scheduler"))


def shipped_tokenizer() -> Qwen2Tokenizer:
    """Marble's own Qwen tokenizer (resources/tokenizers/qwen): a model built with it needs SHIPPED_VOCAB rows."""
    from transformers import AutoTokenizer

    from desktop.engine.resources import Resources

    return AutoTokenizer.from_pretrained(str(Resources.default().tokenizers / "qwen"), local_files_only=True)


# Qwen3's embedding rows (Qwen2.5-VL's are 152,064): the shipped tokenizer's ids run to 151,668.
SHIPPED_VOCAB = 151_936


def build_tiny_qwen_image(seed: int = 0, *, shipped: bool = False) -> QwenImagePipeline:
    """`shipped`: with Marble's Qwen tokenizer and an encoder of its vocabulary (ids as Qwen2.5-VL's)."""
    torch.manual_seed(seed)
    z_dim = 4
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=z_dim * 4, out_channels=z_dim, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=WIDTH, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    _jitter(transformer, seed)
    vae = AutoencoderKLQwenImage(
        base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
    )  # fmt: skip
    return QwenImagePipeline(
        scheduler=_scheduler("qwen-image"), vae=vae, text_encoder=tiny_qwen25_vl(shipped=shipped),
        tokenizer=shipped_tokenizer() if shipped else tiny_tokenizer(),
        transformer=transformer,
    )  # fmt: skip



def tiny_qwen3(*, shipped: bool = False) -> Qwen3Model:
    """A Qwen3 WIDTH wide; `shipped`: of Marble's Qwen tokenizer's vocabulary, else of tiny_tokenizer()'s. Seeded by
    the caller."""
    config = Qwen3Config(
        vocab_size=SHIPPED_VOCAB if shipped else VOCAB, hidden_size=WIDTH, intermediate_size=WIDTH, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
    )  # fmt: skip
    return Qwen3Model(config).eval()

def tiny_qwen25_vl(*, shipped: bool = False) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL (language model and vision tower) WIDTH wide; `shipped`: of Marble's Qwen tokenizer's vocabulary
    and special-token ids, else of tiny_tokenizer()'s. Seeded by the caller."""
    vocab = SHIPPED_VOCAB if shipped else VOCAB
    bos, eos, vision = (151643, 151645, 151655) if shipped else (256, 258, VOCAB - 1)
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": vocab, "rope_theta": 1000000.0, "bos_token_id": bos,
            "eos_token_id": eos,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        },
        vision_config={"depth": 2, "hidden_size": WIDTH, "intermediate_size": WIDTH, "num_heads": 2,
                       "out_hidden_size": WIDTH},
        vocab_size=vocab, vision_start_token_id=vision, vision_end_token_id=vision, image_token_id=vision,
        video_token_id=vision, bos_token_id=bos, eos_token_id=eos,
    )  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_tiny_z_image(
    seed: int = 0, *, shipped: bool = False, latent_channels: int = 4, vae_blocks: int = 3, n_layers: int = 2,
    n_refiner_layers: int = 1,
) -> ZImagePipeline:
    """`shipped`: with Marble's Qwen tokenizer and an encoder of its vocabulary. `latent_channels` 16 and
    `vae_blocks` 4: the real model's latents (16 channels, 8 pixels a latent)."""
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=latent_channels, dim=32, n_layers=n_layers,
        n_refiner_layers=n_refiner_layers,
        n_heads=2, n_kv_heads=2, cap_feat_dim=WIDTH, axes_dims=[4, 6, 6], axes_lens=[1536, 512, 512],
    )  # fmt: skip
    _jitter(transformer, seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * vae_blocks,
        up_block_types=("UpDecoderBlock2D",) * vae_blocks, block_out_channels=(8,) * vae_blocks, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, shift_factor=0.1159, scaling_factor=0.3611,
        use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    return ZImagePipeline(
        scheduler=_scheduler("z-image"), vae=vae, text_encoder=tiny_qwen3(shipped=shipped),
        tokenizer=shipped_tokenizer() if shipped else tiny_tokenizer(), transformer=transformer,
    )  # fmt: skip


def z_image_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' ZImageTransformer2DModel names -> the original (Tongyi / ComfyUI) names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv"]
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(parts)
            continue
        key = key.replace("all_x_embedder.2-1.", "x_embedder.").replace("all_final_layer.2-1.", "final_layer.")
        key = key.replace(".attention.to_out.0.", ".attention.out.")
        key = key.replace(".attention.norm_q.", ".attention.q_norm.")
        key = key.replace(".attention.norm_k.", ".attention.k_norm.")
        out[key] = value
    return out


def save_transformer_file(
    state: dict[str, torch.Tensor], path: Path, prefix: str = "", drop: str | None = None
) -> Path:
    """A transformer-only single file; `drop` leaves out the tensors of one block ("layers.1")."""
    tensors = {prefix + k: v.contiguous() for k, v in state.items() if drop is None or not k.startswith(drop + ".")}
    save_file(tensors, str(path))
    return path
