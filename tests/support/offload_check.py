"""One check the CUDA-only offload tests share: a job in a memory mode gives the picture of the same job with
everything on the GPU, within that mode's own noise (fp8 rounds the weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.engine.test_diffusers_backend import pixels, request_for, run


def assert_mode_matches_full(backend, folder: Path, mode: str, **values) -> None:
    full, _ = run(backend, request_for(folder, memory_mode="full", device="cuda", **values))
    other, _ = run(backend, request_for(folder, memory_mode=mode, device="cuda", **values))
    assert backend.memory_mode == mode
    difference = np.abs(pixels(other.images[0]).astype(int) - pixels(full.images[0]).astype(int))
    assert difference.mean() < (1.5 if mode == "fp8" else 0.5), (mode, difference.mean())
