"""A tiny random ERNIE-Image: diffusers' ErnieImageTransformer2DModel with small dimensions (its text input narrower
than its width, so `text_proj` is there as in the real model's 3072 -> 4096), Flux.2's VAE (tiny, its batch-norm
statistics away from the identity; three levels, so that its factor, 8, is the real one's halved), a tiny Mistral 3
(Mistral3Model, the class the pipeline loads; three text layers, of which the pipeline reads the second-to-last hidden
state) and the byte-level Mistral tokenizer of the Flux.2 tests.
The transformer's names are its release's (and ComfyUI's, under `model.diffusion_model.`)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ErnieImagePipeline, ErnieImageTransformer2DModel, FlowMatchEulerDiscreteScheduler
from transformers import Mistral3Config, Mistral3Model

from tests.support.tiny_dit import CONFIGS, _jitter
from tests.support.tiny_flux2 import MISTRAL_VOCAB, tiny_mistral_tokenizer, tiny_vae

LATENT_CHANNELS = 4  # the tiny VAE's; the transformer reads them in 2x2 patches (16)
# The text encoder's width: not the tiny Flux.2 dev's Mistral's (16), whose folder must not pass for an ERNIE-Image one.
TEXT_WIDTH = 24


def tiny_encoder(seed: int = 0) -> Mistral3Model:
    config = Mistral3Config(
        text_config={"model_type": "mistral", "hidden_size": TEXT_WIDTH, "intermediate_size": TEXT_WIDTH,
                     "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 8,
                     "vocab_size": MISTRAL_VOCAB, "sliding_window": None},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 16,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8, "image_size": 32,
                       "patch_size": 16},
        image_token_index=MISTRAL_VOCAB - 7, spatial_merge_size=1, multimodal_projector_bias=False,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    encoder = Mistral3Model(config).eval()
    _jitter(encoder, seed + 2)
    return encoder


def tiny_transformer(seed: int = 0, layers: int = 2) -> ErnieImageTransformer2DModel:
    torch.manual_seed(seed)
    transformer = ErnieImageTransformer2DModel(
        hidden_size=32, num_attention_heads=2, num_layers=layers, ffn_hidden_size=48,
        in_channels=4 * LATENT_CHANNELS, out_channels=4 * LATENT_CHANNELS, text_in_dim=TEXT_WIDTH,
        rope_axes_dim=(4, 6, 6),
    )  # fmt: skip
    _jitter(transformer, seed)  # its modulation and output layer start at zero
    return transformer


def build_tiny_ernie(seed: int = 0, layers: int = 2) -> ErnieImagePipeline:
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(CONFIGS / "ernie-image" / "scheduler"))
    torch.manual_seed(seed + 3)
    return ErnieImagePipeline(
        # Three levels: latents a quarter of the picture's side, in 2x2 patches an eighth (the pipeline's factor, 8:
        # sides a multiple of 8, not 16, where the real model's are a multiple of 16, not 32).
        transformer=tiny_transformer(seed, layers), vae=tiny_vae(LATENT_CHANNELS, levels=3),
        text_encoder=tiny_encoder(seed),
        tokenizer=tiny_mistral_tokenizer(), scheduler=scheduler,
    )  # fmt: skip


def tiny_ministral3(seed: int = 0) -> Mistral3Model:
    """Ministral 3 (its own language model: YaRN positions, Llama 4's attention scaling past the original context,
    here 4 tokens so that a prompt reaches it) of the tiny tekken vocabulary, norms jittered away from 1."""
    from tests.support.tiny_flux2 import TEKKEN_SPECIALS, TEKKEN_VOCAB

    rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 4,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
    config = Mistral3Config(
        text_config={"model_type": "ministral3", "hidden_size": TEXT_WIDTH, "intermediate_size": TEXT_WIDTH,
                     "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 8,
                     "vocab_size": TEKKEN_VOCAB, "max_position_embeddings": 64, "rope_parameters": rope},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "head_dim": 8, "image_size": 32, "patch_size": 16},
        image_token_index=TEKKEN_SPECIALS.index("[IMG]"), spatial_merge_size=1, multimodal_projector_bias=False,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    encoder = Mistral3Model(config).eval()
    _jitter(encoder, seed + 2)
    return encoder


def build_tiny_ernie_tekken(folder: Path, seed: int = 0) -> ErnieImagePipeline:
    """ERNIE-Image with a tiny Ministral 3 and the tokenizer transformers converts from the tiny tekken.json (written
    into `folder`): what a library encoder file and its carried tokenizer must reproduce."""
    from tests.support.tiny_flux2 import tekken_reference_tokenizer

    pipe = build_tiny_ernie(seed)
    return ErnieImagePipeline(
        transformer=pipe.transformer, vae=pipe.vae, text_encoder=tiny_ministral3(seed),
        tokenizer=tekken_reference_tokenizer(folder), scheduler=pipe.scheduler,
    )  # fmt: skip


def comfyui_ministral_state(encoder: Mistral3Model) -> dict[str, torch.Tensor]:
    """The language model under `model.` (no vision tower or projector), as ComfyUI keeps its Mistral files."""
    return {"model." + key.removeprefix("language_model."): value.detach().clone().contiguous()
            for key, value in encoder.state_dict().items() if key.startswith("language_model.")}  # fmt: skip
