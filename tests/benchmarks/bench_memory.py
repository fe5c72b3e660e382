"""Target 6 of issue 7: peak RSS of loading and generating, the app path against bare diffusers.

    .venv/bin/python tests/benchmarks/bench_memory.py [--size 256] [--steps 2]

Each path runs in its own fresh process (peak RSS only grows), with the SD 1.5-size model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import common

CHILD = r"""
import json, os, sys, tempfile
sys.path.insert(0, os.environ["BENCH_DIR"])
import common
size, steps, kind = int(os.environ["SIZE"]), int(os.environ["STEPS"]), os.environ["KIND"]
folder = str(common.sd15_random_folder())
if kind == "bare":
    import torch
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt="a red fox", num_inference_steps=steps, width=size, height=size,
         generator=torch.Generator("cpu").manual_seed(1))
else:
    import desktop
    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.jobs import Job
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.outputs import ImageWriter
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources
    from desktop.engine.runner import JobRunner
    paths = AppPaths.for_root(tempfile.mkdtemp()).ensure()
    runner = JobRunner(DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models)),
                       ImageWriter(paths.outputs), desktop.__version__)
    events = []
    runner.run(Job(GenerationRequest(prompt="a red fox", model=folder, steps=steps, seed=1, width=size,
                                     height=size, device="cpu")), events.append)
    assert type(events[-1]).__name__ == "JobFinished", events[-1]
print(json.dumps({"peak_rss_mb": common.peak_rss_mb()}))
"""


def measure(kind: str, size: int, steps: int) -> float:
    env = os.environ | {"KIND": kind, "SIZE": str(size), "STEPS": str(steps),
                        "BENCH_DIR": os.path.dirname(os.path.abspath(__file__)), "PYTHONPATH": str(common.ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    common.sd15_random_folder()
    bare = measure("bare", args.size, args.steps)
    app = measure("app", args.size, args.steps)
    print(f"target 6: peak RSS bare diffusers {bare:.0f} MB, app path {app:.0f} MB, ratio {app / bare:.3f} (<= 1.15)")


if __name__ == "__main__":
    main()
