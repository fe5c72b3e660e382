"""Issue 29: a DiT job of several batches with the same prompt, with the DiT prompt cache and without it.

    nice .venv/bin/python tests/benchmarks/bench_dit_prompt_cache.py [--batches 4] [--repeats 3] [--t5-layers 12]

The scaled-down Flux of bench_dit_cpu.py with a larger T5 (1024 wide, 12 layers by default: a twelfth of
T5-XXL's depth, a quarter of its width), 256x256, 4 steps, one image a batch. Each round runs `--batches`
batches of one job in the app's DiffusersBackend (seed n for batch n, the same prompt), once with the cache
(`dit_prompt_cache.cached_encoding`, as the app runs) and once with it replaced by a no-op, interleaved.
Prints the median seconds of the whole job each way, and the pictures' largest difference (must be 0).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - sets sys.path and the offline environment first
from bench_dit_cpu import build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--t5-layers", type=int, default=12)
    parser.add_argument("--t5-width", type=int, default=1024)
    args = parser.parse_args()

    import numpy as np
    import torch

    from desktop.engine.backends import diffusers_backend
    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.jobs import CancelToken
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources

    cached = diffusers_backend.cached_encoding

    @contextlib.contextmanager
    def uncached(pipe, cache, context):  # type: ignore[no-untyped-def]
        yield

    with tempfile.TemporaryDirectory(prefix="marble-dit-prompts-") as work:
        folder = build(Path(work) / "flux-scaled", t5_width=args.t5_width, t5_layers=args.t5_layers)
        paths = AppPaths.for_root(Path(work) / "home").ensure()
        threads = torch.get_num_threads()
        backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=1,
                                   cpu_threads=threads)  # fmt: skip
        request = GenerationRequest(
            prompt="a red fox in a spacesuit, studio light, " * 8, negative_prompt="", model=str(folder), steps=4,
            seed=1, width=256, height=256, device="cpu", distilled_cfg_scale=3.5, batch_count=args.batches,
        )  # fmt: skip
        backend.load(request)
        t5 = sum(p.numel() for p in backend._pipe.text_encoder_2.parameters())

        def job(use_cache: bool) -> tuple[float, list[np.ndarray]]:
            diffusers_backend.cached_encoding = cached if use_cache else uncached
            backend._prompts.clear()  # each job starts as a new prompt would
            started = time.perf_counter()
            images = [np.asarray(backend.generate(request, n, lambda _: None, CancelToken()).images[0])
                      for n in range(args.batches)]  # fmt: skip
            return time.perf_counter() - started, images

        job(True), job(False)  # warm-up, untimed
        times: dict[bool, list[float]] = {True: [], False: []}
        pictures: dict[bool, list[np.ndarray]] = {}
        for _ in range(args.repeats):
            for use_cache in (False, True):
                seconds, pictures[use_cache] = job(use_cache)
                times[use_cache].append(seconds)
        diffusers_backend.cached_encoding = cached
        difference = max(int(np.abs(a.astype(int) - b.astype(int)).max())
                         for a, b in zip(pictures[True], pictures[False], strict=True))  # fmt: skip
        without, with_cache = statistics.median(times[False]), statistics.median(times[True])
        print(f"T5 {t5 / 1e6:.0f}M parameters ({args.t5_layers} layers, {args.t5_width} wide), a job of "
              f"{args.batches} batches, 256x256, 4 steps, torch threads {threads}")
        print(f"without the cache: median {without:.2f} s  {[round(t, 2) for t in times[False]]}")
        print(f"with the cache:    median {with_cache:.2f} s  {[round(t, 2) for t in times[True]]}")
        print(f"with / without: {with_cache / without:.3f}; pictures' largest difference: {difference} levels")


if __name__ == "__main__":
    main()
