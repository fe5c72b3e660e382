"""One job through the real runner, backend, writer and metadata: what a user finds on disk."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import desktop
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import ErrorKind
from desktop.engine.events import (
    ImageSaved,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobStarted,
    ModelLoaded,
    ModelLoading,
    PreviewReady,
    StepProgress,
)
from desktop.engine.jobs import Job, JobState
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.metadata import parse_parameters, read_image_metadata
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner


@pytest.fixture
def home(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.fixture
def runner(home):
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models))
    return JobRunner(backend, ImageWriter(home.outputs), desktop.__version__)


def request_for(model, **changes):
    values = dict(prompt="a large red circle, blue background", model=str(model), steps=3, seed=1234,
                  width=64, height=64, device="cpu", negative_prompt="green")
    return GenerationRequest(**(values | changes))


def run(runner, request):
    events = []
    job = Job(request)
    state = runner.run(job, events.append)
    return job, state, events


def test_finished_job_writes_png_with_metadata_that_reads_back(runner, home, tiny_sd15_dir):
    job, state, events = run(runner, request_for(tiny_sd15_dir, sampler="DPM++ 2M Karras"))
    assert state is JobState.FINISHED
    kinds = [type(e) for e in events]
    assert kinds[:3] == [JobStarted, ModelLoading, ModelLoaded]
    assert kinds.count(StepProgress) == 3 and kinds.count(PreviewReady) == 3
    assert kinds[-2:] == [ImageSaved, JobFinished]
    finished = events[-1]
    path = finished.paths[0]
    assert path.startswith(str(home.outputs)) and path.endswith("-1234.png")
    with Image.open(path) as image:
        assert image.size == (64, 64)
    metadata = read_image_metadata(path)
    assert metadata.format == "marble"
    # Images name their model, never the folder it came from: shared PNGs must not leak paths.
    assert metadata.request == replace(job.request, model="tiny-sd15")
    assert str(tiny_sd15_dir) not in metadata.raw["parameters"] + metadata.raw["marble"]
    parsed = parse_parameters(metadata.raw["parameters"])
    assert parsed.prompt == "a large red circle, blue background"
    assert parsed.negative_prompt == "green"
    assert parsed.settings["Sampler"] == "DPM++ 2M" and parsed.settings["Schedule type"] == "Karras"
    assert parsed.settings["Seed"] == "1234" and parsed.settings["Size"] == "64x64"
    assert parsed.settings["Version"] == f"marble {desktop.__version__}"


def test_random_seed_is_fixed_before_the_job_and_recorded(runner, tiny_sd15_dir):
    job, _, events = run(runner, request_for(tiny_sd15_dir, seed=-1))
    started = next(e for e in events if isinstance(e, JobStarted))
    assert started.request.seed >= 0 and events[-1].seeds == (started.request.seed,)
    assert read_image_metadata(events[-1].paths[0]).request.seed == started.request.seed


def test_cancelled_job_writes_no_file(runner, home, tiny_sd15_dir):
    job = Job(request_for(tiny_sd15_dir, steps=8))
    events = []

    def emit(event):
        events.append(event)
        if isinstance(event, StepProgress) and event.step == 2:
            job.cancel_token.cancel()

    assert runner.run(job, emit) is JobState.CANCELLED
    assert isinstance(events[-1], JobCancelled)
    assert max(e.step for e in events if isinstance(e, StepProgress)) == 2
    assert not any(home.outputs.rglob("*.png"))
    assert not any(home.outputs.rglob("*.partial"))


def test_batches_save_every_image_with_its_own_seed(runner, tiny_sd15_dir):
    _, state, events = run(runner, request_for(tiny_sd15_dir, batch_count=2, batch_size=2, seed=10))
    assert state is JobState.FINISHED
    finished = events[-1]
    assert finished.seeds == (10, 11, 12, 13) and len(set(finished.paths)) == 4
    positions = [parse_parameters(read_image_metadata(p).raw["parameters"]).settings.get("Batch pos")
                 for p in finished.paths]
    assert positions == ["0", "1", "0", "1"]


def test_failure_is_an_event_and_the_runner_goes_on(runner, tiny_sd15_dir):
    _, state, events = run(runner, request_for("missing-model"))
    assert state is JobState.FAILED
    failed = events[-1]
    assert isinstance(failed, JobFailed) and failed.kind is ErrorKind.MODEL
    assert "No model named 'missing-model'" in failed.message
    _, state, _ = run(runner, request_for(tiny_sd15_dir))
    assert state is JobState.FINISHED


def test_unexpected_exception_never_escapes(runner, tiny_sd15_dir, monkeypatch):
    def explode(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(runner.backend, "generate", explode)
    _, state, events = run(runner, request_for(tiny_sd15_dir))
    assert state is JobState.FAILED and "ZeroDivisionError: boom" in events[-1].message
    monkeypatch.undo()
    _, state, events = run(runner, request_for(tiny_sd15_dir))
    assert state is JobState.FINISHED


def test_same_request_same_pixels_through_the_runner(runner, tiny_sd15_dir):
    _, _, first = run(runner, request_for(tiny_sd15_dir, sampler="Euler a"))
    _, _, second = run(runner, request_for(tiny_sd15_dir, sampler="Euler a"))
    a, b = (np.asarray(Image.open(events[-1].paths[0])) for events in (first, second))
    assert np.array_equal(a, b)
