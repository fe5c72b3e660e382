"""Train Marble's demo model from nothing: python -m installer.demo_model.train --out resources/demo-model

A build step, not part of CI: about 52 minutes on a 2-core CPU (measured figures in installer/demo_model/README.md).
Seeded and reproducible on the same machine and torch build. Four stages, each saved in --work so
an interrupted build resumes:

1. the VAE, on random 64x64 crops of rendered scenes (a quarter of the cost), with a small extra loss
   that makes the scaled latents map to the picture's colours through SD 1.x's published latent-to-RGB
   factors, so the app's live preview shows true colours; then the decoder alone on whole 128x128
   pictures, since its attention and group norms see the whole picture and a decoder trained on crops
   only smears colours across large areas (the encoder, and so the latent space, stay as they are);
2. the training pictures, rendered once and encoded to latent distributions, and anchor pictures: the
   same kind of scenes in white on black;
3. the UNet and the text encoder together, captions re-worded at every visit, 10% of captions dropped
   (classifier-free guidance), an exponential moving average of the weights kept for the release. The
   first steps see only anchors and every later batch a share of them; the first third draws every
   timestep from high noise, the rest only a share of them: both teach where shapes go (installer/demo_model/README.md,
   items 5 and 6); its loss weighs each shape's box 4 times the background, as stage 4's
   does (installer/demo_model/README.md, items 9 and 10);
4. a polish from the averaged weights: half its timesteps drawn below 300, every caption there
   another picture's, so the model follows the picture where it is clear and the caption only where
   it is not; image to image at a low strength then keeps its source (installer/demo_model/README.md, items 7 and 10).
   Its loss weighs each shape's box 4 times the background, which small shapes need (installer/demo_model/README.md,
   item 8). 5% of its captions, at every timestep, are another picture's too, as real captions are sometimes wrong: the
   model alone then follows the caption only as far as it trusts it, and guidance makes it follow
   (installer/demo_model/README.md, item 11); and 20% name another background than the picture's, without which
   the model alone never misses a background (installer/demo_model/README.md, item 12).

The result is a diffusers folder saved in float16 (20 MB).
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from transformers import CLIPTokenizer

from installer.demo_model import architecture, scenes
from installer.demo_model.training import diffusion_loss, token_ids, training_schedule

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "resources" / "tokenizers" / "clip"
PEAK_LR = 8e-4  # the denoiser's
SCALING_FACTOR = 0.18215  # SD 1.x's; the colour loss below pins the latent scale to it
# SD 1.x latent -> RGB factors (the same table the app's preview uses), as (4, 3).
PREVIEW_FACTORS = torch.tensor(
    [[0.3444, 0.1385, 0.0670], [0.1247, 0.4027, 0.1494], [-0.3192, 0.2513, 0.2103], [-0.1307, -0.1874, -0.7445]]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="diffusers folder to write")
    parser.add_argument("--work", type=Path, default=Path("build/demo-model"), help="stage checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--decoder-steps", type=int, default=800)
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--unet-steps", type=int, default=3800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--anchors", type=int, default=4000, help="white-on-black pictures (0: none)")
    parser.add_argument("--anchor-warmup", type=int, default=300, help="first denoiser steps on anchors only")
    parser.add_argument("--anchor-share", type=float, default=0.15, help="share of every later batch")
    parser.add_argument("--high-timestep", type=int, default=700, help="0: timesteps uniform")
    parser.add_argument("--high-only", type=int, default=1000, help="first steps with every timestep that high")
    parser.add_argument("--high-share", type=float, default=0.4, help="share of later timesteps that high")
    parser.add_argument("--denoiser-shape-weight", type=float, default=4.0,
                        help="stage 3: loss weight of shapes (1: even)")
    parser.add_argument("--polish-steps", type=int, default=900, help="stage 4's steps (0: none)")
    parser.add_argument("--polish-lr", type=float, default=2e-4)
    parser.add_argument("--blind-below", type=int, default=300, help="stage 4: wrong captions below it")
    parser.add_argument("--low-share", type=float, default=0.5, help="stage 4: share of timesteps that low")
    parser.add_argument("--blind-share", type=float, default=1.0, help="stage 4: share of wrong captions there")
    parser.add_argument("--mislabel-share", type=float, default=0.05,
                        help="stage 4: share of wrong captions at every timestep, so guidance matters")
    parser.add_argument("--wrong-background-share", type=float, default=0.2,
                        help="stage 4: share of captions naming another background, so guidance matters there too")
    parser.add_argument("--shape-weight", type=float, default=4.0, help="stage 4: loss weight of shapes (1: even)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    vae = train_vae(args.work / "vae.pt", args.vae_steps, args.seed)
    vae = finetune_decoder(args.work / "vae-decoder.pt", vae, args.decoder_steps, args.seed + 3)
    data = encode_dataset(args.work / "data.pt", vae, args.images, args.seed + 1)
    anchors = encode_dataset(args.work / "anchors.pt", vae, args.anchors, args.seed + 4, anchor_scene)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    recipe = Recipe(args.unet_steps, args.batch, args.anchor_warmup, args.anchor_share, args.high_timestep,
                    args.high_only, args.high_share, args.denoiser_shape_weight)
    models = train_denoiser(args.work, data, anchors, tokenizer, vae, recipe, args.seed + 2)
    polish = Polish(args.polish_steps, args.polish_lr, args.blind_below, args.low_share, args.blind_share,
                    args.shape_weight, args.mislabel_share, args.wrong_background_share)
    unet, text_encoder = polish_denoiser(args.work / "polish.pt", data, anchors, tokenizer, models, recipe, polish,
                                         args.seed + 5)
    save_release(args.out, vae, unet, text_encoder, tokenizer)
    log(f"done in {(time.monotonic() - started) / 60:.1f} min -> {args.out}")


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def to_tensor(images: list) -> torch.Tensor:
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def cosine_lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ---- stage 1: VAE ---------------------------------------------------------------------------------------


def train_vae(checkpoint: Path, steps: int, seed: int):
    torch.manual_seed(seed)
    vae = architecture.build_vae()
    vae.register_to_config(scaling_factor=SCALING_FACTOR)
    if checkpoint.exists():
        vae.load_state_dict(torch.load(checkpoint, weights_only=True))
        log("VAE: loaded from the work folder")
        return vae.eval().requires_grad_(False)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    batch, crop = 16, 64
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, steps, 1e-3)
        pictures = []
        for _ in range(batch):
            image = scenes.render(scenes.random_scene(rng), rng)
            x, y = rng.randrange(0, scenes.SIZE - crop + 1, 8), rng.randrange(0, scenes.SIZE - crop + 1, 8)
            pictures.append(image.crop((x, y, x + crop, y + crop)))
        images = to_tensor(pictures)
        posterior = vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        decoded = vae.decode(latents).sample
        reconstruction = (decoded - images).abs().mean() + 0.5 * (decoded - images).pow(2).mean()
        colours = torch.einsum("bchw,cr->brhw", posterior.mean * SCALING_FACTOR, PREVIEW_FACTORS)
        colour_loss = (colours - torch.nn.functional.avg_pool2d(images, 8)).pow(2).mean()
        loss = reconstruction + 0.1 * colour_loss + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"VAE step {step}: reconstruction {reconstruction.item():.4f} colour {colour_loss.item():.4f}")
    torch.save(vae.state_dict(), checkpoint)
    return vae.eval().requires_grad_(False)


def finetune_decoder(checkpoint: Path, vae, steps: int, seed: int):
    if checkpoint.exists():
        vae.decoder.load_state_dict(torch.load(checkpoint, weights_only=True))
        log("VAE decoder: loaded from the work folder")
        return vae
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    decoder = vae.decoder.train().requires_grad_(True)
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=3e-4, weight_decay=0.0)
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, steps, 3e-4, warmup=50)
        images = to_tensor([scenes.render(scenes.random_scene(rng), rng) for _ in range(8)])
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        decoded = vae.decode(latents).sample
        loss = (decoded - images).abs().mean() + 0.5 * (decoded - images).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"VAE decoder step {step}: reconstruction {loss.item():.4f}")
    torch.save(decoder.state_dict(), checkpoint)
    vae.eval().requires_grad_(False)
    return vae


# ---- stage 2: the training pictures ----------------------------------------------------------------------


def anchor_scene(rng: random.Random) -> scenes.Scene:
    """A training scene redrawn in white on black: one colour pair, so that knowing only where the shapes
    go already lowers the loss (installer/demo_model/README.md, item 5). Never a held-out prompt."""
    while True:
        scene = scenes.random_scene(rng)
        shapes = tuple(replace(shape, colour="white") for shape in scene.shapes)
        anchor = scenes.Scene(shapes, ("black",))
        if scenes.single_key(anchor) not in scenes.HELD_OUT_KEYS:
            return anchor


def encode_dataset(
    file: Path, vae, count: int, seed: int, draw: Callable[[random.Random], scenes.Scene] = scenes.random_scene
) -> dict:
    if file.exists():
        log(f"data: {file.name} loaded from the work folder")
        return torch.load(file, weights_only=False)
    if count == 0:
        return {"scenes": [], "mean": torch.zeros(0, 4, 16, 16), "std": torch.zeros(0, 4, 16, 16)}
    rng = random.Random(seed)
    drawn = [draw(rng) for _ in range(count)]
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, count, 128):
            images = to_tensor([scenes.render(scene, rng) for scene in drawn[start : start + 128]])
            posterior = vae.encode(images).latent_dist
            means.append(posterior.mean * SCALING_FACTOR)
            stds.append(posterior.std * SCALING_FACTOR)
    data = {"scenes": drawn, "mean": torch.cat(means), "std": torch.cat(stds)}
    log(f"data: {file.name}: {count} pictures, scaled latent std {data['mean'].std().item():.3f}")
    torch.save(data, file)
    return data


# ---- stage 3: UNet and text encoder -------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How the denoiser is trained: see the command-line help of each field."""

    steps: int
    batch: int
    anchor_warmup: int
    anchor_share: float
    high_timestep: int
    high_only: int
    high_share: float
    shape_weight: float = 1.0  # the loss weight of shapes' boxes (shape_weights); 1 weighs every pixel alike


def train_denoiser(work: Path, data: dict, anchors: dict, tokenizer, vae, recipe: Recipe, seed: int):
    steps, batch = recipe.steps, recipe.batch
    torch.manual_seed(seed)
    unet, text_encoder = architecture.build_unet(), architecture.build_text_encoder()
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=PEAK_LR, weight_decay=0.01)
    start = 0
    resume = work / "denoiser.pt"
    if resume.exists():
        state = torch.load(resume, weights_only=False)
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            module.load_state_dict(state[key])
        optimiser.load_state_dict(state["optimiser"])
        start = state["step"]
        torch.set_rng_state(state["torch_rng"])
        log(f"denoiser: resumed at step {start}")
    rng = random.Random(seed + start)
    generator = torch.Generator().manual_seed(seed + start)
    schedule = training_schedule()
    pictures = TrainingPictures(data, anchors, batch, tokenizer, {})
    began = time.monotonic()
    for step in range(start, steps):
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, steps, PEAK_LR)
        share = 1.0 if step < recipe.anchor_warmup else recipe.anchor_share
        latents, hidden, drawn = pictures.draw(share, text_encoder, generator, rng)
        high_share = 1.0 if step < recipe.high_only else recipe.high_share
        weights = shape_weights(drawn, recipe.shape_weight, latents.shape[-1]) if recipe.shape_weight != 1 else None
        loss = diffusion_loss(unet, latents, hidden, schedule, generator, recipe.high_timestep, high_share,
                              pixel_weights=weights)
        optimiser_step(optimiser, loss, params)
        update_ema(((ema_unet, unet), (ema_text, text_encoder)), min(0.999, (1 + step) / (10 + step)))
        if step % 50 == 0:
            rate = (step + 1 - start) / (time.monotonic() - began)
            log(f"denoiser step {step}: loss {loss.item():.4f}, {rate:.2f} steps/s")
        if (step + 1) % 500 == 0 or step == steps - 1:
            state = {
                "unet": unet.state_dict(),
                "text": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "optimiser": optimiser.state_dict(),
                "step": step + 1,
                "torch_rng": torch.get_rng_state(),
            }
            torch.save(state, resume)
            sample_grid(work / f"samples-{step + 1:05d}.png", vae, ema_unet, ema_text, tokenizer)
    return ema_unet, ema_text


@dataclass(frozen=True)
class TrainingPictures:
    """Where training batches come from: anchor pictures and training pictures."""

    data: dict
    anchors: dict
    size: int
    tokenizer: CLIPTokenizer
    cache: dict  # caption -> token ids, filled as captions come up
    wrong_background_share: float = 0.0  # captions that name another background (see `misdescribed`)

    def draw(self, anchor_share: float, text_encoder, generator: torch.Generator, rng: random.Random) -> tuple:
        """A batch, `anchor_share` of it anchors (none when there are none) and the rest training
        pictures: latents, their captions' hidden states (captions re-worded at every visit, 10%
        dropped) and their scenes."""
        anchored = int(round(self.size * anchor_share)) if self.anchors["scenes"] else 0
        latents, drawn = draw_batch(self.anchors, anchored, generator)
        more_latents, more_drawn = draw_batch(self.data, self.size - anchored, generator)
        latents, drawn = torch.cat([latents, more_latents]), drawn + more_drawn
        captions = ["" if rng.random() < 0.1 else scenes.caption(self.misdescribed(scene, rng), rng) for scene in drawn]
        missing = [c for c in set(captions) if c not in self.cache]
        if missing:
            self.cache.update(zip(missing, token_ids(self.tokenizer, missing), strict=True))
        return latents, text_encoder(torch.stack([self.cache[c] for c in captions]))[0], drawn

    def misdescribed(self, scene: scenes.Scene, rng: random.Random) -> scenes.Scene:
        """The scene to caption: a `wrong_background_share` of the time the same shapes on another
        background, in colours neither the background nor any shape has. A background is most of the
        picture and the first thing the sampler settles, so whole-caption mislabelling leaves the
        model sure of it; this makes it unsure enough that without guidance it misses backgrounds
        too (installer/demo_model/README.md, item 12). No random draws without a share, so stage 3 and
        earlier polishes replay unchanged."""
        if not self.wrong_background_share or rng.random() >= self.wrong_background_share:
            return scene
        taken = set(scene.background) | {shape.colour for shape in scene.shapes}
        free = [colour for colour in scenes.COLOURS if colour not in taken]
        return replace(scene, background=tuple(rng.sample(free, len(scene.background))))

def optimiser_step(optimiser: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimiser.step()


def update_ema(pairs, decay: float) -> None:
    with torch.no_grad():
        for ema, live in pairs:
            for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                e.lerp_(p, 1 - decay)


# ---- stage 4: the low-noise polish ---------------------------------------------------------------------


@dataclass(frozen=True)
class Polish:
    """The last stage: a short run at a constant, lower learning rate from the denoiser's averaged
    weights, half of its timesteps at low noise and half of the captions there wrong
    (training.diffusion_loss, `blind_below`), so that image to image at a low strength keeps its
    source under guidance; and the loss weighs the shapes' boxes `shape_weight` times the rest
    (`shape_weights`), since a small shape is a few latent pixels among 256 of background. A
    `mislabel_share` of its captions, at every timestep, belongs to another picture, and a
    `wrong_background_share` names another background, so that the model alone is less sure of the
    caption and guidance matters (installer/demo_model/README.md, items 11 and 12)."""

    steps: int
    lr: float
    blind_below: int
    low_share: float
    blind_share: float
    shape_weight: float = 1.0
    mislabel_share: float = 0.0  # training.diffusion_loss: captions wrong at every timestep
    wrong_background_share: float = 0.0  # TrainingPictures.misdescribed
    ema_decay: float = 0.98  # a short run: an average over its last ~50 steps


def shape_weights(drawn: list, factor: float, side: int) -> torch.Tensor:
    """(batch, side, side) loss weights: `factor` on every shape's box, 1 elsewhere, scaled to a mean of
    1 per picture. The box is the shape's nominal place and its largest size (scenes.SIZE_JITTER),
    grown by half a latent pixel, a little more than the render's centre jitter (scenes.JITTER: 0.48 of
    a latent pixel at 16), so it covers the edges where kinds differ."""
    weights = torch.ones(len(drawn), side, side)
    for index, scene in enumerate(drawn):
        for shape in scene.shapes:
            fx, fy = scenes.POSITIONS[shape.position]
            half = scenes.EXTENT[shape.size] * side * (1 + scenes.SIZE_JITTER) / 2 + 0.5
            left, right = int(max(0, fx * side - half)), int(min(side, fx * side + half + 1))
            top, bottom = int(max(0, fy * side - half)), int(min(side, fy * side + half + 1))
            weights[index, top:bottom, left:right] = factor
    return weights / weights.mean(dim=(1, 2), keepdim=True)


def polish_denoiser(checkpoint: Path, data: dict, anchors: dict, tokenizer, models: tuple, recipe: Recipe,
                    polish: Polish, seed: int) -> tuple:
    """The polished (unet, text encoder), averaged; `models` (stage 3's) unchanged."""
    if polish.steps == 0:
        return models
    ema_unet, ema_text = (copy.deepcopy(model) for model in models)
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        ema_unet.load_state_dict(state["unet"])
        ema_text.load_state_dict(state["text"])
        log("polish: loaded from the work folder")
        return ema_unet, ema_text
    unet, text_encoder = (copy.deepcopy(model).train().requires_grad_(True) for model in models)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=polish.lr, weight_decay=0.01)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    schedule = training_schedule()
    pictures = TrainingPictures(data, anchors, recipe.batch, tokenizer, {}, polish.wrong_background_share)
    for step in range(polish.steps):
        latents, hidden, drawn = pictures.draw(recipe.anchor_share, text_encoder, generator, rng)
        # Even weights go through the plain loss, so a polish without them replays earlier builds exactly.
        weights = shape_weights(drawn, polish.shape_weight, latents.shape[-1]) if polish.shape_weight != 1 else None
        loss = diffusion_loss(unet, latents, hidden, schedule, generator, recipe.high_timestep, recipe.high_share,
                              polish.blind_below, polish.low_share, polish.blind_share, weights,
                              polish.mislabel_share)
        optimiser_step(optimiser, loss, params)
        update_ema(((ema_unet, unet), (ema_text, text_encoder)), polish.ema_decay)
        if step % 50 == 0 or step == polish.steps - 1:
            log(f"polish step {step}: loss {loss.item():.4f}")
    torch.save({"unet": ema_unet.state_dict(), "text": ema_text.state_dict()}, checkpoint)
    return ema_unet.requires_grad_(False), ema_text.requires_grad_(False)


def draw_batch(data: dict, count: int, generator: torch.Generator) -> tuple[torch.Tensor, list]:
    """`count` pictures at random: latents sampled from their encoded distributions, and their scenes.
    None, and no random draws, for a count of 0 (so --anchors 0 replays the build without anchors)."""
    if count == 0:
        return torch.zeros(0, 4, 16, 16), []
    picks = torch.randint(0, len(data["scenes"]), (count,), generator=generator)
    latents = data["mean"][picks] + data["std"][picks] * torch.randn((count, 4, 16, 16), generator=generator)
    return latents, [data["scenes"][i] for i in picks.tolist()]


def sample_grid(file: Path, vae, unet, text_encoder, tokenizer) -> None:
    """Eight held-out prompts, 20 DDIM steps at CFG 7: a picture to watch the training by."""
    pipe = _pipeline(vae, unet, text_encoder, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    prompts = [scenes.prompt_for(scene) for scene in scenes.held_out_scenes()[:8]]
    images = pipe(prompts, num_inference_steps=20, guidance_scale=7.0, height=128, width=128,
                  generator=torch.Generator().manual_seed(0)).images
    grid = images[0].resize((128 * 8, 128))
    for index, image in enumerate(images):
        grid.paste(image, (128 * index, 0))
    grid.save(file)
    log(f"samples: {file.name}: " + " | ".join(prompts[:3]))


def _pipeline(vae, unet, text_encoder, tokenizer) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(training_schedule().config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_release(out: Path, vae, unet, text_encoder, tokenizer) -> None:
    pipe = _pipeline(vae, unet, text_encoder, tokenizer)
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    # No tokenizer files: Marble loads the demo model's tokenizer from its one shared copy under
    # resources/tokenizers/ (TOKENIZER, what it was trained with), which saves shipping 2 MB twice.
    shutil.rmtree(out / "tokenizer")


if __name__ == "__main__":
    main()
