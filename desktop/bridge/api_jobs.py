"""The window's queue as the HTTP API's job source: API jobs join the window's queue and history.

The HTTP server calls in from its own threads; the controller lives on the GUI thread and is not
thread-safe. So a submission crosses to the GUI thread through a queued signal and the HTTP thread
waits on a `threading.Event` for the job the controller made; the controller's events update the
tickets on the GUI thread, under a lock the HTTP threads also take. Cancelling is the job's
`CancelToken` (a `threading.Event`), safe from any thread, as DESIGN.md section 3 asks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Qt, Signal, Slot

from desktop.api.convert import ApiError, ApiLimits, ApiOptions
from desktop.api.service import Ticket, library_model_name
from desktop.bridge.controller import GenerationController
from desktop.engine.errors import InvalidRequest
from desktop.engine.events import (
    Event,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobStarted,
)
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.index import Library, LibraryRecord
from desktop.engine.request import GenerationRequest

# How long an HTTP thread waits for the GUI thread to queue its job: the GUI thread never blocks, so
# only a window that is closing (or hung) takes this long.
SUBMIT_WAIT_S = 30.0


@dataclass
class _Submission:
    """A request on its way to the GUI thread, and its answer (a ticket or an error)."""

    request: GenerationRequest
    answered: threading.Event = field(default_factory=threading.Event)
    ticket: Ticket | None = None
    error: ApiError | None = None


class ControllerJobs(QObject):
    """`desktop.api.service.JobSource` over the window's `GenerationController`. Lives on the GUI thread.

    Signals:
        job_submitted(object): an API request became this queued `Job` (GUI thread).
    """

    job_submitted = Signal(object)
    _submission_arrived = Signal(object)

    def __init__(
        self,
        controller: GenerationController,
        library: Library,
        catalog: ModelCatalog,
        options: ApiOptions,
        limits: ApiLimits,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._controller = controller
        self._library = library
        self._catalog = catalog
        self._options = options
        self.limits = limits
        self._lock = threading.Lock()
        self._tickets: dict[str, Ticket] = {}
        self._current: Ticket | None = None
        self._count = 0
        self._closed = False
        # Queued: emitted on an HTTP thread, run on the GUI thread where this object lives.
        self._submission_arrived.connect(self._submit_here, Qt.ConnectionType.QueuedConnection)
        controller.event_received.connect(self._on_event)
        controller.queue_changed.connect(self._count_jobs)
        self._count_jobs()

    # ------------------------------------------------------------------ JobSource (any thread)

    @property
    def options(self) -> ApiOptions:
        with self._lock:
            return self._options

    def set_options(self, options: ApiOptions) -> None:
        with self._lock:
            self._options = options

    def model_name(self, name: object, field_name: str) -> str:
        return library_model_name(self._catalog, name, field_name)

    def records(self, kind: str) -> list[LibraryRecord]:
        return self._library.records(kind)

    def submit(self, request: GenerationRequest) -> Ticket:
        with self._lock:
            if self._closed:
                raise ApiError(503, "The API server is stopping.")
            if self._count >= self.limits.max_queue:
                raise ApiError(429, f"The queue is full ({self._count} jobs); try again when one has finished.")
        submission = _Submission(request)
        self._submission_arrived.emit(submission)
        if not submission.answered.wait(SUBMIT_WAIT_S):
            raise ApiError(503, "The window did not take the job (it is closing); try again.")
        if submission.error is not None:
            raise submission.error
        assert submission.ticket is not None
        return submission.ticket

    def interrupt(self) -> None:
        """A1111's interrupt: stop the running job, the window's own too; its saved images are kept."""
        with self._lock:
            if self._current is not None:
                self._current.interrupted = True
                self._current.job.cancel_token.cancel()

    def progress(self) -> tuple[Ticket | None, int]:
        with self._lock:
            return self._current, self._count

    # ---------------------------------------------------------------------------- GUI thread

    def close(self) -> None:
        """Refuse new requests and answer every waiting client now (the server is stopping): the jobs
        stay in the window's queue, and what they make goes to the history as always."""
        with self._lock:
            self._closed = True
            waiting = list(self._tickets.values())
            self._tickets.clear()
        for ticket in waiting:
            with self._lock:
                ticket.cancelled = True
            ticket.done.set()

    @Slot(object)
    def _submit_here(self, submission: _Submission) -> None:
        try:
            if self._closed:
                raise ApiError(503, "The API server is stopping.")
            job = self._controller.submit(submission.request)
        except InvalidRequest as error:
            submission.error = ApiError(422, str(error))
        except ApiError as error:
            submission.error = error
        else:
            ticket = Ticket(job)
            with self._lock:
                self._tickets[job.id] = ticket
            submission.ticket = ticket
            self.job_submitted.emit(job)
        submission.answered.set()

    @Slot()
    def _count_jobs(self) -> None:
        count = len(self._controller.pending_jobs()) + (self._controller.busy)
        with self._lock:
            self._count = count

    @Slot(object)
    def _on_event(self, event: Event) -> None:
        finished: Ticket | None = None
        with self._lock:
            ticket = self._tickets.get(event.job_id)
            if isinstance(event, JobStarted):
                job = self._controller.current_job
                if ticket is None and job is not None and job.id == event.job_id:
                    # The window's own job: /progress and /interrupt see it as A1111 shows any running job.
                    ticket = Ticket(job)
                if ticket is not None:
                    ticket.started = time.perf_counter()
                self._current = ticket
                return
            current = self._current if self._current is not None and self._current.job.id == event.job_id else None
            ticket = ticket or current
            if ticket is None:
                return
            ticket.record(event)
            if isinstance(event, (JobFailed, JobCancelled, JobFinished)):
                if current is not None:
                    self._current = None
                finished = self._tickets.pop(event.job_id, None)
        if finished is not None:
            finished.done.set()
