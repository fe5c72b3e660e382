"""The GUI thread's handle on generation: a queue of jobs fed one at a time to the worker thread."""

from __future__ import annotations

from PySide6.QtCore import QObject, QThread, Signal, Slot

from desktop.bridge.worker import GenerationWorker, RunnerFactory
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
from desktop.engine.jobs import Job, JobQueue
from desktop.engine.request import GenerationRequest

_SIGNAL_FOR = {
    JobStarted: "job_started",
    ModelLoading: "model_loading",
    ModelLoaded: "model_loaded",
    StepProgress: "step_progressed",
    PreviewReady: "preview_ready",
    JobWarning: "job_warning",
    ImageSaved: "image_saved",
    JobFinished: "job_finished",
    JobFailed: "job_failed",
    JobCancelled: "job_cancelled",
}


class GenerationController(QObject):
    """Owns the job queue and the generation thread. Lives on the GUI thread.

    Signals (each carries the engine's frozen event):
        job_started, model_loading, model_loaded, step_progressed, preview_ready, job_warning,
        image_saved, job_finished, job_failed, job_cancelled
        event_received(object): every event above, for logs and panels that want them all.
        queue_changed(): a job was added, started, removed or ended.
        busy_changed(bool): a job started running, or the last one ended.
    """

    job_started = Signal(object)
    model_loading = Signal(object)
    model_loaded = Signal(object)
    step_progressed = Signal(object)
    preview_ready = Signal(object)
    job_warning = Signal(object)
    image_saved = Signal(object)
    job_finished = Signal(object)
    job_failed = Signal(object)
    job_cancelled = Signal(object)
    event_received = Signal(object)
    queue_changed = Signal()
    busy_changed = Signal(bool)

    _start_job = Signal(object)

    def __init__(self, runner_factory: RunnerFactory, parent: QObject | None = None) -> None:
        super().__init__(parent)
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
            self._on_event(JobCancelled(job.id))
            self.queue_changed.emit()

    def cancel_all(self) -> None:
        while (job := self._queue.take()) is not None:
            job.cancel_token.cancel()
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

    def shutdown(self) -> None:
        """Cancel everything, then stop the thread and wait for it (a step at most, or a model load)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.cancel_all()
        self._thread.quit()
        self._thread.wait()

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
