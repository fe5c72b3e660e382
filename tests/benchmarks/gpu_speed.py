"""The speed sections of gpu.py added for issue 29: UNet alone, batch 8, the largest batch per memory
mode, and time to the first step after a restart with the compile cache warm (a child process).

Each function fills its own keys of gpu.py's per-family result; none asserts anything (figures only).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Largest batch search: doubling from 1 up to this many images (SD 1.5 512 px / SDXL 1024 px).
BATCH_CEILING = {"sd15": 64, "sdxl": 16}


def unet_alone(folder: Path, family: str, setup: Any, size: int, fast: bool) -> dict:
    """UNet forward calls per second at the job's shape (batch 2: CFG's negative and positive), eager
    and, with `fast`, compiled as fast mode compiles it -- the figure published benchmarks quote as it/s."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=setup.dtype)
    unet.to(setup.device).eval()
    channels, latent = unet.config.in_channels, size // 8
    sample = torch.randn(2, channels, latent, latent, device=setup.device, dtype=setup.dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device=setup.device, dtype=setup.dtype)
    extra: dict[str, Any] = {}
    if family == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 1280, device=setup.device, dtype=setup.dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=setup.device, dtype=setup.dtype),
        }
    timestep = torch.tensor(500, device=setup.device)
    rounds = 2 if setup.smoke else 30

    def rate() -> float:
        with torch.inference_mode():
            for _ in range(3):  # warm-up (and the compile, for the compiled one)
                unet(sample, timestep, context, **extra)
            setup.synchronize()
            started = time.perf_counter()
            for _ in range(rounds):
                unet(sample, timestep, context, **extra)
            setup.synchronize()
        return rounds / (time.perf_counter() - started)

    result = {"unet_eager_it_per_s": round(rate(), 2)}
    if fast:
        import torch._inductor.config as inductor_config

        inductor_config.conv_1x1_as_mm = True
        unet.to(memory_format=torch.channels_last)
        unet.compile()
        result["unet_compiled_it_per_s"] = round(rate(), 2)
    setup.reset_peak()
    return result


def batch_throughput(bare: Any, run_app: Any, prompt: str, steps: int, size: int, setup: Any,
                     batch: int = 8, rounds: int = 2) -> dict:
    """Images per second at batch size `batch`: the app's job against bare diffusers' one call."""
    import torch

    def bare_run() -> float:
        setup.synchronize()
        started = time.perf_counter()
        bare(prompt=prompt, num_inference_steps=steps, width=size, height=size, guidance_scale=7.0,
             num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(1))
        setup.synchronize()
        return time.perf_counter() - started

    bare_run()
    run_app(steps, batch_size=batch)  # untimed: the first job at a new batch size
    bare_times, app_times = [], []
    for _ in range(rounds):
        bare_times.append(bare_run())
        app_times.append(run_app(steps, batch_size=batch))
    bare_rate = batch / statistics.median(bare_times)
    app_rate = batch / statistics.median(app_times)
    return {"batch": batch, "bare_images_per_s": round(bare_rate, 3), "app_images_per_s": round(app_rate, 3),
            "ratio": round(app_rate / bare_rate, 3)}


def largest_batches(run_app: Any, family: str, unload: Any, setup: Any, retried_lower: Any) -> dict:
    """The largest power-of-two batch each memory mode finishes at 2 steps (memory does not grow with
    steps), with its peak; a job that ran out of memory -- failed, or finished only by the backend's
    retry in the next mode down (`retried_lower()`) -- ends that mode's search."""
    found: dict[str, dict] = {}
    for mode in ("full", "tiled", "offload"):
        best: dict = {"largest_batch": 0}
        batch = 1
        while batch <= BATCH_CEILING[family]:
            unload()
            setup.reset_peak()
            try:
                seconds = run_app(2, mode, batch_size=batch)
            except SystemExit:  # run_app's way of saying the job failed (out of memory here)
                break
            if retried_lower():
                break
            best = {"largest_batch": batch, "peak_gib": setup.peak_gib(), "seconds": round(seconds, 2)}
            batch *= 2
        found[mode] = best
    unload()
    return found


def first_step_after_restart(folder: Path, home: Path, size: int, setup: Any, runs: int = 1) -> list[dict]:
    """A fast-mode job in a fresh process (the app after a restart), `runs` times with the same home:
    seconds from the job's start to its first step, and the compiled graphs taken from the cache."""
    results = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, str(HERE / "gpu_speed.py"), "--child", str(folder), str(home), str(size),
             setup.device, setup.precision],
            capture_output=True, text=True, timeout=600, env=os.environ.copy(),
        )
        if done.returncode != 0:
            results.append({"failed": done.stderr[-2000:]})
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def _child(folder: str, home: str, size: int, device: str, precision: str) -> None:
    """One fast-mode job, timed from its start to its first step and to its end (the child of the above)."""
    import common  # noqa: F401 - sys.path and the offline environment

    started = time.perf_counter()
    from torch._dynamo.utils import counters

    import desktop
    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.events import ModelCompiling, StepProgress
    from desktop.engine.jobs import Job
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.outputs import ImageWriter
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources
    from desktop.engine.runner import JobRunner

    imported = time.perf_counter() - started
    paths = AppPaths.for_root(home).ensure()
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=1)
    runner = JobRunner(backend, ImageWriter(paths.outputs), desktop.__version__)
    marks: dict[str, float] = {}

    def on_event(event: Any) -> None:
        now = time.perf_counter()
        if isinstance(event, ModelCompiling):
            marks.setdefault("compiling", now)
        if isinstance(event, StepProgress):
            marks.setdefault("first_step", now)
        marks["last"] = now

    request = GenerationRequest(prompt="a red fox in a spacesuit", model=folder, steps=30, seed=1, width=size,
                                height=size, device=device, precision=precision, fast_mode=True)
    job_started = time.perf_counter()
    runner.run(Job(request), on_event)
    print(json.dumps({
        "import_seconds": round(imported, 2),
        "job_start_to_first_step_seconds": round(marks.get("first_step", float("nan")) - job_started, 2),
        "compiling_shown": "compiling" in marks,
        "job_seconds": round(marks["last"] - job_started, 2),
        "fx_graph_cache_hits": int(counters["inductor"]["fxgraph_cache_hit"]),
        "fx_graph_cache_misses": int(counters["inductor"]["fxgraph_cache_miss"]),
    }), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
    else:
        raise SystemExit("gpu_speed.py is run by gpu.py (its --child mode times a fast-mode job in a new process).")
