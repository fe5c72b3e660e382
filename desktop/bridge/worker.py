"""The generation worker: a QObject living in its own QThread, owning the backend and its pipeline."""

from __future__ import annotations

import traceback
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal, Slot

from desktop.engine.errors import error_kind
from desktop.engine.events import JobFailed
from desktop.engine.jobs import Job, JobState
from desktop.engine.runner import JobRunner

RunnerFactory = Callable[[], JobRunner]


class GenerationWorker(QObject):
    """Runs one job at a time on the generation thread.

    Signals:
        event_emitted(object): every engine event of the running job, in order.
        job_done(str, str): the job id and its final state's value, after its last event.
    """

    event_emitted = Signal(object)
    job_done = Signal(str, str)

    def __init__(self, runner_factory: RunnerFactory) -> None:
        super().__init__()
        self._runner_factory = runner_factory
        self._runner: JobRunner | None = None

    @Slot(object)
    def run_job(self, job: Job) -> None:
        # The backend (and with it torch) is built here, on the generation thread, at the first job:
        # the window is long on screen by then, and the GUI thread never pays for the import.
        try:
            if self._runner is None:
                self._runner = self._runner_factory()
            state = self._runner.run(job, self.event_emitted.emit)
        except Exception as error:  # noqa: BLE001 - e.g. torch missing: report it, keep the thread alive
            state = JobState.FAILED
            self.event_emitted.emit(
                JobFailed(job.id, f"The generation engine could not start: {error}", error_kind(error),
                          traceback.format_exc())
            )
        self.job_done.emit(job.id, state.value)

