"""`marble-studio --self-test`: one real job through the shown window, to check an installation.

It waits for the window's first paint and for the model list, presses Generate with the selected
model (the demo model on a fresh install) at few steps, and ends the app with 0 once the image is saved
(1 on a failure or after the timeout), printing one line per stage. The installers' smoke test runs it
on the frozen app; a user can run it to see that an install works.

Its report lines stay English, untranslated: they are for logs and for the installer's smoke test,
which reads them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QTimer, Slot
from PySide6.QtWidgets import QApplication

from desktop.engine.events import JobFailed, JobFinished
from desktop.ui.main_window import MainWindow

SELF_TEST_PROMPT = "a large yellow circle in the centre on a blue background"
SELF_TEST_STEPS = 4


class SelfTest(QObject):
    """Drives `window` through one job and quits `app` with the verdict. No signals."""

    def __init__(
        self,
        app: QApplication,
        window: MainWindow,
        started: float,
        report: Path | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        super().__init__(window)
        self._app = app
        # A windowed executable on Windows has no stdout: the report file is how a script reads the verdict.
        self._report = report
        if report is not None:
            report.write_text("", encoding="utf-8")
        self._window = window
        self._started = started
        self._painted = False
        self._models: list[str] | None = None
        self._submitted = False
        window.installEventFilter(self)
        window.models_listed.connect(self._on_models_listed)
        window.controller.job_finished.connect(self._on_job_finished)
        window.controller.job_failed.connect(self._on_job_failed)
        QTimer.singleShot(int(timeout_s * 1000), self._on_timeout)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if watched is self._window and event.type() == QEvent.Type.Paint and not self._painted:
            self._painted = True
            torch = "loaded" if "torch" in sys.modules else "not loaded"
            self._say(f"self-test: window painted {time.time() - self._started:.3f} s after start, torch {torch}")
            self._maybe_generate()
        return False

    @Slot(list)
    def _on_models_listed(self, names: list[str]) -> None:
        if self._models is None:
            self._models = list(names)
            self._maybe_generate()

    def _maybe_generate(self) -> None:
        # Only once the window has painted, so the first paint is measured before the worker loads torch.
        if self._submitted or not self._painted or self._models is None:
            return
        self._submitted = True
        if not self._models:
            self._finish(1, "self-test: failed: the library has no model to generate with")
            return
        # Queued, so the panel has taken the list (and the model's native size) before the request is built.
        QTimer.singleShot(0, self._generate)

    @Slot()
    def _generate(self) -> None:
        self._window.prompt_editor.set_prompts(SELF_TEST_PROMPT)
        self._window.parameter_panel.steps_spin.setValue(SELF_TEST_STEPS)
        job = self._window.generate()
        if job is None:
            self._finish(1, f"self-test: failed: the request was refused: {self._window.message_bar.text()}")
        else:
            self._say(f"self-test: generating with {job.request.model}")

    @Slot(object)
    def _on_job_finished(self, event: JobFinished) -> None:
        saved = [path for path in event.paths if Path(path).is_file()]
        if saved and len(saved) == len(event.paths):
            self._finish(0, f"self-test: passed: {saved[0]} in {event.seconds:.1f} s")
        else:
            self._finish(1, "self-test: failed: the job finished without its image on disk")

    @Slot(object)
    def _on_job_failed(self, event: JobFailed) -> None:
        self._finish(1, f"self-test: failed: {event.message}")

    @Slot()
    def _on_timeout(self) -> None:
        self._finish(1, "self-test: failed: no image within the time limit")

    def _finish(self, code: int, line: str) -> None:
        self._say(line)
        self._app.exit(code)

    def _say(self, line: str) -> None:
        if sys.stdout is not None:  # a windowed executable on Windows has none
            print(line, flush=True)
        if self._report is not None:
            with self._report.open("a", encoding="utf-8") as report:
                report.write(line + "\n")
