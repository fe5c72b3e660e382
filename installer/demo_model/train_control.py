"""Train the demo model's ControlNet: python -m installer.demo_model.train_control --out resources/demo-control

A build step, not part of CI (measured figures in installer/demo_model/README.md, "The demo ControlNet").
Seeded; an interrupted run resumes from the checkpoint in --work.

The ControlNet is the demo UNet's encoder (`ControlNetModel.from_unet`, its zero convolutions zero as
usual) with a small conditioning embedding, trained with the demo UNet, text encoder and VAE frozen,
on the demo model's own scenes (scenes.random_scene, so no held-out combination) with the scene's
Canny edge map as the control image: Marble's own `control_preprocess.preprocess("canny", ...)`, so
what the ControlNet learnt from is what the app feeds it at generation time.

Captions never name the right position: most name none, a share name a wrong one. So the only thing
that tells the model where the shape goes is the control image, and where the prompt disagrees the
edge map wins. 10% of captions are empty, as classifier-free guidance runs the ControlNet on the
unconditional half too. The loss is the demo model's own (`training.diffusion_loss`: v-prediction on
SD 1.x's betas rescaled to zero terminal SNR), with a share of timesteps drawn from 700 up, where the
layout is decided (installer/demo_model/README.md, item 5).

The result is one float16 safetensors file in diffusers' ControlNet layout, which the library
imports as an SD 1.x-class ControlNet and the backend builds from the loaded UNet's config.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from desktop.engine.control_preprocess import preprocess
from installer.demo_model import scenes
from installer.demo_model.training import diffusion_loss, token_ids, training_schedule

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "resources" / "demo-model"
TOKENIZER = REPO / "resources" / "tokenizers" / "clip"
FILE_NAME = "demo-control-canny.safetensors"
SCALING_FACTOR = 0.18215  # the demo VAE's (train.SCALING_FACTOR)
# Channels of the conditioning embedding (128 -> 16 pixels in three stride-2 steps). diffusers'
# default (16, 32, 96, 256) is made for real photographs; edge maps of flat shapes need far less.
EMBEDDING_CHANNELS = (8, 16, 32, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the ControlNet file into")
    parser.add_argument("--work", type=Path, default=Path("build/demo-control"), help="data and checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument(
        "--embedding-lr-scale", type=float, default=10.0, help="the conditioning embedding's learning rate, times --lr"
    )
    parser.add_argument("--wrong-position-share", type=float, default=0.2, help="captions naming a wrong place")
    parser.add_argument("--high-share", type=float, default=0.8, help="share of timesteps from 700 up")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice); 1 on a busy CPU")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()

    vae = AutoencoderKL.from_pretrained(DEMO_MODEL, subfolder="vae", torch_dtype=torch.float32).requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(DEMO_MODEL, subfolder="unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(DEMO_MODEL, subfolder="text_encoder", torch_dtype=torch.float32)
    unet.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    data = encode_dataset(args.work / "data.pt", vae, args.images, args.seed + 1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING_CHANNELS)
    train(controlnet, unet, text_encoder, tokenizer, data, args)
    save_release(args.out / FILE_NAME, controlnet)
    log(f"done in {(time.monotonic() - started) / 60:.1f} min: {args.out / FILE_NAME}")


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def edge_map(image) -> np.ndarray:
    """The control image Marble makes from `image` with the canny preprocessor, one channel, uint8."""
    return (preprocess("canny", image)[..., 0] * 255).astype(np.uint8)


def encode_dataset(file: Path, vae, count: int, seed: int) -> dict:
    """Training scenes: their scaled latent distributions and their edge maps, rendered once."""
    if file.exists():
        log(f"data: {file.name} loaded from the work folder")
        return torch.load(file, weights_only=False)
    rng = random.Random(seed)
    drawn = [scenes.random_scene(rng) for _ in range(count)]
    means, stds, edges = [], [], []
    with torch.no_grad():
        for start in range(0, count, 128):
            images = [scenes.render(scene, rng) for scene in drawn[start : start + 128]]
            edges += [torch.from_numpy(edge_map(image)) for image in images]
            pixels = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images]))
            posterior = vae.encode(pixels.permute(0, 3, 1, 2) / 127.5 - 1.0).latent_dist
            means.append(posterior.mean * SCALING_FACTOR)
            stds.append(posterior.std * SCALING_FACTOR)
    data = {"scenes": drawn, "mean": torch.cat(means), "std": torch.cat(stds), "edges": torch.stack(edges)}
    log(f"data: {count} pictures encoded")
    torch.save(data, file)
    return data


def position_free_caption(scene: scenes.Scene, rng: random.Random, wrong_share: float) -> str:
    """A caption that never names where a shape is; a share of one-shape captions name a wrong place."""
    background = " and ".join(scene.background)
    if len(scene.shapes) == 1 and rng.random() < wrong_share:
        shape = scene.shapes[0]
        wrong = rng.choice([p for p in scenes.POSITIONS if p != shape.position])
        moved = scenes.Scene((replace(shape, position=wrong),), scene.background[:1])
        return scenes.prompt_for(moved).replace(f"{scene.background[0]} background", f"{background} background")
    things = " and ".join(f"a {s.size} {s.colour} {s.kind}" for s in scene.shapes)
    return f"{things} on a {background} background"


class Controlled(torch.nn.Module):
    """The frozen UNet with the ControlNet's residuals, called as diffusion_loss calls a UNet."""

    def __init__(self, unet, controlnet, control: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.controlnet, self.control = unet, controlnet, control

    def forward(self, noisy, steps, hidden):
        down, mid = self.controlnet(noisy, steps, hidden, controlnet_cond=self.control, return_dict=False)
        return self.unet(noisy, steps, hidden, down_block_additional_residuals=down, mid_block_additional_residual=mid)


def train(controlnet, unet, text_encoder, tokenizer, data: dict, args) -> None:
    checkpoint = args.work / "checkpoint.pt"
    schedule = training_schedule()
    # The conditioning embedding starts from nothing and ends in a zero convolution, and what reaches
    # it are thin edges; at the trunk's rate the model learns a better position-blind denoiser long
    # before it reads the edges (a probe at step 750 of a run at one rate: residuals the same, to four
    # decimals, for edges at the top left and the bottom right). Ten times the rate there reads them.
    embedding = list(controlnet.controlnet_cond_embedding.parameters())
    trunk = [p for n, p in controlnet.named_parameters() if not n.startswith("controlnet_cond_embedding.")]
    params = embedding + trunk
    optimiser = torch.optim.AdamW(
        [{"params": embedding, "scale": args.embedding_lr_scale}, {"params": trunk, "scale": 1.0}],
        lr=args.lr,
        weight_decay=0.0,
    )
    generator = torch.Generator().manual_seed(args.seed + 2)
    rng = random.Random(args.seed + 3)
    step = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        controlnet.load_state_dict(state["controlnet"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        rng.setstate(state["rng"])
        step = state["step"]
        log(f"resumed at step {step}")
    cache: dict[str, torch.Tensor] = {}

    def hidden_for(captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in cache]
        if missing:
            with torch.no_grad():
                states = text_encoder(token_ids(tokenizer, missing))[0]
            cache.update(zip(missing, states, strict=True))
        return torch.stack([cache[c] for c in captions])

    controlnet.train()
    began, began_step, losses = time.monotonic(), step, []
    while step < args.steps:
        for group in optimiser.param_groups:
            group["lr"] = (
                group["scale"] * args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            )
        picks = torch.randint(0, len(data["scenes"]), (args.batch,), generator=generator)
        latents = data["mean"][picks] + data["std"][picks] * torch.randn((args.batch, 4, 16, 16), generator=generator)
        captions = [
            "" if rng.random() < 0.1 else position_free_caption(data["scenes"][i], rng, args.wrong_position_share)
            for i in picks.tolist()
        ]
        control = data["edges"][picks].float().div(255.0)[:, None].expand(-1, 3, -1, -1)
        model = Controlled(unet, controlnet, control)
        loss = diffusion_loss(model, latents, hidden_for(captions), schedule, generator, 700, args.high_share)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        losses.append(loss.item())
        step += 1
        if step % 25 == 0:
            rate = (step - began_step) / (time.monotonic() - began)
            log(f"step {step}/{args.steps} loss {np.mean(losses[-25:]):.4f} ({rate:.2f} steps/s)")
        if step % args.checkpoint_every == 0 or step == args.steps:
            state = {
                "controlnet": controlnet.state_dict(),
                "optimiser": optimiser.state_dict(),
                "generator": generator.get_state(),
                "rng": rng.getstate(),
                "step": step,
            }
            torch.save(state, checkpoint)
            save_release(args.work / FILE_NAME, controlnet)  # a file to try while training goes on


def save_release(file: Path, controlnet) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in controlnet.state_dict().items()}
    save_file(state, str(file), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
