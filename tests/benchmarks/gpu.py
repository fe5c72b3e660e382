"""GPU benchmark (issue 7): the app's generation path against bare diffusers, fp16, 30 steps.

    .venv/bin/python tests/benchmarks/gpu.py [--steps 30] [--families sd15,sdxl] [--out FILE.json]
    .venv/bin/python tests/benchmarks/gpu.py --smoke    # the same code path on the CPU, tiny sizes, no compile
    .venv/bin/python tests/benchmarks/gpu.py --families flux,sd3.5 --steps 28   # the DiTs (gpu_dit.py)
    .venv/bin/python tests/benchmarks/gpu.py --families flux3 --steps 28        # FLUX.3 against its modular pipeline

SD 1.5-size at 512x512 and SDXL-size at 1024x1024, random weights built from the configs in
resources/ (no downloads), saved once to a temporary folder in fp16 and loaded both ways. Prints
steps per second (app / bare, target >= 0.97), the peak VRAM of each memory mode, and fast mode
(channels_last + torch.compile on the UNet, SDPA as always): its steps per second after the compile
(target >= 1.20x bare) and how far its picture is from the normal one (fp16 noise only). The
variants run interleaved, after one untimed job each; beside the app's job it times the app without
previews and the bare call followed by a PNG save, so that a ratio under target says whether previews
or saving cost it. Runs in under four minutes on one H100 (211 s with --no-fast, 2026-11-27).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401 - sets sys.path and the offline environment first
from gpu_dit import DIT_FAMILIES, bench_dit
from gpu_speed import batch_throughput, first_step_after_restart, largest_batches, unet_alone

SIZES = {"sd15": 512, "sdxl": 1024}
# The sections added for issue 29 (gpu_speed.py), each skippable with --sections to fit a time budget.
SECTIONS = ("unet", "batch8", "largest_batch", "restart")
# SD 1.5 jobs take about a second on an H100/H200 and drifted over a run, so they get more rounds.
ROUNDS = {"sd15": 10, "sdxl": 5}


class Setup:
    """Where the benchmark runs: CUDA fp16 for the figures, or the CPU in fp32 for a smoke run."""

    def __init__(self, smoke: bool) -> None:
        import torch

        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.precision = "fp32" if smoke else "fp16"
        self.dtype = torch.float32 if smoke else torch.float16

    def for_dit(self) -> Setup:
        """The same setup in bf16, the dtype Flux and SD3.5 are published and run in."""
        import torch

        dit = Setup(self.smoke)
        dit.precision, dit.dtype = ("fp32", torch.float32) if self.smoke else ("bf16", torch.bfloat16)
        return dit

    def size(self, family: str) -> int:
        return 64 if self.smoke else SIZES[family]

    def synchronize(self) -> None:
        import torch

        if not self.smoke:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        import torch

        if not self.smoke:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        import torch

        return None if self.smoke else round(torch.cuda.max_memory_allocated() / 2**30, 2)


def build_weights(family: str, folder: Path, setup: Setup) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from desktop.engine.backends.diffusers_backend import clip_tokenizer
    from desktop.engine.resources import Resources

    configs = Resources.default().config_folder(family)
    torch.manual_seed(0)
    with torch.device(setup.device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
        parts = dict(vae=vae, text_encoder=text_encoder, unet=unet,
                     tokenizer=clip_tokenizer(Resources.default(), pad_zero=family.startswith("sd2")))
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(configs / "text_encoder_2"))
            parts["tokenizer_2"] = clip_tokenizer(Resources.default(), pad_zero=True)
            scheduler = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(configs / "scheduler"))
            pipe = StableDiffusionXLPipeline(scheduler=scheduler, **parts)
        else:
            scheduler = PNDMScheduler.from_config(PNDMScheduler.load_config(configs / "scheduler"))
            pipe = StableDiffusionPipeline(scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False, **parts)
    pipe.to(setup.dtype).save_pretrained(folder, safe_serialization=True)
    del pipe
    setup.reset_peak()
    return folder


def bench_family(family: str, steps: int, work: Path, setup: Setup, fast: bool, result: dict,
                 checkpoint: Callable[[], None], sections: tuple[str, ...] = SECTIONS) -> None:
    """Fills `result` section by section, calling `checkpoint` after each, so a run cut short keeps its figures."""
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

    size = setup.size(family)
    started = time.perf_counter()
    folder = build_weights(family, work / family, setup)
    build_seconds = time.perf_counter() - started
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    prompt = "a red fox in a spacesuit, studio light"

    setup.synchronize()
    started = time.perf_counter()
    bare = cls.from_pretrained(str(folder), dtype=setup.dtype, local_files_only=True, **extra).to(setup.device)
    setup.synchronize()
    bare_load_seconds = time.perf_counter() - started
    bare.set_progress_bar_config(disable=True)

    def run_bare(n: int, write_png: bool = False) -> float:
        setup.synchronize()
        t = time.perf_counter()
        # The app's default CFG scale: SDXL's pipeline would otherwise use its own default (5.0).
        image = bare(prompt=prompt, num_inference_steps=n, width=size, height=size,
                     guidance_scale=GenerationRequest.cfg_scale,
                     generator=torch.Generator("cpu").manual_seed(1)).images[0]
        setup.synchronize()
        if write_png:
            image.save(work / f"bare-{family}.png")
        return time.perf_counter() - t

    paths = AppPaths.for_root(work / f"home-{family}").ensure()
    backends = {every: DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=every)
                for every in (1, 0)}
    runners = {every: JobRunner(backend, ImageWriter(paths.outputs), desktop.__version__)
               for every, backend in backends.items()}
    pictures: dict[str, str] = {}
    last: dict[str, list] = {"events": []}  # the latest app job's events

    def retried_lower() -> bool:
        """The latest job ran out of memory in its mode and finished in the next one down."""
        return any(type(event).__name__ == "JobWarning" and event.message.startswith("Ran out of memory")
                   for event in last["events"])

    def run_app(n: int, mode: str = "full", fast: bool = False, previews: bool = True, batch_size: int = 1) -> float:
        request = GenerationRequest(prompt=prompt, model=str(folder), steps=n, seed=1, width=size, height=size,
                                    device=setup.device, precision=setup.precision, memory_mode=mode,
                                    fast_mode=fast, batch_size=batch_size)
        events: list = []
        last["events"] = events
        setup.synchronize()
        t = time.perf_counter()
        runners[1 if previews else 0].run(Job(request), events.append)
        setup.synchronize()
        if type(events[-1]).__name__ != "JobFinished":
            raise SystemExit(f"{family} {mode}: {events[-1]}")
        pictures["fast" if fast else mode] = events[-1].paths[0]
        return time.perf_counter() - t

    started = time.perf_counter()
    run_app(3)
    load_seconds = time.perf_counter() - started
    run_app(3, previews=False)
    # One untimed full job each, then rounds that interleave the variants: GPU clocks and the caching
    # allocator settle over the first jobs, and interleaving spreads what drift remains over all of them.
    variants = {
        "bare": lambda: run_bare(steps),
        "app": lambda: run_app(steps),
        "app_no_previews": lambda: run_app(steps, previews=False),
        "bare_with_save": lambda: run_bare(steps, write_png=True),
    }
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS[family]):
        for name, run in variants.items():
            times[name].append(run())
    normal_picture = pictures["full"]
    if "batch8" in sections:
        result["batch8"] = batch_throughput(bare, lambda n, batch_size: run_app(n, batch_size=batch_size),
                                            prompt, 2 if setup.smoke else steps, size, setup)
        checkpoint()
    bare = None  # free its memory before the memory modes are measured
    for backend in backends.values():
        backend.unload()
    setup.reset_peak()
    median = {name: statistics.median(values) for name, values in times.items()}
    bare_rate = steps / median["bare"]
    app_rate = steps / median["app"]
    result |= {
        "family": family, "size": size, "steps": steps, "device": setup.device,
        "build_seconds": round(build_seconds, 1), "app_load_seconds": round(load_seconds, 1),
        # Bare: from_pretrained + .to(device) only; the app's: its whole first 3-step job (load included).
        "bare_load_seconds": round(bare_load_seconds, 1),
        "bare_steps_per_s": round(bare_rate, 2), "app_steps_per_s": round(app_rate, 2),
        "ratio": round(app_rate / bare_rate, 3),
        # Round by round (bare and app ran back to back), so drift over the run cancels out.
        "paired_ratio": round(statistics.median([b / a for b, a in zip(times["bare"], times["app"], strict=True)]), 3),
        "ratio_without_previews": round(median["bare"] / median["app_no_previews"], 3),
        "ratio_against_bare_with_png_save": round(median["bare_with_save"] / median["app"], 3),
        "app_vs_bare_pixel_difference": picture_difference(str(work / f"bare-{family}.png"), normal_picture),
        "seconds": {name: [round(value, 3) for value in values] for name, values in times.items()},
    }
    checkpoint()
    vram = {}
    for mode in ("full", "tiled", "offload"):
        backends[1].unload()
        setup.reset_peak()
        seconds = run_app(steps, mode)
        vram[mode] = {"peak_gib": setup.peak_gib(), "seconds": round(seconds, 2)}
    backends[1].unload()
    result["vram_by_mode"] = vram
    checkpoint()
    if "largest_batch" in sections and not setup.smoke:
        result["largest_batch_by_mode"] = largest_batches(run_app, family, backends[1].unload, setup, retried_lower)
        checkpoint()
    if fast:
        setup.reset_peak()
        started = time.perf_counter()
        run_app(3, fast=True)  # loads again (fast mode is part of the load) and compiles
        compile_seconds = time.perf_counter() - started
        fast_times = [run_app(steps, fast=True) for _ in range(3)]
        backends[1].unload()
        fast_rate = steps / statistics.median(fast_times)
        result |= {
            "fast_steps_per_s": round(fast_rate, 2), "fast_vs_bare": round(fast_rate / bare_rate, 3),
            "fast_first_job_seconds": round(compile_seconds, 1),
            "fast_pixel_difference": picture_difference(normal_picture, pictures["fast"]),
        }
        checkpoint()
        if "restart" in sections:
            # The app's home kept the compiled kernels (compile_cache): a new process should reuse them.
            result["fast_after_restart"] = first_step_after_restart(folder, work / f"home-{family}", size, setup)
            checkpoint()
    if "unet" in sections:
        # After fast mode: its compiled graphs are in the compile cache the UNet alone can reuse.
        result |= unet_alone(folder, family, setup, size, fast)
        checkpoint()


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
    parser.add_argument("--out", help="JSON file, rewritten after each family")
    parser.add_argument("--no-fast", action="store_true", help="skip fast mode (its compile takes minutes)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"extra sections to run, of {','.join(SECTIONS)} (default: all; '' for none)")
    parser.add_argument("--smoke", action="store_true",
                        help="check this script on the CPU: fp32, 64x64, 2 steps, no fast mode; no figures")
    args = parser.parse_args()
    setup = Setup(args.smoke)
    steps = 2 if args.smoke else args.steps
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu.py needs a CUDA GPU (or --smoke to check it on the CPU).")
    name = "CPU (smoke run)" if args.smoke else torch.cuda.get_device_name()
    print(f"device: {name} torch {torch.__version__}", flush=True)
    results: list[dict] = []

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory(prefix="marble-gpu-") as work:
        for family in args.families.split(","):
            result: dict = {}
            results.append(result)
            if family in DIT_FAMILIES:
                bench_dit(family, steps, Path(work), setup.for_dit(), result, save)
                print(json.dumps(result), flush=True)
                print(f"{family}: app/bare {result['ratio']} (target >= 0.97)", file=sys.stderr, flush=True)
                continue
            sections = tuple(name for name in args.sections.split(",") if name)
            if unknown := set(sections) - set(SECTIONS):
                raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
            bench_family(family, steps, Path(work), setup, not (args.no_fast or args.smoke), result, save, sections)
            print(json.dumps(result), flush=True)
            print(f"{family}: app/bare {result['ratio']} (target >= 0.97), fast/bare {result.get('fast_vs_bare')} "
                  f"(target >= 1.20), fast picture differs by {result.get('fast_pixel_difference')}",
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
