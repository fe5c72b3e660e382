"""Fast mode (issue 7): channels_last and torch.compile on the UNet, through the real backend.

The compile is real (inductor on the CPU, a C++ compiler from the machine), on the tiny SD 1.5 model.
The speed-up itself is a GPU figure: tests/benchmarks/gpu.py measures it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desktop.engine.jobs import CancelToken
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.fixtures import share_compile_cache


@pytest.fixture
def paths(tmp_path, shared_compile_cache):
    return AppPaths.for_root(share_compile_cache(tmp_path / "home", shared_compile_cache)).ensure()


def is_compiled(module: torch.nn.Module) -> bool:
    # nn.Module.compile keeps the compiled call here; None means the module runs eagerly.
    return getattr(module, "_compiled_call_impl", None) is not None


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_fast_mode_compiles_the_unet_and_keeps_the_picture(paths, tiny_sd15_dir, fresh_dynamo):
    backend = make_backend(paths)
    plain, plain_steps = run(backend, request_for(tiny_sd15_dir))
    assert not is_compiled(backend._pipe.unet)

    fast_request = request_for(tiny_sd15_dir, fast_mode=True)
    report = backend.load(fast_request)
    assert not report.reused  # switching fast mode on reloads the weights, then compiles them
    assert any("Fast mode" in note for note in report.notes)
    unet = backend._pipe.unet
    assert is_compiled(unet)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    steps: list = []
    fast = backend.generate(fast_request, 0, steps.append, CancelToken())
    # Before the first step, the compile is announced (issue 29); then the same steps as a normal job.
    assert steps[0].compiling and steps[0].step == 0
    steps = [s for s in steps if not s.compiling]
    assert [s.step for s in steps] == [s.step for s in plain_steps] and all(s.preview is not None for s in steps)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # dynamo really built a graph

    # Fused kernels round differently from eager ones, a few levels at most on an 8-bit picture.
    difference = np.abs(pixels(fast.images[0]).astype(int) - pixels(plain.images[0]).astype(int))
    assert difference.max() <= 8 and difference.mean() < 1.0, (difference.max(), difference.mean())

    # The next job reuses the compiled UNet and gives the same pixels again.
    again = backend.generate(fast_request, 0, lambda step: None, CancelToken())
    assert backend.load(fast_request).reused
    assert np.array_equal(pixels(again.images[0]), pixels(fast.images[0]))


def test_image_to_image_shares_the_compiled_unet(paths, tiny_sd15_dir, tmp_path, fresh_dynamo):
    backend = make_backend(paths)
    first, _ = run(backend, request_for(tiny_sd15_dir, fast_mode=True))
    source = tmp_path / "source.png"
    first.images[0].save(source)
    edit = request_for(tiny_sd15_dir, fast_mode=True, init_image=str(source), strength=0.5)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    batch = backend.generate(edit, 0, lambda step: None, CancelToken())
    assert batch.images[0].size == (64, 64)
    assert backend._pipes["img2img"].unet is backend._pipe.unet and is_compiled(backend._pipe.unet)
    # Not compiled again: the VAE's channels_last latents reach the UNet in the layout text to image's had.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_a_failed_compile_falls_back_to_eager_with_a_note(paths, tiny_sd15_dir, monkeypatch, fresh_dynamo):
    # A machine without a working C++ compiler or Triton: inductor fails as it is handed the traced graph, and
    # dynamo reports that as its backend's failure, the error the backend sees there. (Taking the C++ compiler
    # away instead fails the same way, but only after half a minute of lowering on this tiny UNet.)
    import torch._inductor.compile_fx as inductor

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Compiler: /nonexistent/c++ is not found")

    monkeypatch.setattr(inductor, "compile_fx", no_compiler)
    backend = make_backend(paths)
    plain, plain_steps = run(make_backend(paths), request_for(tiny_sd15_dir))

    batch, steps = run(backend, request_for(tiny_sd15_dir, fast_mode=True))
    assert any(note.startswith("Fast mode is off: torch.compile failed") and "/nonexistent/c++" in note
               for note in batch.notes), batch.notes
    assert not is_compiled(backend._pipe.unet)
    assert len([s for s in steps if not s.compiling]) == len(plain_steps)
    # Eager again: the picture matches a normal run's up to channels_last rounding.
    difference = np.abs(pixels(batch.images[0]).astype(int) - pixels(plain.images[0]).astype(int))
    assert difference.max() <= 8
    # The next job runs eagerly at once, without a second failed compile or note.
    second = backend.generate(request_for(tiny_sd15_dir, fast_mode=True), 0, lambda step: None, CancelToken())
    assert not any("Fast mode" in note for note in second.notes)


def test_a_scheduled_and_prompt_runs_compiled_with_the_eager_picture(paths, tiny_sd15_dir, fresh_dynamo):
    """The per-step conditioning hooks run outside the compiled graph: same picture, within rounding."""
    prompt = "a [red|blue] circle AND a [square:moon:1] :0.5"
    eager, _ = run(make_backend(paths), request_for(tiny_sd15_dir, prompt=prompt))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # counted since the process began
    fast, _ = run(make_backend(paths), request_for(tiny_sd15_dir, prompt=prompt, fast_mode=True))
    difference = np.abs(pixels(fast.images[0]).astype(int) - pixels(eager.images[0]).astype(int))
    assert difference.max() <= 8 and difference.mean() < 1.0, (difference.max(), difference.mean())
    # One graph for the UNet: hooks traced with it would guard on the step and recompile (7 graphs here).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 2
