"""Wildcards through the real runner: each run's prompt is chosen by its seed and recorded as made."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import desktop
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.events import JobFailed, ModelLoading
from desktop.engine.history.store import HistoryStore
from desktop.engine.jobs import Job, JobState
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.metadata import parse_parameters, read_image_metadata
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from desktop.engine.wildcards import Wildcards


@pytest.fixture
def home(tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    paths.wildcards.mkdir()
    (paths.wildcards / "colour.txt").write_text("\n".join(f"colour{i}" for i in range(40)), encoding="utf-8")
    return paths


def make_runner(home, history=None):
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models))
    return JobRunner(backend, ImageWriter(home.outputs), desktop.__version__, history, Wildcards(home.wildcards))


def request_for(model, **changes):
    values = dict(prompt="a __colour__ circle", negative_prompt="__colour__", model=str(model), steps=1, seed=100,
                  width=64, height=64, device="cpu", batch_count=3)
    return GenerationRequest(**(values | changes))


def test_each_run_gets_the_prompt_its_seed_chooses_and_the_png_records_it(home, tiny_sd15_dir):
    history = HistoryStore(home.history_db, home.outputs, home.thumbnails)
    try:
        job = Job(request_for(tiny_sd15_dir))
        assert make_runner(home, history).run(job, lambda event: None) is JobState.FINISHED
        recorded = {record.path: record.prompt for record in history.query()}
    finally:
        history.close_all()
    images = sorted(home.outputs.rglob("*.png"))
    assert len(images) == 3
    wildcards = Wildcards(home.wildcards)
    prompts = []
    for batch_index, path in enumerate(images):
        expected = wildcards.resolve("a __colour__ circle", "__colour__", 100 + batch_index)
        metadata = read_image_metadata(path)
        parsed = parse_parameters(metadata.raw["parameters"])
        # What was generated is what A1111's text and our request say; the template is kept beside it.
        assert (parsed.prompt, parsed.negative_prompt) == (expected.prompt, expected.negative_prompt)
        assert metadata.request.prompt == expected.prompt and parsed.settings["Seed"] == str(100 + batch_index)
        document = json.loads(metadata.raw["marble"])
        assert document["prompt_template"] == {"prompt": "a __colour__ circle", "negative_prompt": "__colour__"}
        assert recorded[str(path)] == expected.prompt  # the history row shows what was made, too
        prompts.append(expected.prompt)
    assert len(set(prompts)) > 1  # 40 colours, 3 seeds: the runs do not all share one choice


def test_a_missing_wildcard_fails_the_job_before_the_model_loads(home, tiny_sd15_dir):
    events = []
    job = Job(request_for(tiny_sd15_dir, prompt="a __shape__"))
    assert make_runner(home).run(job, events.append) is JobState.FAILED
    assert not any(isinstance(event, ModelLoading) for event in events)
    assert "__shape__" in events[-1].message and isinstance(events[-1], JobFailed)
    assert not list(home.outputs.rglob("*.png"))


def test_without_a_wildcards_folder_given_the_prompt_is_left_as_typed(home, tiny_sd15_dir):
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models))
    runner = JobRunner(backend, ImageWriter(home.outputs), desktop.__version__)
    assert runner.run(Job(request_for(tiny_sd15_dir, batch_count=1)), lambda event: None) is JobState.FINISHED
    (path,) = home.outputs.rglob("*.png")
    assert read_image_metadata(path).request.prompt == "a __colour__ circle"
    assert "prompt_template" not in json.loads(read_image_metadata(path).raw["marble"])


def test_the_pixels_are_made_from_the_chosen_prompt(home, tiny_sd15_dir):
    (home.wildcards / "thing.txt").write_text("zebra\n", encoding="utf-8")
    runner = make_runner(home)

    def pixels(prompt: str) -> bytes:
        events = []
        runner.run(Job(request_for(tiny_sd15_dir, prompt=prompt, negative_prompt="", batch_count=1)), events.append)
        (path,) = [event.path for event in events if hasattr(event, "path")]
        with Image.open(path) as image:
            return image.tobytes()

    chosen = pixels("a __thing__ circle")
    assert chosen == pixels("a zebra circle")
    assert chosen != pixels("a __thing__ circle".replace("__", "_"))  # the typed text would differ
