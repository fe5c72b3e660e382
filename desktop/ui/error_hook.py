"""What happens to an exception nobody caught while the window runs: it goes to the log with its
traceback, a dialog says so and where the log is, and the app keeps running.

Installed by the composition root after the window is shown and removed when the event loop ends.
Exceptions from other threads reach the dialog through a queued signal: only the GUI thread shows it.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import QMessageBox, QWidget

log = logging.getLogger("desktop.errors")


class ErrorHook(QObject):
    """sys.excepthook and threading.excepthook while installed.

    Signals:
        error_reported(str, str): a one-line summary and the traceback of an uncaught exception.
    """

    error_reported = Signal(str, str)

    def __init__(self, window: QWidget, log_file: Path | None) -> None:
        super().__init__(window)
        self._window = window
        self._log_file = log_file
        self._previous: tuple[Any, Any] | None = None
        self._showing = False
        # Queued even from the GUI thread: the dialog never opens inside the hook itself.
        self.error_reported.connect(self._show, Qt.ConnectionType.QueuedConnection)

    def install(self) -> None:
        if self._previous is None:
            self._previous = (sys.excepthook, threading.excepthook)
            sys.excepthook = self._excepthook
            threading.excepthook = self._threading_hook

    def uninstall(self) -> None:
        if self._previous is not None:
            sys.excepthook, threading.excepthook = self._previous
            self._previous = None

    def _excepthook(
        self, kind: type[BaseException], error: BaseException, trace: TracebackType | None
    ) -> None:
        if issubclass(kind, KeyboardInterrupt):
            # Ctrl+C in the terminal stays what it always was.
            sys.__excepthook__(kind, error, trace)
            return
        self._report(kind, error, trace, threading.current_thread().name)

    def _threading_hook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        self._report(args.exc_type, args.exc_value, args.exc_traceback,
                     args.thread.name if args.thread is not None else "a thread")

    def _report(
        self, kind: type[BaseException], error: BaseException, trace: TracebackType | None, thread: str
    ) -> None:
        log.error("Unexpected error in %s", thread, exc_info=(kind, error, trace))
        text = "".join(traceback.format_exception(kind, error, trace))
        self.error_reported.emit(f"{kind.__name__}: {error}", text)

    @Slot(str, str)
    def _show(self, summary: str, details: str) -> None:
        if self._showing:
            return  # one dialog at a time: a repeating error must not bury the window in boxes
        self._showing = True
        try:
            where = (self.tr("The details are in the log: {file}").format(file=self._log_file) if self._log_file
                     else self.tr("No log file is kept."))
            text = self.tr("Something went wrong inside Marble Studio: {summary}\n\n{where}\n\n"
                           "The app keeps running; if something looks wrong, save your work and restart it.")
            box = QMessageBox(QMessageBox.Icon.Critical, self.tr("Unexpected error"),
                              text.format(summary=summary, where=where), QMessageBox.StandardButton.Ok, self._window)
            box.setTextFormat(Qt.TextFormat.PlainText)
            box.setDetailedText(details)
            box.setObjectName("error_dialog")
            box.exec()
            box.deleteLater()
        finally:
            self._showing = False
