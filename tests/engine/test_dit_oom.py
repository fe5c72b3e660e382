"""Out of memory, a DiT job runs again one memory mode down (dit_memory's order), its LoRAs applied
again after a reload, with a note in the result; the out-of-memory error is raised by the real
pipeline's call, patched to fail the first time(s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from desktop.engine.backends import diffusers_backend
from desktop.engine.backends.dit_memory import fallback_mode
from desktop.engine.errors import OutOfMemory
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import build_tiny_flux, save_pipeline
from tests.support.tiny_dit_loras import peft_lora
from tests.support.tiny_loras import save_lora

VALUES = dict(prompt="a red circle <lora:style:1>", negative_prompt="", distilled_cfg_scale=3.5, steps=2)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dit-oom")
    pipe = build_tiny_flux()
    return {"folder": save_pipeline(pipe, tmp / "flux"), "lora": peft_lora(pipe.transformer, seed=1)}


@pytest.fixture
def paths(tmp_path, flux):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    save_lora(flux["lora"], paths.loras / "style.safetensors")
    return paths


def fail_first_calls(monkeypatch, count: int, pipeline: type = FluxPipeline) -> list[int]:
    """`pipeline`'s call raises CUDA's out-of-memory error the first `count` times; the list counts the calls."""
    calls = []
    original = pipeline.__call__

    def call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= count:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline, "__call__", call)
    return calls


def test_the_fallback_order_is_dit_memorys():
    assert fallback_mode("full", "cuda") == "offload"
    assert fallback_mode("tiled", "cuda") == "offload"
    assert fallback_mode("offload", "cuda") == "fp8"
    assert fallback_mode("offload", "cuda", fp8_possible=False) == "group"  # a GGUF file is not cast again
    assert [fallback_mode(m, "cuda") for m in ("fp8", "group", "sequential")] == ["group", "sequential", None]
    assert fallback_mode("full", "cpu") == "fp8" and fallback_mode("fp8", "cpu") is None


def test_out_of_memory_runs_the_job_again_in_fp8_with_its_lora(flux, paths, monkeypatch):
    expected, _ = run(make_backend(paths), request_for(flux["folder"], memory_mode="fp8", **VALUES))
    calls = fail_first_calls(monkeypatch, 1)
    backend = make_backend(paths)
    batch, _ = run(backend, request_for(flux["folder"], **VALUES))
    assert len(calls) == 2 and backend.memory_mode == "fp8"
    assert "Out of memory with everything on the device; ran with fp8 layer-wise casting instead." in batch.notes
    assert [lora.name for lora in batch.loras] == ["style"]
    assert np.array_equal(pixels(batch.images[0]), pixels(expected.images[0]))


def test_a_fallback_that_loads_the_model_again_applies_its_loras_again(flux, paths, monkeypatch):
    # On a CPU, fp8 is the last mode; the CUDA step fp8 -> group (a reload: fp8 changed the weights) is
    # taken here as fp8 -> full, which reloads the same way.
    monkeypatch.setattr(diffusers_backend, "dit_fallback_mode", lambda mode, device, *possible: "full")
    expected, _ = run(make_backend(paths), request_for(flux["folder"], **VALUES))
    plain, _ = run(make_backend(paths), request_for(flux["folder"], **(VALUES | {"prompt": "a red circle"})))
    fail_first_calls(monkeypatch, 1)
    backend = make_backend(paths)
    batch, _ = run(backend, request_for(flux["folder"], memory_mode="fp8", **VALUES))
    assert backend.memory_mode == "full"
    assert "Out of memory with fp8 layer-wise casting; ran with everything on the device instead." in batch.notes
    assert np.array_equal(pixels(batch.images[0]), pixels(expected.images[0]))  # full precision, LoRA on
    assert not np.array_equal(pixels(batch.images[0]), pixels(plain.images[0]))


def test_out_of_memory_in_the_last_mode_is_a_clear_error(flux, paths, monkeypatch):
    calls = fail_first_calls(monkeypatch, 99)
    with pytest.raises(OutOfMemory, match=r"ran out of memory running Flux\.1.* even with fp8 layer-wise casting"):
        run(make_backend(paths), request_for(flux["folder"], **VALUES))
    assert len(calls) == 2  # full, then fp8: nothing lower on a CPU
