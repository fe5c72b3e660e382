"""Pieces of diffusion training shared by the demo model's build and the tests' LoRA training.

Standard training with SD 1.x's noise schedule and SD 2.x's v-prediction, so the result samples
correctly with every scheduler the app offers. Loss weighting: min-SNR-gamma (Hang et al. 2023), which
makes small models converge several times faster than the plain loss.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from installer.demo_model.architecture import SCHEDULER_CONFIG

MIN_SNR_GAMMA = 5.0


def training_schedule() -> DDPMScheduler:
    config = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(config)


def diffusion_loss(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    schedule: DDPMScheduler,
    generator: torch.Generator,
) -> torch.Tensor:
    """Noise the scaled latents at random timesteps; the weighted MSE of the UNet's prediction (of v, or
    of the noise, as the schedule says)."""
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator)
    steps = torch.randint(0, schedule.config.num_train_timesteps, (batch,), generator=generator)
    noisy = schedule.add_noise(latents, noise, steps)
    predicted = unet(noisy, steps, hidden).sample
    alphas = schedule.alphas_cumprod[steps]
    snr = alphas / (1 - alphas)
    if schedule.config.prediction_type == "v_prediction":
        target = schedule.get_velocity(latents, noise, steps)
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + 1)
    else:
        target = noise
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    per_sample = (predicted - target).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """Captions -> (N, 77) ids, padded exactly as the pipeline pads a prompt."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
