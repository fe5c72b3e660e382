"""A tiny random LongCat-Image: diffusers' LongCatImageTransformer2DModel with small dimensions (one double-stream
block, two single-stream ones), Flux.1's kind of VAE (AutoencoderKL, shifted and scaled latents; three levels, so
that its factor, 4, is the real one's halved), a tiny Qwen2.5-VL and the byte-level Qwen tokenizer of the Qwen-Image
tests (or Marble's shipped one). Saved as its release's folder, as a transformer file in its release's (diffusers')
names, and in Comfy-Org's: Flux's BFL names, the q/k norms under `.weight`. LongCat-Image-Edit: the same transformer
with the Qwen-Image-Edit tests' Qwen2.5-VL, whose tiny vision tower reads the source, and their Qwen2VL processor
(tiny_qwen_edit.py; its save_edit_folder lays out the folder, the processor in `text_processor/`)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    LongCatImageEditPipeline,
    LongCatImagePipeline,
    LongCatImageTransformer2DModel,
)
from safetensors.torch import save_file

from tests.support.tiny_dit import CONFIGS, _jitter, flux_to_bfl
from tests.support.tiny_qwen_edit import tiny_edit_tokenizer, tiny_processor, tiny_vl_encoder
from tests.support.tiny_qwen_zimage import WIDTH, shipped_tokenizer, tiny_qwen25_vl, tiny_tokenizer

LATENT_CHANNELS = 16  # its pipeline draws 16 channels, whatever the VAE says


def tiny_transformer(seed: int = 0, layers: int = 1, single_layers: int = 2) -> LongCatImageTransformer2DModel:
    torch.manual_seed(seed)
    transformer = LongCatImageTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=layers, num_single_layers=single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=WIDTH, pooled_projection_dim=WIDTH,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    _jitter(transformer, seed)  # its modulation and output layer start at zero
    return transformer


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8,) * 3, layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=4, sample_size=32, shift_factor=0.1159,
        scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip


def build_tiny_longcat(
    seed: int = 0, *, shipped: bool = False, layers: int = 1, single_layers: int = 2
) -> LongCatImagePipeline:
    """Without the processor its prompt rewriter reads (never run); `shipped`: with Marble's Qwen tokenizer and an
    encoder of its vocabulary."""
    transformer = tiny_transformer(seed, layers, single_layers)
    torch.manual_seed(seed + 1)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(CONFIGS / "longcat-image" / "scheduler"))
    return LongCatImagePipeline(
        scheduler=scheduler, vae=tiny_vae(), text_encoder=tiny_qwen25_vl(shipped=shipped),
        tokenizer=shipped_tokenizer() if shipped else tiny_tokenizer(), transformer=transformer, text_processor=None,
    )  # fmt: skip


def build_tiny_longcat_edit(seed: int = 0) -> LongCatImageEditPipeline:
    base = build_tiny_longcat(seed)
    return LongCatImageEditPipeline(
        scheduler=base.scheduler, vae=base.vae, text_encoder=tiny_vl_encoder(seed), tokenizer=tiny_edit_tokenizer(),
        text_processor=tiny_processor(), transformer=base.transformer,
    )  # fmt: skip


def comfy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' LongCat names -> Comfy-Org's: Flux's BFL names (no vector_in, no guidance_in), q/k norms as
    `.weight`."""
    flux = {key.replace("time_embed.", "time_text_embed.", 1) if key.startswith("time_embed.") else key: value
            for key, value in state.items()}  # fmt: skip
    return {(key.removesuffix("scale") + "weight" if key.endswith(("_norm.scale",)) else key): value
            for key, value in flux_to_bfl(flux).items()}  # fmt: skip


def save_transformer(pipe, path: Path, *, comfy: bool = False, prefix: str = "", drop: str | None = None) -> Path:
    """The transformer alone: diffusers' names, or (`comfy`) Comfy-Org's; `drop` leaves out the tensors whose names
    start with it ("double_blocks.0.")."""
    state = pipe.transformer.state_dict()
    state = comfy_names(state) if comfy else state
    save_file({prefix + k: v.contiguous() for k, v in state.items() if drop is None or not k.startswith(drop)},
              str(path))  # fmt: skip
    return path
