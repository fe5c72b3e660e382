"""Fast mode (issue 7): channels_last and torch.compile on the UNet, through the real backend, and its
compiled kernels kept in Marble's cache folder for the next start (issue 29).

The compile is real (inductor on the CPU, a C++ compiler from the machine), on the tiny SD 1.5 model.
The speed-up itself is a GPU figure: tests/benchmarks/gpu.py measures it. The cache's reuse is checked by
inductor's own cache-hit counter and the cache's files, never by time.

The tests run in this order in one process (pytest-xdist hands out whole files): the first compiles cold into
this file's cache, as a first start does, and the later ones take the kernels from it, as fast mode does after
a restart. A cold compile of the tiny UNet takes a minute here; each later one, seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from desktop.engine.backends.base import Waiting
from desktop.engine.backends.compile_cache import INDUCTOR_DIR_ENV, TRITON_DIR_ENV, cache_dirs
from desktop.engine.jobs import CancelToken
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.cli_runner import run_cli
from tests.support.fixtures import share_compile_cache

REPO = Path(__file__).resolve().parents[2]

# `marble generate ARGS` in a fresh process, as the app runs a job after a start; its last line is what inductor's
# FX graph cache counted.
CHILD = """
import json, sys
from torch._dynamo.utils import counters
from desktop.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This file's compile cache, empty when its first test starts."""
    return tmp_path_factory.mktemp("compile-cache")


@pytest.fixture
def paths(tmp_path, compile_cache):
    return AppPaths.for_root(share_compile_cache(tmp_path / "home", compile_cache)).ensure()


def is_compiled(module: torch.nn.Module) -> bool:
    # nn.Module.compile keeps the compiled call here; None means the module runs eagerly.
    return getattr(module, "_compiled_call_impl", None) is not None


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def generate_args(model: Path, home: Path, *extra: str) -> list[str]:
    return ["generate", "--home", str(home), "--model", str(model), "--prompt", "a red circle on a blue background",
            "--steps", "3", "--width", "64", "--height", "64", "--seed", "3", "--device", "cpu", "--json", *extra]


def fast_generate_in_child(model: Path, home: Path) -> tuple[dict[str, int], list[dict]]:
    """A fast-mode batch of two through `marble generate` in a child process: (inductor's counts, the events)."""
    env = {key: value for key, value in os.environ.items() if key not in (INDUCTOR_DIR_ENV, TRITON_DIR_ENV)}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *generate_args(model, home, "--fast", "--batch-count", "2")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    *lines, last = done.stdout.strip().splitlines()
    counts = json.loads(last)
    assert done.returncode == 0 and counts.pop("code") == 0, done.stderr[-3000:]
    return counts, [json.loads(line) for line in lines if line.startswith("{")]


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def said_compiling_once(events: list[dict]) -> bool:
    """The job reported "compiling" once, after the model loaded and before its first step: the second image has
    the same size, nothing to compile."""
    kinds = [event["event"] for event in events]
    return (kinds.count("compiling") == 1 and kinds.index("loaded") < kinds.index("compiling") < kinds.index("step")
            and bool(events[kinds.index("compiling")]["model"]))


@pytest.mark.slow
def test_the_first_fast_job_compiles_and_a_new_process_takes_the_kernels_from_the_cache(
    tmp_path, tiny_sd15_dir, compile_cache
):
    home = share_compile_cache(tmp_path / "home", compile_cache)
    first, events = fast_generate_in_child(tiny_sd15_dir, home)
    assert first["misses"] >= 1 and first["hits"] == 0, first
    assert any(path.suffix == ".py" for path in files_under(cache_dirs(compile_cache).inductor))  # generated code
    assert any(event["event"] == "warning" and event["message"].startswith("Fast mode: the first image compiles")
               for event in events), events
    assert said_compiling_once(events), [event["event"] for event in events]
    first_png = Path(events[-1]["paths"][0])
    assert read_image_metadata(first_png).request.fast_mode is True

    # The app after a restart: nothing compiled again, and still "compiling" in the progress, since dynamo's
    # tracing and the cache lookup take time too.
    second, events = fast_generate_in_child(tiny_sd15_dir, home)
    assert second["hits"] >= 1 and second["misses"] == 0, second
    assert said_compiling_once(events), [event["event"] for event in events]
    # The cached kernels compute what freshly built ones did: the same pixels.
    cached = np.asarray(Image.open(events[-1]["paths"][0]))
    assert np.array_equal(np.asarray(Image.open(first_png)), cached)

    # And what eager computes, within fp32 noise through an 8-bit picture (fused kernels round differently).
    eager_png = tmp_path / "eager.png"
    code, _, err = run_cli(*generate_args(tiny_sd15_dir, tmp_path / "eager", "--out", str(eager_png)))
    assert code == 0, err
    difference = np.abs(cached.astype(int) - np.asarray(Image.open(eager_png)).astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.1, (difference.max(), difference.mean())


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
    assert steps[0].waiting is Waiting.COMPILING and steps[0].step == 0
    steps = [s for s in steps if s.waiting is None]
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
    assert len([s for s in steps if s.waiting is None]) == len(plain_steps)
    # Eager again: the picture matches a normal run's up to channels_last rounding.
    difference = np.abs(pixels(batch.images[0]).astype(int) - pixels(plain.images[0]).astype(int))
    assert difference.max() <= 8
    # The next job runs eagerly at once, without a second failed compile or note.
    second = backend.generate(request_for(tiny_sd15_dir, fast_mode=True), 0, lambda step: None, CancelToken())
    assert not any("Fast mode" in note for note in second.notes)


def test_a_scheduled_and_weighted_prompt_runs_compiled_with_the_eager_picture(paths, tiny_sd15_dir, fresh_dynamo):
    """The per-step conditioning hooks run outside the compiled graph: same picture, within rounding. The weight
    makes it a composed prompt (`_StepConditioning`'s pre-hook swaps the conditioning, its forward hook folds the
    prediction) whose UNet batch is still the plain job's two rows, so the kernels come from this file's cache: an
    AND of two parts is a batch of three, a cold compile of a minute here for nothing the hooks do differently
    (AND's arithmetic is checked eagerly in test_prompt_schedule_backend.py)."""
    prompt = "a [red|blue] circle [square:moon:1] :0.5"
    eager, _ = run(make_backend(paths), request_for(tiny_sd15_dir, prompt=prompt))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # counted since the process began
    fast, _ = run(make_backend(paths), request_for(tiny_sd15_dir, prompt=prompt, fast_mode=True))
    difference = np.abs(pixels(fast.images[0]).astype(int) - pixels(eager.images[0]).astype(int))
    assert difference.max() <= 8 and difference.mean() < 1.0, (difference.max(), difference.mean())
    # One graph for the UNet: hooks traced with it would guard on the step and recompile (7 graphs here).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 2
