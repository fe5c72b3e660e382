"""Pieces of diffusion training shared by the demo model's build and the tests' LoRA training.

Standard training with SD 1.x's betas rescaled to zero terminal SNR and SD 2.x's v-prediction (see
architecture.SCHEDULER_CONFIG for why), so the result samples correctly with every scheduler that
honours `rescale_betas_zero_snr` (DDIM, Euler, Euler a, DPM++ 2M, UniPC among the app's samplers).

Loss weighting. Measured against the picture (x0), the plain v loss weighs each timestep by SNR + 1.
We cap that weight at gamma, as min-SNR-gamma does (Hang et al. 2023), so the nearly clean timesteps,
whose fine detail a small model cannot learn anyway, do not dominate. We do not also multiply by the
SNR at high noise, as min-SNR's own v-prediction weight does: there the weight falls to about 0.005,
and the high-noise timesteps are where the layout is decided (where the shape goes, what it is). The
first demo model, trained that way, learnt colours but placed shapes at random.
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
    lowest_timestep: int = 0,
    high_share: float = 1.0,
    blind_below: int = 0,
    low_share: float = 0.0,
    blind_share: float = 1.0,
    pixel_weights: torch.Tensor | None = None,
    mislabel_share: float = 0.0,
) -> torch.Tensor:
    """Noise the scaled latents at random timesteps; the weighted MSE of the UNet's prediction of v.

    Timesteps are uniform over the schedule, except that with a `lowest_timestep` a `high_share` of the
    batch (on average) is drawn from there up instead: the layout is decided at high noise, and a model
    trained uniformly learns where shapes go too slowly (installer/demo_model/README.md, item 5).

    With `blind_below`, a `low_share` of the batch is drawn below it instead, and a `blind_share` of the
    samples below it is paired with another sample's caption (the batch rolled by one). Trained only on
    matching captions, the model reads the caption at low noise as firmly as at high noise, so image to
    image redraws a source that disagrees with the prompt, the more so at CFG 7, which multiplies the
    disagreement. Taught that a caption there is often wrong, it follows the picture where the picture
    is clear (the layout of a source) and the caption only where the picture leaves a doubt (yellow or
    orange); with every caption wrong it ignores the caption altogether and colours drift
    (installer/demo_model/README.md ("The demo model", item 7).

    A `mislabel_share` of the samples, at any timestep, is paired with another sample's caption too,
    as a share of real captions are wrong. The model then follows the caption only as far as
    captions are right, so without guidance (CFG 1) it misses that share of the time, and guidance,
    which amplifies what the caption adds over no caption, is what makes it follow (installer/demo_model/README.md,
    item 11).

    `pixel_weights` (batch, height, width), each picture's with a mean of 1, weigh the latent pixels
    against each other; the stage-4 polish weighs shapes above background with them."""
    if schedule.config.prediction_type != "v_prediction":
        raise ValueError("The demo model predicts v: epsilon is undefined at zero terminal SNR.")
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator)
    total = schedule.config.num_train_timesteps
    steps = torch.randint(0, total, (batch,), generator=generator)
    if lowest_timestep:  # no extra draws otherwise, so uniform training keeps its random stream
        high = torch.randint(lowest_timestep, total, (batch,), generator=generator)
        steps = torch.where(torch.rand(batch, generator=generator) < high_share, high, steps)
    wrong = torch.zeros(batch, dtype=torch.bool)
    if blind_below:  # likewise
        low = torch.randint(0, blind_below, (batch,), generator=generator)
        steps = torch.where(torch.rand(batch, generator=generator) < low_share, low, steps)
        wrong = steps < blind_below
        if blind_share < 1.0:
            wrong &= torch.rand(batch, generator=generator) < blind_share
    if mislabel_share:  # likewise
        wrong |= torch.rand(batch, generator=generator) < mislabel_share
    hidden = torch.where(wrong[:, None, None], hidden.roll(1, dims=0), hidden)
    noisy = schedule.add_noise(latents, noise, steps)
    predicted = unet(noisy, steps, hidden).sample
    alphas = schedule.alphas_cumprod[steps]
    snr = alphas / (1 - alphas)
    target = schedule.get_velocity(latents, noise, steps)
    weight = torch.clamp(MIN_SNR_GAMMA / (snr + 1), max=1.0)
    if pixel_weights is None:
        per_sample = (predicted - target).pow(2).mean(dim=(1, 2, 3))
    else:
        per_sample = ((predicted - target).pow(2).mean(dim=1) * pixel_weights).mean(dim=(1, 2))
    return (weight * per_sample).mean()


def token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """Captions -> (N, 77) ids, padded exactly as the pipeline pads a prompt."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
