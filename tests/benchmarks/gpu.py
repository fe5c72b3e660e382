"""GPU benchmark (issue 7): the app's generation path against bare diffusers, fp16, 30 steps.

    .venv/bin/python tests/benchmarks/gpu.py [--steps 30] [--families sd15,sdxl] [--out FILE.json]

SD 1.5-size at 512x512 and SDXL-size at 1024x1024, random weights built from the configs in
resources/ (no downloads), saved once to a temporary folder in fp16 and loaded both ways. Prints
steps per second (app / bare, target >= 0.97), the peak VRAM of each memory mode, and fast mode
(channels_last + torch.compile on the UNet, SDPA as always): its steps per second after the compile
(target >= 1.20x bare) and how far its picture is from the normal one (fp16 noise only). Runs in a few
minutes on one H100.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - sets sys.path and the offline environment first

SIZES = {"sd15": 512, "sdxl": 1024}


def build_fp16(family: str, folder: Path) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from desktop.engine.resources import Resources

    configs = Resources.default().config_folder(family)
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
        parts = dict(vae=vae, text_encoder=text_encoder, unet=unet,
                     tokenizer=CLIPTokenizer.from_pretrained(configs / "tokenizer"))
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(configs / "text_encoder_2"))
            parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(configs / "tokenizer_2")
            scheduler = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(configs / "scheduler"))
            pipe = StableDiffusionXLPipeline(scheduler=scheduler, **parts)
        else:
            scheduler = PNDMScheduler.from_config(PNDMScheduler.load_config(configs / "scheduler"))
            pipe = StableDiffusionPipeline(scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False, **parts)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    del pipe
    torch.cuda.empty_cache()
    return folder


def bench_family(family: str, steps: int, work: Path) -> dict:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    import desktop
    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.jobs import Job
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.outputs import ImageWriter
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources
    from desktop.engine.runner import JobRunner

    size = SIZES[family]
    started = time.perf_counter()
    folder = build_fp16(family, work / family)
    build_seconds = time.perf_counter() - started
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    prompt = "a red fox in a spacesuit, studio light"

    bare = cls.from_pretrained(str(folder), dtype=torch.float16, local_files_only=True, **extra).to("cuda")
    bare.set_progress_bar_config(disable=True)

    def run_bare(n: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        bare(prompt=prompt, num_inference_steps=n, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(1))
        torch.cuda.synchronize()
        return time.perf_counter() - t

    run_bare(3)
    bare_times = [run_bare(steps) for _ in range(3)]
    bare = None  # free its VRAM before the app loads the same weights
    torch.cuda.empty_cache()

    paths = AppPaths.for_root(work / f"home-{family}").ensure()
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models))
    runner = JobRunner(backend, ImageWriter(paths.outputs), desktop.__version__)

    pictures: dict[str, str] = {}

    def run_app(n: int, mode: str = "full", fast: bool = False) -> float:
        request = GenerationRequest(prompt=prompt, model=str(folder), steps=n, seed=1, width=size, height=size,
                                    device="cuda", precision="fp16", memory_mode=mode, fast_mode=fast)
        events: list = []
        torch.cuda.synchronize()
        t = time.perf_counter()
        runner.run(Job(request), events.append)
        torch.cuda.synchronize()
        if type(events[-1]).__name__ != "JobFinished":
            raise SystemExit(f"{family} {mode}: {events[-1]}")
        pictures["fast" if fast else mode] = events[-1].paths[0]
        return time.perf_counter() - t

    run_app(3)
    app_times = [run_app(steps) for _ in range(3)]
    normal_picture = pictures["full"]
    started = time.perf_counter()
    run_app(3, fast=True)  # loads again (fast mode is part of the load) and compiles
    compile_seconds = time.perf_counter() - started
    fast_times = [run_app(steps, fast=True) for _ in range(3)]
    fast_difference = picture_difference(normal_picture, pictures["fast"])
    vram = {}
    for mode in ("full", "tiled", "offload"):
        backend.unload()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        seconds = run_app(steps, mode)
        vram[mode] = {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "seconds": round(seconds, 2)}
    backend.unload()
    bare_rate = steps / statistics.median(bare_times)
    app_rate = steps / statistics.median(app_times)
    fast_rate = steps / statistics.median(fast_times)
    return {
        "family": family, "size": size, "steps": steps, "build_seconds": round(build_seconds, 1),
        "bare_steps_per_s": round(bare_rate, 2), "app_steps_per_s": round(app_rate, 2),
        "ratio": round(app_rate / bare_rate, 3), "vram_by_mode": vram,
        "fast_steps_per_s": round(fast_rate, 2), "fast_vs_bare": round(fast_rate / bare_rate, 3),
        "fast_first_job_seconds": round(compile_seconds, 1), "fast_pixel_difference": fast_difference,
    }


def picture_difference(first: str, second: str) -> dict:
    """Mean and max absolute difference, in 8-bit levels, between two PNGs of the same job."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(first).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(second).convert("RGB"), dtype=np.int16)
    difference = np.abs(a - b)
    return {"mean": round(float(difference.mean()), 3), "max": int(difference.max())}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--out")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu.py needs a CUDA GPU.")
    print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="marble-gpu-") as work:
        for family in args.families.split(","):
            result = bench_family(family, args.steps, Path(work))
            print(json.dumps(result), flush=True)
            print(f"{family}: app/bare {result['ratio']} (target >= 0.97), fast/bare {result['fast_vs_bare']} "
                  f"(target >= 1.20), fast picture differs by {result['fast_pixel_difference']}",
                  file=sys.stderr, flush=True)
            results.append(result)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
