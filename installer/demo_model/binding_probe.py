"""Can the demo UNet learn to put a named colour at a named place? A few-minute probe, not a build step.

    python -m installer.demo_model.binding_probe --targets colour --steps 400

Trains a fresh UNet and text encoder (architecture.py, optionally changed by --unet-config) only at
the last timestep, where zero terminal SNR leaves no picture in the input and the model must predict
the picture from the prompt alone: the layout is decided there. The pictures are synthetic latents,
not VAE output, so the probe needs no trained VAE:

- `--targets position`: a fixed blob (2 in every latent channel) at the caption's position on zeros;
- `--targets colour`: a background colour everywhere and the shape's colour in the blob, both turned
  into latents through the preview's latent-to-RGB factors (train.PREVIEW_FACTORS), as the demo VAE's
  latents are trained to match them.

`--captions full` words them as the training set does ("a large red circle in the top left corner on
a blue background"); `--captions position` says only where ("in the top left corner").

Every 50 steps it prints how many of 18 test prompts (9 positions, 2 colour pairs that --warmup and
--fixed-share never use) give a prediction nearest their own position's target (2/18 is chance), and
how many of those also have the shape's colour there. installer/demo_model/README.md has the figures: the
place alone is learnt in about 150 steps; a colour bound to its place starts only after about 500,
and at once when a share of every batch is in one fixed colour pair, where the place alone lowers the
loss; at every timestep (--timesteps all) neither is learnt, from t=700 up both are. (The anchored
real build, all timesteps, failed: its gate figures are in installer/demo_model/README.md.)
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTokenizer

from installer.demo_model import architecture, scenes
from installer.demo_model.train import PREVIEW_FACTORS, TOKENIZER
from installer.demo_model.training import diffusion_loss, token_ids, training_schedule

LATENT = scenes.SIZE // 8
BLOB = 3  # latent cells either side of the position's centre
TEST_PAIRS = (("blue", "red"), ("black", "yellow"))


def colour_latent(name: str) -> torch.Tensor:
    """The latent whose preview colour is `name`: least squares through the 4x3 factor table."""
    rgb = torch.tensor(scenes.COLOURS[name], dtype=torch.float32) / 127.5 - 1.0
    return torch.linalg.lstsq(PREVIEW_FACTORS.T, rgb[:, None]).solution[:, 0]


def target(kind: str, background: str, colour: str, position: str) -> torch.Tensor:
    fx, fy = scenes.POSITIONS[position]
    cx, cy = int(fx * LATENT), int(fy * LATENT)
    rows, columns = slice(max(0, cy - BLOB), cy + BLOB), slice(max(0, cx - BLOB), cx + BLOB)
    if kind == "position":
        picture = torch.zeros(4, LATENT, LATENT)
        picture[:, rows, columns] = 2.0
        return picture
    picture = colour_latent(background)[:, None, None].repeat(1, LATENT, LATENT)
    picture[:, rows, columns] = colour_latent(colour)[:, None, None]
    return picture


def caption(kind: str, background: str, colour: str, position: str, rng: random.Random) -> str:
    where = rng.choice(scenes._POSITION_PHRASES[position])
    if kind == "position":
        return where
    return f"a large {colour} circle {where} on {scenes._a(background)} background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", choices=("position", "colour"), default="colour")
    parser.add_argument("--captions", choices=("position", "full"), default="full")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--unet-config", default="{}", help="JSON overrides of architecture.UNET_CONFIG")
    parser.add_argument("--timesteps", choices=("last", "all"), default="last",
                        help="train at t=999 only, or at every timestep as the real build does")
    parser.add_argument("--lowest-timestep", type=int, default=0, help="with --timesteps all: draw from here up")
    parser.add_argument("--high-share", type=float, default=1.0,
                        help="with --lowest-timestep: the share of the batch drawn from there, the rest uniform")
    parser.add_argument("--warmup", type=int, default=0, help="first steps on white shapes on black only")
    parser.add_argument("--fixed-share", type=float, default=0.0, help="white on black share after that")
    args = parser.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**architecture.UNET_CONFIG, **json.loads(args.unet_config)})
    text_encoder = architecture.build_text_encoder()
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=8e-4)
    generator, rng = torch.Generator().manual_seed(1), random.Random(0)
    colours, positions = list(scenes.COLOURS), list(scenes.POSITIONS)
    last, schedule = torch.full((args.batch,), 999), training_schedule()
    began = time.monotonic()
    for step in range(args.steps):
        for group in optimiser.param_groups:
            group["lr"] = 8e-4 * min(1.0, (step + 1) / 50)
        items = []
        for _ in range(args.batch):
            if step < args.warmup or rng.random() < args.fixed_share:  # one pair: only the place to learn
                items.append(("black", "white", rng.choice(positions)))
                continue
            background = rng.choice(colours)
            items.append((background, rng.choice([c for c in colours if c != background]), rng.choice(positions)))
        targets = torch.stack([target(args.targets, *item) for item in items])
        hidden = text_encoder(token_ids(tokenizer, [caption(args.captions, *item, rng) for item in items]))[0]
        if args.timesteps == "all":
            loss = diffusion_loss(unet, targets, hidden, schedule, generator, args.lowest_timestep, args.high_share)
        else:  # at zero terminal SNR the input is pure noise and v is minus the picture
            noise = torch.randn(targets.shape, generator=generator)
            loss = (unet(noise, last, hidden).sample + targets).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # as the real training does
        optimiser.step()
        if step % 50 == 0 or step == args.steps - 1:
            hits, coloured = placed(unet, text_encoder, tokenizer, args.targets, args.captions)
            seconds = time.monotonic() - began
            # Position targets are a blob of 2s on zeros, with no colours in them: a count would mean nothing.
            colour_count = f", in its colour {coloured}/18" if args.targets == "colour" else ""
            print(f"step {step}: {seconds:.0f} s, loss {loss.item():.4f}, placed {hits}/18{colour_count}", flush=True)


@torch.no_grad()
def placed(unet, text_encoder, tokenizer, targets: str, captions: str) -> tuple[int, int]:
    """Test prompts whose prediction is nearest their own position's target, and of those, how many
    have the shape's colour there (the palette colour nearest the prediction inside the blob)."""
    positions = list(scenes.POSITIONS)
    palette = torch.stack([colour_latent(name) for name in scenes.COLOURS])
    hits = coloured = 0
    for background, colour in TEST_PAIRS:
        wanted = torch.stack([target(targets, background, colour, p) for p in positions])
        words = [caption(captions, background, colour, p, random.Random(0)) for p in positions]
        noise = torch.randn(wanted.shape, generator=torch.Generator().manual_seed(5))
        hidden = text_encoder(token_ids(tokenizer, words))[0]
        predicted = -unet(noise, torch.full((len(positions),), 999), hidden).sample
        distances = (predicted[:, None] - wanted[None]).pow(2).mean(dim=(2, 3, 4))
        right = distances.argmin(dim=1) == torch.arange(len(positions))
        hits += int(right.sum())
        for index, position in enumerate(positions):
            blob = target("position", background, colour, position)[0] > 0
            inside = predicted[index][:, blob].mean(dim=1)
            named = list(scenes.COLOURS)[int((palette - inside).pow(2).sum(dim=1).argmin())]
            coloured += bool(right[index]) and named == colour
    return hits, coloured


if __name__ == "__main__":
    main()
