"""Issue 29, CPU: seconds per 512x512 image with the few-step defaults, through the app's backend.

    nice .venv/bin/python tests/benchmarks/bench_few_step_cpu.py [--size 512] [--repeats 1]

An SD 1.5-size model (the real configs from resources/configs/sd15, seeded random weights, built once by
`common.sd15_random_folder`) runs in the app's DiffusersBackend with the presets of
desktop/engine/library/few_step.py: Turbo (1 step, Euler a, trailing, CFG 1) and Lightning (4 steps,
Euler, trailing, CFG 1). CFG 1 means no guidance, so each step is one UNet call, not two. Each job is
timed from `generate` to the decoded image (prompt encoding, the steps, the VAE decode); the load is
timed apart. The 30-step CFG 7.5 job the UNet defaults would run is estimated from the measured step
time (2 UNet calls a step), not run: it takes minutes here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import torch

    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.jobs import CancelToken
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.library.few_step import PRESETS
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources

    folder = common.sd15_random_folder()
    paths = AppPaths.for_root(Path(tempfile.mkdtemp(prefix="few-step-bench-"))).ensure()
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    results = {}
    for kind in ("turbo", "lightning"):
        preset = PRESETS[kind]
        request = GenerationRequest(
            prompt="a red fox in a spacesuit", model=str(folder), seed=42, width=args.size, height=args.size,
            device="cpu", precision="fp32", **preset.request_fields(),  # type: ignore[arg-type]
        ).validate()  # fmt: skip
        started = time.perf_counter()
        backend.load(request)
        load = time.perf_counter() - started
        times, step_marks = [], []
        for _ in range(args.repeats):
            marks: list[float] = []
            started = time.perf_counter()
            backend.generate(request, 0, lambda _info, marks=marks: marks.append(time.perf_counter()), CancelToken())
            times.append(time.perf_counter() - started)
            step_marks.append([started, *marks])
        per_step = statistics.median(b - a for run in step_marks for a, b in zip(run[1:], run[2:], strict=False)) \
            if preset.steps > 1 else None
        results[kind] = (preset, statistics.median(times), load, per_step)
        print(f"{kind}: {preset.steps} step(s), {preset.sampler}, CFG {preset.cfg_scale:g}: "
              f"{statistics.median(times):.1f} s per {args.size}x{args.size} image (runs: "
              f"{', '.join(f'{t:.1f}' for t in times)}; load {load:.1f} s"
              + (f"; {per_step:.2f} s per step)" if per_step else ")"))  # fmt: skip
    per_step = results["lightning"][3]
    if per_step:
        fixed = results["turbo"][1] - per_step  # encoding + decode: the 1-step job less its one step
        print(f"estimate for the UNet defaults (30 steps, CFG 7.5: 2 UNet calls a step): "
              f"{fixed + 30 * 2 * per_step:.0f} s per image")  # fmt: skip


if __name__ == "__main__":
    main()
