"""The GUI thread's handle on generation: a queue of jobs fed one at a time to the worker thread."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot

from desktop.bridge.worker import GenerationWorker, RunnerFactory
from desktop.engine.errors import MarbleError
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
from desktop.engine.history import HistoryStore, JobRecord, save_unsaved
from desktop.engine.history.store import DISMISSED, INTERRUPTED, RESUMED
from desktop.engine.jobs import Job, JobQueue, JobState
from desktop.engine.request import GenerationRequest

log = logging.getLogger(__name__)

_SIGNAL_FOR = {
    JobStarted: "job_started",
    ModelLoading: "model_loading",
    ModelLoaded: "model_loaded",
    ModelCompiling: "model_compiling",
    PreviewsFitting: "previews_fitting",
    PromptRewriting: "prompt_rewriting",
    StepProgress: "step_progressed",
    PreviewReady: "preview_ready",
    JobWarning: "job_warning",
    ImageSaved: "image_saved",
    ImageUnsaved: "image_unsaved",
    JobFinished: "job_finished",
    JobFailed: "job_failed",
    JobCancelled: "job_cancelled",
}


class GenerationController(QObject):
    """Owns the job queue and the generation thread. Lives on the GUI thread.

    Signals (each carries the engine's frozen event):
        job_started, model_loading, model_loaded, model_compiling, previews_fitting, prompt_rewriting, step_progressed,
        preview_ready,
        job_warning, image_saved, image_unsaved, job_finished, job_failed, job_cancelled
        event_received(object): every event above, for logs and panels that want them all.
        pending_images_changed(int): how many unsaved images (disk full) are kept in memory.
        queue_changed(): a job was added, started, removed or ended.
        busy_changed(bool): a job started running, or the last one ended.
    """

    job_started = Signal(object)
    model_loading = Signal(object)
    model_loaded = Signal(object)
    model_compiling = Signal(object)
    previews_fitting = Signal(object)
    prompt_rewriting = Signal(object)
    step_progressed = Signal(object)
    preview_ready = Signal(object)
    job_warning = Signal(object)
    image_saved = Signal(object)
    image_unsaved = Signal(object)
    job_finished = Signal(object)
    job_failed = Signal(object)
    job_cancelled = Signal(object)
    event_received = Signal(object)
    queue_changed = Signal()
    busy_changed = Signal(bool)
    pending_images_changed = Signal(int)

    _start_job = Signal(object)

    def __init__(
        self, runner_factory: RunnerFactory, parent: QObject | None = None, history: HistoryStore | None = None
    ) -> None:
        super().__init__(parent)
        # Queued jobs are written to the history database, so a crash or a quit never loses them.
        self._history = history
        self._pending_images: list[ImageUnsaved] = []
        self._queue = JobQueue()
        self._current: Job | None = None
        self._thread = QThread()
        self._thread.setObjectName("marble-generation")
        self._worker = GenerationWorker(runner_factory)
        self._worker.moveToThread(self._thread)
        self._start_job.connect(self._worker.run_job)
        self._worker.event_emitted.connect(self._on_event)
        self._worker.job_done.connect(self._on_job_done)
        self._thread.finished.connect(self._worker.deleteLater)
        self._thread.start()
        self._shut_down = False

    # ----------------------------------------------------------------------------------- public

    def submit(self, request: GenerationRequest) -> Job:
        """Validate (raises InvalidRequest), fix the seed, queue, and start when the worker is free."""
        job = Job(request.with_seed().validate())
        self._journal(lambda history: history.add_job(job.id, job.request))
        self._queue.put(job)
        self.queue_changed.emit()
        self._start_next()
        return job

    def cancel(self, job_id: str | None = None) -> None:
        """Cancel the running job (or the named one, running or queued)."""
        if job_id is None or (self._current is not None and self._current.id == job_id):
            if self._current is not None:
                self._current.cancel_token.cancel()
            return
        job = self._queue.remove(job_id)
        if job is not None:
            job.cancel_token.cancel()
            self._journal(lambda history: history.set_job_state(job.id, JobState.CANCELLED.value))
            self._on_event(JobCancelled(job.id))
            self.queue_changed.emit()

    def cancel_all(self) -> None:
        while (job := self._queue.take()) is not None:
            job.cancel_token.cancel()
            if not self._shut_down:
                self._journal(lambda history, job_id=job.id: history.set_job_state(job_id, JobState.CANCELLED.value))
            self._on_event(JobCancelled(job.id))
        self.cancel()
        self.queue_changed.emit()

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def current_job(self) -> Job | None:
        return self._current

    def pending_jobs(self) -> list[Job]:
        return self._queue.pending()

    # ------------------------------------------------------------------------ history and recovery

    @property
    def history(self) -> HistoryStore | None:
        return self._history

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs a crash, a kill or a quit left queued or half done, oldest first."""
        if self._history is None:
            return []
        try:
            return self._history.unfinished_jobs()
        except sqlite3.Error as error:
            log.warning("cannot read unfinished jobs: %s", error)
            return []

    def resume(self, job_id: str) -> Job | None:
        """Queue what remains of an unfinished job (batches already written are not made again)."""
        record = next((job for job in self.unfinished_jobs() if job.id == job_id), None)
        if record is None:
            return None
        job = self.submit(record.remaining_request())
        self._journal(lambda history: history.set_job_state(job_id, RESUMED, f"resumed as {job.id}"))
        return job

    def dismiss(self, job_id: str) -> None:
        self._journal(lambda history: history.set_job_state(job_id, DISMISSED))

    @property
    def pending_images(self) -> list[ImageUnsaved]:
        """Images that could not be written (disk full), kept in memory until saved elsewhere."""
        return list(self._pending_images)

    def save_pending_images(self, folder: Path | str) -> list[Path]:
        """Write the kept images into `folder` and record them; raises StorageError if that fails too
        (the images not yet written stay in memory)."""
        saved: list[Path] = []
        try:
            while self._pending_images:
                path = save_unsaved(self._pending_images[0], folder)
                self._pending_images.pop(0)
                saved.append(path)
                self._journal(lambda history, path=path: history.index_file(path))
        finally:
            self.pending_images_changed.emit(len(self._pending_images))
        return saved

    def discard_pending_images(self) -> None:
        self._pending_images.clear()
        self.pending_images_changed.emit(0)

    def _journal(self, write: Callable[[HistoryStore], object]) -> None:
        # The database is a record, not the job itself: a failing write is logged, never fatal.
        if self._history is None:
            return
        try:
            write(self._history)
        except (sqlite3.Error, MarbleError, OSError) as error:
            log.warning("history database: %s", error)

    def shutdown(self) -> None:
        """Cancel everything, then stop the thread and wait for it (a step at most, or a model load)."""
        if self._shut_down:
            return
        self._shut_down = True
        # Quitting is not the user cancelling: the running job is recorded as interrupted and the queued
        # ones stay queued, so the next start offers them again.
        running = self._current.id if self._current is not None else None
        self.cancel_all()
        self._thread.quit()
        self._thread.wait()
        if running is not None:
            self._journal(lambda history: history.set_job_state(running, INTERRUPTED))

    # ---------------------------------------------------------------------------------- private

    def _start_next(self) -> None:
        if self._current is not None or self._shut_down:
            return
        job = self._queue.take()
        if job is None:
            return
        self._current = job
        self.busy_changed.emit(True)
        self.queue_changed.emit()
        self._start_job.emit(job)

    @Slot(object)
    def _on_event(self, event: Event) -> None:
        if isinstance(event, ImageUnsaved):
            self._pending_images.append(event)
            self.pending_images_changed.emit(len(self._pending_images))
        getattr(self, _SIGNAL_FOR[type(event)]).emit(event)
        self.event_received.emit(event)

    @Slot(str, str)
    def _on_job_done(self, job_id: str, state: str) -> None:
        if self._current is not None and self._current.id == job_id:
            self._current = None
        self.queue_changed.emit()
        if len(self._queue) == 0:
            self.busy_changed.emit(False)
        self._start_next()
