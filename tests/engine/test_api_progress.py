"""What the HTTP API's /sdapi/v1/progress answers while a job runs (A1111's fields): how far the job is across its
batches, how long is left, the step and batch it is at, the preview, and what it does while no step runs. The
route itself is exercised over HTTP in tests/e2e/test_api.py; these check the numbers it carries."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from desktop.api import server
from desktop.api.server import _progress
from desktop.api.service import Ticket
from desktop.engine.events import (
    ModelCompiling,
    ModelLoading,
    PreviewReady,
    PreviewsFitting,
    PromptRewriting,
    StepProgress,
)
from desktop.engine.jobs import Job
from desktop.engine.request import GenerationRequest


def _ticket(batch_count: int = 1) -> Ticket:
    return Ticket(Job(GenerationRequest(prompt="a red circle", model="tiny", steps=4, batch_count=batch_count)))


def test_nothing_running_is_progress_zero():
    body = _progress(None, 0, False)
    assert (body["progress"], body["eta_relative"], body["current_image"], body["current_task"]) == (0.0, 0.0, None,
                                                                                                   None)  # fmt: skip
    assert body["state"]["job_count"] == 0 and body["state"]["sampling_steps"] == 0


def test_progress_counts_the_steps_of_every_batch_and_estimates_the_time_left(monkeypatch):
    ticket = _ticket(batch_count=2)
    ticket.started = 100.0
    monkeypatch.setattr(server.time, "perf_counter", lambda: 106.0)
    assert _progress(ticket, 1, True)["progress"] == 0.0  # before its first step: no estimate either
    assert _progress(ticket, 1, True)["eta_relative"] == 0.0
    ticket.record(StepProgress(ticket.job.id, 2, 4, 1, 2))  # step 2 of 4 in the second of two batches
    body = _progress(ticket, 3, True)
    assert body["progress"] == pytest.approx(0.75)  # (4 + 2) of 8 steps
    assert body["eta_relative"] == pytest.approx(2.0)  # 6 s for three quarters: 2 s to go
    state = body["state"]
    assert (state["job"], state["job_count"], state["job_no"]) == (ticket.job.id, 3, 1)
    assert (state["sampling_step"], state["sampling_steps"]) == (2, 4)
    assert body["current_task"] == ticket.job.id
    ticket.record(StepProgress(ticket.job.id, 4, 4, 1, 2))
    assert _progress(ticket, 1, True)["progress"] == 1.0 and _progress(ticket, 1, True)["eta_relative"] == 0.0
    # A step past its total (a hires second pass longer than first counted) never reads over 100 %.
    ticket.record(StepProgress(ticket.job.id, 5, 4, 1, 2))
    assert _progress(ticket, 1, True)["progress"] == 1.0


def test_the_preview_comes_as_a_png_of_its_pixels_unless_skipped():
    ticket = _ticket()
    assert _progress(ticket, 1, False)["current_image"] is None  # no preview yet
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    ticket.record(PreviewReady(ticket.job.id, 1, 4, pixels))
    sent = _progress(ticket, 1, False)["current_image"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(sent)))), pixels)
    assert _progress(ticket, 1, True)["current_image"] is None  # skip_current_image


def test_textinfo_says_what_the_job_does_while_no_step_runs():
    """Loading, compiling and fitting previews say so in `textinfo` (an API client would otherwise see 0 %
    standing still); the steps clear it."""
    ticket = _ticket()
    said = [_progress(ticket, 1, True)["textinfo"]]
    job = ticket.job.id
    for event in (ModelLoading(job, "tiny"), PreviewsFitting(job, "tiny"), PromptRewriting(job, "tiny"),
                  ModelCompiling(job, "tiny"), StepProgress(job, 1, 2, 0, 1)):  # fmt: skip
        ticket.record(event)
        said.append(_progress(ticket, 1, True)["textinfo"])
    assert said == [None, "Loading tiny…", "Preparing live previews for this model (once)…",
                    "Rewriting the prompt (FLUX.3's prompt rewriter)…", "Compiling the model (first fast-mode image)…",
                    None]  # fmt: skip
