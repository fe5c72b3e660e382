"""Runs one job from start to finish and reports it as a stream of typed events.

The worker thread of the window and the command line both use this class, so a job behaves the same
in both. `run` never raises: every outcome is an event.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from PIL import Image

from desktop.engine.backends.base import Backend, GeneratedBatch, LoadReport, ModelInfo, StepInfo, Waiting
from desktop.engine.errors import Cancelled, ErrorKind, MarbleError, StorageError
from desktop.engine.events import (
    Event,
    ImageSaved,
    ImageUnsaved,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobStarted,
    JobWarning,
    ModelCompiling,
    ModelLoaded,
    ModelLoading,
    PreviewReady,
    PreviewsFitting,
    PromptRewriting,
    StepProgress,
)
from desktop.engine.history.store import JOB_CHUNK, HistoryStore, NewImage
from desktop.engine.imaging import edit_parameters, file_sha256, upscale_parameters
from desktop.engine.jobs import Job, JobState
from desktop.engine.metadata import adapter_hashes_text, png_text_chunks, written_sampler
from desktop.engine.outputs import ImageWriter
from desktop.engine.provenance import ImageOrigin
from desktop.engine.request import GenerationRequest
from desktop.engine.wildcards import Wildcards

log = logging.getLogger(__name__)

# What the job says while it waits before its first step (StepInfo.waiting), by what it waits for.
_WAITING_EVENTS = {Waiting.COMPILING: ModelCompiling, Waiting.FITTING_PREVIEWS: PreviewsFitting,
                   Waiting.REWRITING_PROMPT: PromptRewriting}  # fmt: skip

Emit = Callable[[Event], None]


class JobRunner:
    """Owns no thread: call `run` on the thread that owns the backend."""

    def __init__(
        self,
        backend: Backend,
        writer: ImageWriter,
        version: str,
        history: HistoryStore | None = None,
        wildcards: Wildcards | None = None,
    ) -> None:
        self._backend = backend
        self._writer = writer
        self._version = version
        # Optional so tools and tests can run jobs without a database; the app and the CLI pass one.
        self._history = history
        # `__name__` in prompts; None leaves them as typed (tools and tests without a data folder).
        self._wildcards = wildcards

    @property
    def backend(self) -> Backend:
        return self._backend

    def run(self, job: Job, emit: Emit) -> JobState:
        job.state = JobState.RUNNING
        started = time.perf_counter()
        try:
            request = job.request.with_seed().validate()
            job.request = request
            self._journal_start(job, emit)
            emit(JobStarted(job.id, request))
            paths, seeds = self._run(job, emit)
        except Cancelled:
            job.state = JobState.CANCELLED
            self._journal_end(job, "", emit)
            emit(JobCancelled(job.id))
        except MarbleError as error:
            job.state = JobState.FAILED
            self._journal_end(job, str(error), emit)
            emit(JobFailed(job.id, str(error), error.kind, traceback.format_exc()))
        except Exception as error:  # noqa: BLE001 - a bug in one job must not kill the worker
            log.exception("job %s failed", job.id)
            job.state = JobState.FAILED
            self._journal_end(job, str(error), emit)
            emit(JobFailed(job.id, f"Unexpected error: {type(error).__name__}: {error}", ErrorKind.INTERNAL,
                           traceback.format_exc()))
        else:
            job.state = JobState.FINISHED
            self._journal_end(job, "", emit)
            emit(JobFinished(job.id, tuple(paths), tuple(seeds), time.perf_counter() - started))
        return job.state

    def _run(self, job: Job, emit: Emit) -> tuple[list[str], list[int]]:
        request, token = job.request, job.cancel_token
        if token.cancelled:
            raise Cancelled("Cancelled before it started.")
        # Every run's wildcards before the model loads: a missing wildcard file fails at once.
        per_batch = [self._with_wildcards(request, index) for index in range(request.batch_count)]
        if request.upscale_job and not request.sd_upscale:
            # A plain upscale needs no pipeline: the source's model is only named in the recipe kept.
            report = LoadReport(ModelInfo(request.model, "", "", None), 0.0, True, "", "")
        else:
            emit(ModelLoading(job.id, request.model))
            report = self._backend.load(request)
            emit(ModelLoaded(job.id, report.model.name, report.seconds, report.reused))
        for note in report.notes:
            emit(JobWarning(job.id, note))
        paths: list[str] = []
        seeds: list[int] = []
        edit_extra = upscale_parameters(request, self._edit_extra(request))

        def on_step(info: StepInfo) -> None:
            if info.waiting is not None:
                emit(_WAITING_EVENTS[info.waiting](job.id, report.model.name))
                return
            emit(StepProgress(job.id, info.step, info.total, info.batch_index, request.batch_count))
            if info.preview is not None:
                emit(PreviewReady(job.id, info.step, info.total, info.preview))

        for batch_index in range(request.batch_count):
            if token.cancelled:
                raise Cancelled("Cancelled between batches.")
            batch_started = time.perf_counter()
            batch_request = per_batch[batch_index]
            batch = self._backend.generate(batch_request, batch_index, on_step, token)
            batch_seconds = time.perf_counter() - batch_started
            if batch.rewritten_prompt is not None:
                # The caption FLUX.3's rewriter wrote is the prompt the images were made from: the recipe records
                # it (the request as typed beside it), so the image is made again without the rewriter.
                batch_request = batch_request.with_rewritten_prompt(batch.rewritten_prompt)
            for note in batch.notes:
                emit(JobWarning(job.id, note))
            model = replace(report.model, hash=batch.model_hash) if batch.model_hash else report.model

            def chunks_for(
                position: int, seed: int, batch: GeneratedBatch = batch, made: GenerationRequest = batch_request,
                model: ModelInfo = model,
            ) -> dict[str, str]:
                chunks = png_text_chunks(
                    made,
                    seed,
                    model,
                    self._version,
                    sampler_used=batch.sampler_used,
                    batch_pos=position if request.batch_size > 1 else None,
                    extra=edit_extra or None,
                    loras=batch.loras,
                    embeddings=batch.embeddings,
                    vae=batch.vae,
                    template=request if made is not request else None,
                    controls=batch.controls,
                    refiner=batch.refiner,
                )
                # The file names its job, so an image whose history row never got written (a kill, a
                # full disk) still counts for that job when the next start indexes it.
                return {**chunks, JOB_CHUNK: job.id}

            origin = ImageOrigin(self._version, model.name, model.hash or "")
            for position, (image, seed) in enumerate(zip(batch.images, batch.seeds, strict=True)):
                chunks = chunks_for(position, seed)
                try:
                    path = self._writer.save(image, chunks, seed, origin)
                except StorageError as error:
                    # The rest of this batch is made already: keep it in memory too, then stop the job.
                    unsaved = [
                        (later, later_seed, chunks_for(k, later_seed))
                        for k, (later, later_seed) in enumerate(zip(batch.images, batch.seeds, strict=True))
                        if k >= position
                    ]
                    raise self._keep_unsaved(job.id, unsaved, len(paths), error, emit, origin) from error
                for problem in self._writer.problems:
                    emit(JobWarning(job.id, problem))
                self._writer.problems.clear()
                timings = {"load_s": report.seconds, "generate_s": batch_seconds / max(1, len(batch.images))}
                self._record_image(job, path, seed, report, model, batch, timings, emit, batch_request)
                paths.append(str(path))
                seeds.append(seed)
                emit(ImageSaved(job.id, str(path), seed, len(paths) - 1))
        return paths, seeds

    def _with_wildcards(self, request: GenerationRequest, batch_index: int) -> GenerationRequest:
        """The request one run makes: wildcards chosen by that run's first seed (seed + batch index
        for single images), so any image can be made again from its own seed."""
        if self._wildcards is None:
            return request
        resolved = self._wildcards.resolve(request.prompt, request.negative_prompt, request.seed_for(batch_index, 0))
        if (resolved.prompt, resolved.negative_prompt) == (request.prompt, request.negative_prompt):
            return request
        return replace(request, prompt=resolved.prompt, negative_prompt=resolved.negative_prompt)

    @staticmethod
    def _edit_extra(request: GenerationRequest) -> dict[str, str]:
        """Strength, mask settings and the source's hash, so an edit can be traced to its source; the
        reference images' hashes (Qwen-Image-Edit Plus beside a source, Flux.2 with or without one)."""
        pairs: dict[str, str] = {}
        if request.init_image is not None:
            try:
                source_hash: str | None = file_sha256(request.init_image)
            except OSError:
                source_hash = None  # the backend reports the unreadable source with a clear message
            pairs = edit_parameters(request, source_hash)
        if request.reference_images:
            # Traced as the source is (first 10 hex of each sha256).
            try:
                pairs["Reference image hashes"] = ", ".join(file_sha256(p)[:10] for p in request.reference_images)
            except OSError:
                pass
        return pairs

    # --------------------------------------------------------------------------------- history

    def _journal_start(self, job: Job, emit: Emit) -> None:
        if self._history is None:
            return
        try:
            # The controller recorded the job when it was queued; the command line's job starts here.
            self._history.add_job(job.id, job.request, JobState.RUNNING.value)
        except sqlite3.Error as error:
            emit(JobWarning(job.id, f"The history database could not record this job: {error}."))

    def _journal_end(self, job: Job, message: str, emit: Emit) -> None:
        if self._history is None:
            return
        try:
            self._history.set_job_state(job.id, job.state.value, message)
        except sqlite3.Error as error:
            emit(JobWarning(job.id, f"The history database could not record how this job ended: {error}."))

    def _record_image(
        self,
        job: Job,
        path: Path,
        seed: int,
        report: LoadReport,
        model: ModelInfo,
        batch: GeneratedBatch,
        timings: dict[str, float],
        emit: Emit,
        made_from: GenerationRequest | None = None,
    ) -> None:
        """Record a written image in the history (one transaction) before anyone is told it exists.

        The row gets the backend's typed facts (hashes, sampler), formatted by metadata.py as in the
        file, never parsed back out of the text written a moment before."""
        if self._history is None:
            return
        entry = NewImage(
            path=str(path),
            request=made_from or job.request,
            seed=seed,
            model_name=model.name,
            model_hash=model.hash,
            lora_hashes=adapter_hashes_text(batch.loras),
            sampler=written_sampler(job.request.sampler, batch.sampler_used),
            timings=timings,
            device=f"{report.device} {report.dtype}".strip(),
            job_id=job.id,
        )
        try:
            self._history.record_image(entry)
        except sqlite3.Error as error:
            # The PNG is safe on disk with its metadata; the next start indexes it from the file.
            emit(JobWarning(job.id, f"{path.name} is saved, but the history database could not record it "
                                    f"({error}); it will be added when Marble next starts."))

    def _keep_unsaved(
        self,
        job_id: str,
        images: list[tuple[Image.Image, int, Mapping[str, str]]],
        saved_before: int,
        error: StorageError,
        emit: Emit,
        origin: ImageOrigin,
    ) -> StorageError:
        """Hand the images that could not be written to the caller as PNG bytes, then fail the job."""
        for offset, (image, seed, chunks) in enumerate(images):
            # The same bytes the writer would have saved: the XMP mark and, when signing, the manifest.
            data = self._writer.encode(image, chunks, origin, f"marble-{seed}.png")
            emit(ImageUnsaved(job_id, data, seed, saved_before + offset, f"marble-{seed}.png", str(error)))
        count = len(images)
        return StorageError(
            f"{error} {count} image{'s are' if count != 1 else ' is'} kept in memory: "
            "save them elsewhere (File > Save unsaved images, or `marble generate --rescue-dir DIR`)."
        )
