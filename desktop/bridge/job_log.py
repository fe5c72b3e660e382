"""Writes each job's story to the log: its request, how long the model load and the job took, and
any failure with its traceback. It only listens to the controller's events; it never changes a job."""

from __future__ import annotations

import logging
from dataclasses import asdict

from PySide6.QtCore import QObject, Slot

from desktop.bridge.controller import GenerationController
from desktop.engine.events import JobCancelled, JobFailed, JobFinished, JobStarted, JobWarning, ModelLoaded

log = logging.getLogger("desktop.jobs")


def _request_summary(event: JobStarted) -> str:
    # Prompts can be long and personal, but they are what a bug report needs to reproduce a job; the
    # log stays on the user's machine. Arrays (an inline source image) are not logged.
    fields = {key: value for key, value in asdict(event.request).items() if isinstance(value, str | int | float | bool
                                                                                        | type(None) | tuple)}
    return ", ".join(f"{key}={value!r}" for key, value in fields.items())


class JobLog(QObject):
    """Logs the controller's job events (no signals)."""

    def __init__(self, controller: GenerationController, parent: QObject | None = None) -> None:
        super().__init__(parent)
        controller.event_received.connect(self._on_event)

    @Slot(object)
    def _on_event(self, event: object) -> None:
        if isinstance(event, JobStarted):
            log.info("job %s started: %s", event.job_id, _request_summary(event))
        elif isinstance(event, ModelLoaded):
            log.info("job %s: model %s %s in %.2f s", event.job_id, event.model,
                     "reused" if event.reused else "loaded", event.seconds)
        elif isinstance(event, JobWarning):
            log.warning("job %s: %s", event.job_id, event.message)
        elif isinstance(event, JobFinished):
            log.info("job %s finished in %.2f s: %s", event.job_id, event.seconds, ", ".join(event.paths))
        elif isinstance(event, JobFailed):
            detail = f"\n{event.detail.rstrip()}" if event.detail else ""
            log.error("job %s failed (%s): %s%s", event.job_id, event.kind.value, event.message, detail)
        elif isinstance(event, JobCancelled):
            log.info("job %s cancelled", event.job_id)
