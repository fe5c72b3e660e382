"""Shared pieces of the hand-run benchmarks: an SD 1.5-size model with random weights, built once.

The model uses the real SD 1.5 configs shipped in resources/ (860M-parameter UNet), so timings and
memory are those of a real checkpoint; the pictures are noise. It is saved once as a diffusers folder
under $MARBLE_BENCH_CACHE (default ~/.cache/marble-bench) and reused by every benchmark.
"""

from __future__ import annotations

import os
import queue
import statistics
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


T = TypeVar("T")


def cache_root() -> Path:
    return Path(os.environ.get("MARBLE_BENCH_CACHE", Path.home() / ".cache" / "marble-bench"))


def sd15_random_folder(family: str = "sd15") -> Path:
    """A diffusers folder with the real architecture of `family` and seeded random weights."""
    folder = cache_root() / f"{family}-random"
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.schedulers import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from desktop.engine.backends.diffusers_backend import clip_tokenizer
    from desktop.engine.resources import Resources

    configs = Resources.default().config_folder(family)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(Resources.default(), pad_zero=family.startswith("sd2")),
        unet=unet,
        scheduler=PNDMScheduler.from_config(PNDMScheduler.load_config(configs / "scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    partial = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(partial, safe_serialization=True)
    partial.rename(folder)
    return folder


def sd15_single_file() -> Path:
    """The model of `sd15_random_folder` as ONE original-layout fp32 `.safetensors` file (~4.3 GB), as
    users download checkpoints: for comparing `marble generate` with diffusers' own `from_single_file`."""
    path = cache_root() / "sd15-random-fp32.safetensors"
    if path.is_file():
        return path
    import torch
    from diffusers import StableDiffusionPipeline

    from tests.support.tiny_models import save_single_file

    pipe = StableDiffusionPipeline.from_pretrained(
        str(sd15_random_folder()), local_files_only=True, dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False,
    )
    partial = path.with_name(path.name + ".partial")
    save_single_file(pipe, partial, dtype=torch.float32)
    partial.rename(path)
    return path


class WorkerThread:
    """One persistent plain thread that runs calls handed to it, for timing torch off the main thread
    (as the app must run it) against the same call on the main thread, interleaved."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], object]] = queue.Queue()
        self._results: queue.Queue[object] = queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._results.put(self._jobs.get()())

    def run(self, call: Callable[[], T]) -> T:
        """Run `call` on the worker thread and wait for its result."""
        self._jobs.put(call)
        return self._results.get()  # type: ignore[return-value]


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def peak_rss_mb() -> float:
    import resource

    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
