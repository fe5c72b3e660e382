"""The bar over the history that offers to run again the jobs a crash or a quit left unfinished."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from desktop.bridge.controller import GenerationController
from desktop.engine.errors import MarbleError


class RecoveryBar(QWidget):
    """Hidden unless the controller knows of unfinished jobs.

    Signals:
        message(str, str): a text and its level for the message bar (a job that cannot run again).
    """

    message = Signal(str, str)

    def __init__(self, controller: GenerationController | None, parent: QWidget | None = None) -> None:
        super().__init__(parent, objectName="history_recovery_bar")
        self._controller = controller
        self.label = QLabel(objectName="history_recovery_label")
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setWordWrap(True)
        self.resume_button = QPushButton(self.tr("Run again"), objectName="history_resume_button")
        self.dismiss_button = QPushButton(self.tr("Dismiss"), objectName="history_dismiss_button")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.resume_button)
        layout.addWidget(self.dismiss_button)
        self.resume_button.clicked.connect(self.resume)
        self.dismiss_button.clicked.connect(self.dismiss)
        self.hide()

    def show_unfinished_jobs(self) -> None:
        jobs = self._controller.unfinished_jobs() if self._controller is not None else []
        if not jobs:
            self.hide()
            return
        images = sum(job.remaining_request().images_total for job in jobs)
        # Whole sentences per count, so a translation never glues fragments together.
        if len(jobs) == 1 and images == 1:
            text = self.tr("1 job did not finish last time (1 image to make).")
        elif len(jobs) == 1:
            text = self.tr("1 job did not finish last time ({images} images to make).")
        else:
            text = self.tr("{jobs} jobs did not finish last time ({images} images to make).")
        self.label.setText(text.format(jobs=len(jobs), images=images))
        self.show()

    @Slot()
    def resume(self) -> None:
        if self._controller is None:
            return
        for job in self._controller.unfinished_jobs():
            try:
                self._controller.resume(job.id)
            except MarbleError as error:
                self.message.emit(self.tr("Cannot run {job} again: {error}").format(job=job.id, error=error), "error")
                self._controller.dismiss(job.id)
        self.show_unfinished_jobs()

    @Slot()
    def dismiss(self) -> None:
        if self._controller is None:
            return
        for job in self._controller.unfinished_jobs():
            self._controller.dismiss(job.id)
        self.show_unfinished_jobs()
