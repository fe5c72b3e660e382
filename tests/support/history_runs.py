"""One job run by the real JobRunner into a real history store, for tests that check what the history records."""

from __future__ import annotations

from pathlib import Path

from desktop.engine.backends.base import Backend
from desktop.engine.history import HistoryStore
from desktop.engine.history.records import ImageRecord
from desktop.engine.jobs import Job, JobState
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.runner import JobRunner


def run_into_history(backend: Backend, request: GenerationRequest, paths: AppPaths, outputs: Path) -> ImageRecord:
    """The history row of the one image `request` makes (written under `outputs`); the job must finish."""
    history = HistoryStore(paths.history_db, outputs, paths.thumbnails)
    try:
        runner = JobRunner(backend, ImageWriter(outputs, dated=False), "test", history)
        assert runner.run(Job(request), lambda _: None) is JobState.FINISHED
        (row,) = history.query()
        return row
    finally:
        history.close_all()
