"""The demo model's architecture: Stable Diffusion 1.x's component classes at small widths.

AutoencoderKL with four levels (the real 8x factor, 4 latent channels), a UNet2DConditionModel with
SD 1.x's block types, and a CLIPTextModel over the real 49,408-token vocabulary, so the demo model goes
through exactly the loading, sampling, preview, LoRA and inpainting code of real checkpoints.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

TEXT_WIDTH = 64

VAE_CONFIG: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 128,
    "scaling_factor": 0.18215,  # SD 1.x's; training pins the latent scale to it
}

UNET_CONFIG: dict[str, object] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    # Attention at 8x8 and 4x4 only: at 16x16 it would triple the cost of a training step. A fourth
    # level (plain DownBlock2D, as SD 1.x's lowest) takes the middle block down to 2x2, where every
    # cell touches the zero padding on a different two sides: the one source a UNet has for where it
    # is, which "in the top left corner" needs. Only 4% more per step. It did not make the model learn
    # positions (installer/demo_model/README.md), but it is where position information is strongest.
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_WIDTH,
    "attention_head_dim": 4,
    # 8 groups, not SD's 32: 32 groups of a 32-channel block is an instance norm, which removes every
    # spatially constant signal (the time embedding's shift among them) from each channel.
    "norm_num_groups": 8,
}

TEXT_CONFIG: dict[str, object] = {
    "vocab_size": 49408,
    "hidden_size": TEXT_WIDTH,
    "intermediate_size": 4 * TEXT_WIDTH,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

# SD 1.x's betas, rescaled to zero terminal SNR, predicting v as SD 2.x does (Lin et al. 2024, "Common
# Diffusion Noise Schedules and Sample Steps are Flawed"). With SD 1.x's own betas the last timestep
# keeps 6.8% of the picture: the model learns to read the layout from that faint signal rather than
# from the prompt, and at sampling time, starting from pure noise, it places shapes wherever the noise
# happens to suggest (the first demo model got 8% of positions right, chance is 11%). With zero
# terminal SNR the last timestep holds no picture at all, so the layout must come from the prompt.
# Epsilon prediction is undefined there; v is not. DDIM with trailing spacing starts at that timestep.
SCHEDULER_CONFIG: dict[str, object] = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def build_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
