"""Issue 26's benchmarks: the hires fix through the app's backend against the same two passes by hand,
and the tiled upscaler's peak memory against a whole-image run.

    .venv/bin/python tests/benchmarks/bench_hires.py [--repeats 2] [--size 256] [--steps 4] [--hires-steps 4]
    .venv/bin/python tests/benchmarks/bench_hires.py --upscale [--upscale-size 192] [--tile 64]

Hires: an SD 1.5-size model (the shipped configs, seeded random weights), 256 -> 512 with the Latent
upscaler at denoising 0.5. The app arm is DiffusersBackend.generate with a preview at every step (the
path every job takes); the bare arm is StableDiffusionPipeline(output_type="latent"), the latents
interpolated, then StableDiffusionImg2ImgPipeline, with the same seed. Interleaved, so machine noise
hits both alike; pixels must be identical.

Upscale: an ESRGAN-size RRDB network (23 blocks, 64 features, 4x; random weights), each arm in its own
child process so each peak RSS is its own: the whole image at once against tiles with overlap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - sets sys.path and the offline environment first
import numpy as np


def hires(args: argparse.Namespace) -> None:
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.jobs import CancelToken
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources

    folder = common.sd15_random_folder()
    paths = AppPaths.for_root(tempfile.mkdtemp(prefix="marble-bench-")).ensure()
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=1)
    request = GenerationRequest(
        prompt="a red fox in a spacesuit", negative_prompt="blurry", model=str(folder), steps=args.steps,
        cfg_scale=7.5, seed=42, width=args.size, height=args.size, device="cpu", hires_fix=True, hires_scale=2.0,
        hires_steps=args.hires_steps, hires_denoise=0.5,
    ).validate()
    backend.load(request)
    bare = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)
    second = StableDiffusionImg2ImgPipeline(**bare.components)
    second.set_progress_bar_config(disable=True)
    scheduler_config = bare.scheduler.config

    def run_app() -> np.ndarray:
        return np.asarray(backend.generate(request, 0, lambda info: None, CancelToken()).images[0])

    def run_bare() -> np.ndarray:
        bare.scheduler = type(bare.scheduler).from_config(scheduler_config)
        with torch.inference_mode():
            latents = bare(
                prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                guidance_scale=request.cfg_scale, width=request.width, height=request.height,
                generator=torch.Generator("cpu").manual_seed(42), output_type="latent",
            ).images
            size = (request.height * 2 // 8, request.width * 2 // 8)
            latents = torch.nn.functional.interpolate(latents, size=size, mode="bilinear", antialias=False)
            second.scheduler = type(bare.scheduler).from_config(scheduler_config)
            image = second(
                prompt=request.prompt, negative_prompt=request.negative_prompt, image=latents, strength=0.5,
                num_inference_steps=request.hires_steps, guidance_scale=request.cfg_scale,
                generator=torch.Generator("cpu").manual_seed(42),
            ).images[0]
        return np.asarray(image)

    app_times, bare_times, identical = [], [], True
    for _ in range(args.repeats):
        for arm, times in ((run_app, app_times), (run_bare, bare_times)):
            started = time.perf_counter()
            pixels = arm()
            times.append(time.perf_counter() - started)
            if arm is run_app:
                app_pixels = pixels
            else:
                identical &= bool(np.array_equal(app_pixels, pixels))
    print(f"hires fix {args.size}->{args.size * 2}, {args.steps}+{args.hires_steps} steps at 0.5, {args.repeats} "
          f"interleaved repeats")
    print(f"  app  {statistics.median(app_times):.2f} s (runs {', '.join(f'{t:.2f}' for t in app_times)})")
    print(f"  bare {statistics.median(bare_times):.2f} s (runs {', '.join(f'{t:.2f}' for t in bare_times)})")
    print(f"  ratio {statistics.median(app_times) / statistics.median(bare_times):.3f}, pixels identical: "
          f"{identical}, output {app_pixels.shape[1]}x{app_pixels.shape[0]}")


def upscale_child(size: int, tile: int) -> None:
    import torch

    from desktop.engine.backends.upscale import _build, upscale
    from desktop.engine.library.upscaler import UpscalerInfo

    torch.manual_seed(0)
    network = _build(UpscalerInfo("esrgan", 4, 23, 64, 3, 3, 32)).eval()
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    from PIL import Image

    started = time.perf_counter()
    result = upscale(network, 4, Image.fromarray(image), tile=tile, overlap=16)
    seconds = time.perf_counter() - started
    print(json.dumps({"peak_mb": common.peak_rss_mb(), "seconds": seconds, "size": result.size}))


def upscale_bench(args: argparse.Namespace) -> None:
    rows = {}
    for label, tile in (("whole", 0), ("tiled", args.tile)):
        out = subprocess.run(
            [sys.executable, str(Path(__file__)), "--upscale-child", str(args.upscale_size), str(tile)],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        rows[label] = json.loads(out)
    whole, tiled = rows["whole"], rows["tiled"]
    print(f"ESRGAN 4x (23 blocks, 64 features), {args.upscale_size} px -> {whole['size'][0]} px")
    print(f"  whole image: peak RSS {whole['peak_mb']:.0f} MB, {whole['seconds']:.1f} s")
    print(f"  tiles of {args.tile} (+16 overlap): peak RSS {tiled['peak_mb']:.0f} MB, {tiled['seconds']:.1f} s")
    print(f"  tiled / whole peak: {tiled['peak_mb'] / whole['peak_mb']:.2f}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--upscale-child":
        upscale_child(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--hires-steps", type=int, default=4)
    parser.add_argument("--upscale", action="store_true", help="the upscaler memory benchmark instead")
    parser.add_argument("--upscale-size", type=int, default=192)
    parser.add_argument("--tile", type=int, default=64)
    args = parser.parse_args()
    if args.upscale:
        upscale_bench(args)
    else:
        hires(args)


if __name__ == "__main__":
    main()
