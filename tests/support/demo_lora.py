"""A LoRA trained by the tests on the demo model: every background turns black, whatever the caption says.

Real training (PEFT adapters on the UNet's attention and feed-forward projections, the same v-prediction loss that
trained the demo model), a few hundred steps on pictures whose captions keep their original background
colour while the pictures have a black one. Saved with diffusers' own `save_lora_weights`, so the app
loads it like any LoRA downloaded in the PEFT/diffusers format.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from desktop.engine.backends.diffusers_backend import clip_tokenizer
from desktop.engine.resources import Resources
from installer.demo_model import scenes
from installer.demo_model.training import diffusion_loss, token_ids, training_schedule

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def train_black_background_lora(model: Path, out_folder: Path, steps: int = 300, seed: int = 0) -> Path:
    """Train the LoRA and save it; returns the .safetensors file."""
    torch.manual_seed(seed)
    # The demo model ships no tokenizer files: the app hands it the one shared CLIP tokenizer.
    pipe = StableDiffusionPipeline.from_pretrained(
        model, torch_dtype=torch.float32, local_files_only=True, tokenizer=clip_tokenizer(Resources.default(), False)
    )
    rng = random.Random(seed)
    drawn = [_scene_not_on_black(rng) for _ in range(96)]
    captions = [scenes.caption(scene, rng) for scene in drawn]
    pictures = [scenes.render(replace(scene, background=("black",), split=""), rng) for scene in drawn]
    with torch.no_grad():
        images = torch.from_numpy(np.stack([np.asarray(p, np.float32) for p in pictures])).permute(0, 3, 1, 2)
        latents = pipe.vae.encode(images / 127.5 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        hidden = pipe.text_encoder(token_ids(pipe.tokenizer, captions))[0]
    unet = pipe.unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=TARGETS))
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=5e-3)
    schedule, generator = training_schedule(), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        picks = torch.randint(0, len(drawn), (16,), generator=generator)
        loss = diffusion_loss(unet, latents[picks], hidden[picks], schedule, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    out_folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out_folder, unet_lora_layers=get_peft_model_state_dict(unet), weight_name="black-background.safetensors"
    )
    return out_folder / "black-background.safetensors"


def _scene_not_on_black(rng: random.Random) -> scenes.Scene:
    while True:
        scene = scenes.random_scene(rng)
        if "black" not in scene.background and all(shape.colour != "black" for shape in scene.shapes):
            return scene
