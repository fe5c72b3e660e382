"""Out of memory and crashes inside a job, through the real worker thread and the real diffusers backend.

The out-of-memory error is simulated (no GPU here): the pipeline raises what torch raises, and the
backend must free, retry once with a lower-memory mode, tell the user, and keep the worker alive.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator

import pytest
import torch
from diffusers import StableDiffusionPipeline

import desktop
from desktop.bridge.controller import GenerationController
from desktop.engine.backends import create_diffusers_backend
from desktop.engine.errors import ErrorKind
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner

pytestmark = [pytest.mark.qt_log_level_fail("WARNING")]
TIMEOUT_MS = 120_000


@pytest.fixture
def worker(qtbot, tmp_path, tiny_sd15_dir) -> Iterator[tuple[GenerationController, AppPaths]]:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    shutil.copytree(tiny_sd15_dir, paths.models / "tiny")
    catalog = ModelCatalog(paths.models)

    def factory() -> JobRunner:
        backend = create_diffusers_backend(paths, Resources.default(), catalog)
        return JobRunner(backend, ImageWriter(paths.outputs), desktop.__version__)

    controller = GenerationController(factory)
    try:
        yield controller, paths
    finally:
        controller.shutdown()


def request(**changes) -> GenerationRequest:
    values = dict(prompt="a red circle", model="tiny", steps=2, seed=5, width=64, height=64, device="cpu")
    return GenerationRequest(**(values | changes))


def fail_without_tiling(monkeypatch, error: BaseException) -> list[bool]:
    """Make the pipeline raise `error` unless the VAE is tiled (the lower-memory mode); log each call."""
    original = StableDiffusionPipeline.__call__
    calls: list[bool] = []

    def call(self, *args, **kwargs):
        calls.append(self.vae.use_tiling)
        if not self.vae.use_tiling:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", call)
    return calls


@pytest.mark.parametrize(
    "error",
    [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")],
)
def test_out_of_memory_retries_once_with_a_lower_memory_mode_and_says_so(qtbot, worker, monkeypatch, error):
    controller, paths = worker
    calls = fail_without_tiling(monkeypatch, error)
    warnings = []
    controller.job_warning.connect(lambda event: warnings.append(event.message))
    with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as finished:
        controller.submit(request())
    assert calls == [False, True]
    assert any("retried with VAE tiling and attention slicing" in w for w in warnings)
    assert len(finished.args[0].paths) == 1


def test_out_of_memory_twice_fails_clearly_and_the_worker_runs_the_next_job(qtbot, worker, monkeypatch):
    controller, paths = worker
    original = StableDiffusionPipeline.__call__

    def always_oom(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", always_oom)
    with qtbot.waitSignal(controller.job_failed, timeout=TIMEOUT_MS) as failed:
        controller.submit(request())
    assert failed.args[0].kind is ErrorKind.OUT_OF_MEMORY
    assert "ran out of memory at 64x64" in failed.args[0].message
    assert "even with VAE tiling and attention slicing" in failed.args[0].message
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", original)
    with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS):
        controller.submit(request(memory_mode="full"))
    assert not list(paths.outputs.rglob("*.partial"))


def test_a_crash_inside_a_job_never_kills_the_worker(qtbot, worker, monkeypatch):
    controller, _ = worker

    def crash(self, *args, **kwargs):
        raise KeyError("a bug deep inside the pipeline")

    original = StableDiffusionPipeline.__call__
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", crash)
    with qtbot.waitSignal(controller.job_failed, timeout=TIMEOUT_MS) as failed:
        controller.submit(request())
    assert "KeyError" in failed.args[0].message
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", original)
    with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS):
        controller.submit(request())


def test_cancel_during_model_load_waits_for_the_load_then_cancels_before_the_first_step(
    qtbot, worker, monkeypatch
):
    from desktop.engine.backends.diffusers_backend import DiffusersBackend

    controller, paths = worker
    gate = threading.Event()
    original = DiffusersBackend.load

    def slow_load(self, request):
        assert gate.wait(30)  # the load is still running when the user presses Cancel
        return original(self, request)

    monkeypatch.setattr(DiffusersBackend, "load", slow_load)
    steps, loaded = [], []
    controller.step_progressed.connect(steps.append)
    controller.model_loaded.connect(loaded.append)

    def cancel_then_release(_event) -> None:
        controller.cancel()
        gate.set()

    controller.model_loading.connect(cancel_then_release)
    with qtbot.waitSignal(controller.job_cancelled, timeout=TIMEOUT_MS):
        controller.submit(request())
    assert len(loaded) == 1  # the load finished (and is kept for the next job) ...
    assert steps == [] and not list(paths.outputs.rglob("*.png"))  # ... but no step ran
