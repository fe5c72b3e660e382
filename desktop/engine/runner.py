"""Runs one job from start to finish and reports it as a stream of typed events.

The worker thread of the window and the command line both use this class, so a job behaves the same
in both. `run` never raises: every outcome is an event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from desktop.engine.backends.base import Backend, StepInfo
from desktop.engine.errors import Cancelled, MarbleError
from desktop.engine.events import (
    Event,
    ImageSaved,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobStarted,
    JobWarning,
    ModelLoaded,
    ModelLoading,
    PreviewReady,
    StepProgress,
)
from desktop.engine.jobs import Job, JobState
from desktop.engine.metadata import png_text_chunks
from desktop.engine.outputs import ImageWriter

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]


class JobRunner:
    """Owns no thread: call `run` on the thread that owns the backend."""

    def __init__(self, backend: Backend, writer: ImageWriter, version: str) -> None:
        self._backend = backend
        self._writer = writer
        self._version = version

    @property
    def backend(self) -> Backend:
        return self._backend

    def run(self, job: Job, emit: Emit) -> JobState:
        job.state = JobState.RUNNING
        started = time.perf_counter()
        try:
            request = job.request.with_seed().validate()
            job.request = request
            emit(JobStarted(job.id, request))
            paths, seeds = self._run(job, emit)
        except Cancelled:
            job.state = JobState.CANCELLED
            emit(JobCancelled(job.id))
        except MarbleError as error:
            job.state = JobState.FAILED
            emit(JobFailed(job.id, str(error), type(error).__name__))
        except Exception as error:  # noqa: BLE001 - a bug in one job must not kill the worker
            log.exception("job %s failed", job.id)
            job.state = JobState.FAILED
            emit(JobFailed(job.id, f"Unexpected error: {type(error).__name__}: {error}", type(error).__name__))
        else:
            job.state = JobState.FINISHED
            emit(JobFinished(job.id, tuple(paths), tuple(seeds), time.perf_counter() - started))
        return job.state

    def _run(self, job: Job, emit: Emit) -> tuple[list[str], list[int]]:
        request, token = job.request, job.cancel_token
        if token.cancelled:
            raise Cancelled("Cancelled before it started.")
        emit(ModelLoading(job.id, request.model))
        report = self._backend.load(request)
        emit(ModelLoaded(job.id, report.model.name, report.seconds, report.reused))
        for note in report.notes:
            emit(JobWarning(job.id, note))
        paths: list[str] = []
        seeds: list[int] = []

        def on_step(info: StepInfo) -> None:
            emit(StepProgress(job.id, info.step, info.total, info.batch_index, request.batch_count))
            if info.preview is not None:
                emit(PreviewReady(job.id, info.step, info.total, info.preview))

        for batch_index in range(request.batch_count):
            if token.cancelled:
                raise Cancelled("Cancelled between batches.")
            batch = self._backend.generate(request, batch_index, on_step, token)
            for note in batch.notes:
                emit(JobWarning(job.id, note))
            for position, (image, seed) in enumerate(zip(batch.images, batch.seeds, strict=True)):
                chunks = png_text_chunks(
                    request,
                    seed,
                    report.model,
                    self._version,
                    sampler_used=batch.sampler_used,
                    batch_pos=position if request.batch_size > 1 else None,
                )
                path = self._writer.save(image, chunks, seed)
                paths.append(str(path))
                seeds.append(seed)
                emit(ImageSaved(job.id, str(path), seed, len(paths) - 1))
        return paths, seeds
