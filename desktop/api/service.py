"""The engine side of the HTTP API: one worker thread, a bounded queue, progress, options, names.

No web framework here: `desktop.api.server` turns HTTP into calls on `ApiService`. Exactly one
thread (the worker) runs jobs, so the pipeline is touched by one thread, as everywhere in Marble.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from desktop.api.convert import ApiError, ApiLimits, ApiOptions, looks_like_path, strip_title
from desktop.engine.events import (
    COMPILING_TEXT,
    FITTING_TEXT,
    LOADING_TEXT,
    REWRITING_TEXT,
    Event,
    ImageSaved,
    JobCancelled,
    JobFailed,
    JobWarning,
    ModelCompiling,
    ModelLoading,
    PreviewReady,
    PreviewsFitting,
    PromptRewriting,
    StepProgress,
)
from desktop.engine.jobs import Job
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.index import Library, LibraryRecord
from desktop.engine.request import GenerationRequest
from desktop.engine.runner import JobRunner

log = logging.getLogger(__name__)

RunnerFactory = Callable[[], JobRunner]


@dataclass
class Ticket:
    """One API job. Written by the worker thread, read by HTTP threads under the service's lock."""

    job: Job
    done: threading.Event = field(default_factory=threading.Event)
    paths: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failure: JobFailed | None = None
    cancelled: bool = False
    interrupted: bool = False
    step: int = 0
    total: int = 0
    # What the job is doing while no step runs (loading, compiling, fitting previews): A1111's `textinfo`.
    textinfo: str | None = None
    batch_index: int = 0
    started: float = 0.0
    preview: np.ndarray | None = None

    def record(self, event: Event) -> None:
        """Take a job event into the ticket (the caller holds its lock): progress, preview, images,
        warnings and how it ended. Shared by the headless service and the window's adapter."""
        match event:
            case ModelLoading(model=model):
                self.textinfo = LOADING_TEXT.format(model=model)
            case ModelCompiling():
                self.textinfo = COMPILING_TEXT
            case PreviewsFitting():
                self.textinfo = FITTING_TEXT
            case PromptRewriting():
                self.textinfo = REWRITING_TEXT
            case StepProgress(step=step, total=total, batch_index=batch_index):
                self.step, self.total, self.batch_index = step, total, batch_index
                self.textinfo = None
            case PreviewReady(image=image):
                self.preview = image
            case ImageSaved(path=path, seed=seed):
                self.paths.append(path)
                self.seeds.append(seed)
            case JobWarning(message=message):
                self.warnings.append(message)
                log.warning("API job %s: %s", self.job.id, message)
            case JobFailed():
                self.failure = event
                log.warning("API job %s failed: %s", self.job.id, event.message)
            case JobCancelled():
                self.cancelled = True

    @property
    def fraction(self) -> float:
        batches = max(1, self.job.request.batch_count)
        if self.total <= 0:
            return 0.0
        return min(1.0, (self.batch_index * self.total + self.step) / (batches * self.total))


class JobSource(Protocol):
    """What the HTTP routes need from whoever runs the jobs: `ApiService` (headless `marble serve`) or
    the window's queue (`desktop.bridge.api_jobs.ControllerJobs`). Every method is called on the HTTP
    server's threads, so each implementation is thread-safe."""

    limits: ApiLimits

    @property
    def options(self) -> ApiOptions: ...

    def set_options(self, options: ApiOptions) -> None: ...

    def model_name(self, name: object, field_name: str) -> str: ...

    def records(self, kind: str) -> list[LibraryRecord]: ...

    def submit(self, request: GenerationRequest) -> Ticket:
        """Queue the request; the ticket's `done` is set after its last event. Raises ApiError."""
        ...

    def interrupt(self) -> None: ...

    def progress(self) -> tuple[Ticket | None, int]:
        """The running job's ticket (None when idle) and how many jobs are queued or running."""
        ...


def library_model_name(catalog: ModelCatalog, name: object, field_name: str) -> str:
    """A library model name from a client, or ApiError: never a path, never a file touched."""
    if not isinstance(name, str) or not name.strip():
        raise ApiError(422, f"{field_name} must be a model name.", field_name)
    if looks_like_path(name):
        raise ApiError(422, f"{field_name} must be a library name, not a path: {name!r}.", field_name)
    entry = catalog.find(strip_title(name))
    if entry is None:
        known = ", ".join(catalog.names()) or "none"
        raise ApiError(404, f"No model named {name!r} in the library (models: {known}).", field_name)
    return entry.name


class ApiService:
    """Runs API jobs one at a time on its own thread; `stop` cancels and joins it."""

    def __init__(
        self,
        library: Library,
        catalog: ModelCatalog,
        runner_factory: RunnerFactory,
        options: ApiOptions,
        limits: ApiLimits,
    ) -> None:
        self._library = library
        self._catalog = catalog
        self._runner_factory = runner_factory
        self._options = options
        self.limits = limits
        self._lock = threading.Condition()
        self._pending: deque[Ticket] = deque()
        self._current: Ticket | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="marble-api-worker", daemon=True)
        self.jobs_done = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Cancel what is queued and running, then join: images already saved stay saved (and in history)."""
        self.cancel_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def cancel_all(self) -> None:
        with self._lock:
            self._stopping = True
            for ticket in self._pending:
                ticket.cancelled = True
                ticket.job.cancel_token.cancel()
                ticket.done.set()
            self._pending.clear()
            if self._current is not None:
                self._current.interrupted = True
                self._current.job.cancel_token.cancel()
            self._lock.notify_all()

    # ----------------------------------------------------------------------------------- names

    def model_name(self, name: object, field_name: str) -> str:
        return library_model_name(self._catalog, name, field_name)

    def records(self, kind: str) -> list[LibraryRecord]:
        return self._library.records(kind)

    # ---------------------------------------------------------------------------------- options

    @property
    def options(self) -> ApiOptions:
        with self._lock:
            return self._options

    def set_options(self, options: ApiOptions) -> None:
        with self._lock:
            self._options = options

    # ------------------------------------------------------------------------------------- jobs

    def submit(self, request: GenerationRequest) -> Ticket:
        with self._lock:
            if self._stopping:
                raise ApiError(503, "The server is shutting down.")
            waiting = len(self._pending) + (self._current is not None)
            if waiting >= self.limits.max_queue:
                raise ApiError(429, f"The queue is full ({waiting} jobs); try again when one has finished.")
            ticket = Ticket(Job(request))
            self._pending.append(ticket)
            self._lock.notify_all()
        return ticket

    def interrupt(self) -> None:
        """A1111's interrupt: stop the running job; its finished images are kept and returned."""
        with self._lock:
            if self._current is not None:
                self._current.interrupted = True
                self._current.job.cancel_token.cancel()

    def progress(self) -> tuple[Ticket | None, int]:
        with self._lock:
            return self._current, len(self._pending) + (self._current is not None)

    def _loop(self) -> None:
        runner: JobRunner | None = None
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                ticket = self._pending.popleft()
                self._current = ticket
                ticket.started = time.perf_counter()
            try:
                if runner is None:
                    # Built here, on the one thread that will ever touch the pipeline (torch imports now).
                    runner = self._runner_factory()
                runner.run(ticket.job, lambda event, t=ticket: self._on_event(t, event))
            except Exception as error:  # noqa: BLE001 - the worker must outlive one broken job
                log.exception("API job failed before it ran")
                from desktop.engine.errors import ErrorKind

                ticket.failure = JobFailed(ticket.job.id, f"{type(error).__name__}: {error}", ErrorKind.INTERNAL)
            finally:
                with self._lock:
                    self._current = None
                    self.jobs_done += 1
                ticket.done.set()

    def _on_event(self, ticket: Ticket, event: Event) -> None:
        with self._lock:
            ticket.record(event)


def preview_png(image: np.ndarray | None) -> bytes | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
