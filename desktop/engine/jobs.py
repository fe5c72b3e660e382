"""Jobs, their states, the cancel token and the queue that orders them."""

from __future__ import annotations

import enum
import itertools
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field

from desktop.engine.request import GenerationRequest


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


class CancelToken:
    """Set from any thread; checked by the step callback. An Event, never a queued slot."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


_ids = itertools.count(1)
# Job ids are keys in the history database, shared by every run of the app and the command line:
# a per-process random part keeps them unique across processes, the counter keeps them ordered.
_process_tag = secrets.token_hex(4)


def new_job_id() -> str:
    return f"job-{_process_tag}-{next(_ids)}"


@dataclass
class Job:
    """A request on its way through the queue. Mutable state lives on the owning thread only."""

    request: GenerationRequest
    id: str = field(default_factory=new_job_id)
    cancel_token: CancelToken = field(default_factory=CancelToken)
    state: JobState = JobState.QUEUED


class JobQueue:
    """First in, first out; thread-safe so the GUI can add and cancel while the worker takes."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._lock = threading.Lock()

    def put(self, job: Job) -> None:
        with self._lock:
            self._jobs.append(job)

    def take(self) -> Job | None:
        with self._lock:
            return self._jobs.popleft() if self._jobs else None

    def remove(self, job_id: str) -> Job | None:
        with self._lock:
            for job in self._jobs:
                if job.id == job_id:
                    self._jobs.remove(job)
                    return job
        return None

    def pending(self) -> list[Job]:
        with self._lock:
            return list(self._jobs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
