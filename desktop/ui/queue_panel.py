"""The bottom bar: Generate and Cancel, the job's progress, its status, and a message area."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

MESSAGE_LEVELS = ("error", "warning", "info")


class MessageBar(QWidget):
    """A non-modal message: errors and warnings stay readable without stopping the user's work.

    Text is always plain: messages quote prompts and file names, which must never render as HTML.

    Signals: none.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("message_bar")
        self._level = "info"
        self.message_label = QLabel(objectName="message_label")
        self.message_label.setTextFormat(Qt.TextFormat.PlainText)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.dismiss_button = QToolButton(objectName="dismiss_message_button", text="✕")
        self.dismiss_button.setToolTip(self.tr("Dismiss"))
        self.dismiss_button.setAutoRaise(True)
        self.dismiss_button.clicked.connect(self.clear)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.message_label, 1)
        layout.addWidget(self.dismiss_button, 0, Qt.AlignmentFlag.AlignTop)
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.hide()

    @property
    def level(self) -> str:
        return self._level

    def text(self) -> str:
        return self.message_label.text()

    def show_message(self, text: str, level: str = "error", append: bool = False) -> None:
        """Show `text`; with `append`, add it on a new line (several warnings of one job)."""
        if level not in MESSAGE_LEVELS:
            level = "info"
        if append and not self.isHidden() and self.message_label.text():
            text = f"{self.message_label.text()}\n{text}"
            # An error among warnings keeps the more serious colour.
            if MESSAGE_LEVELS.index(self._level) < MESSAGE_LEVELS.index(level):
                level = self._level
        self._level = level
        self.message_label.setText(text)
        self.setProperty("level", level)
        # A dynamic property only restyles after the style is re-applied.
        self.style().unpolish(self)
        self.style().polish(self)
        self.show()

    @Slot()
    def clear(self) -> None:
        self.message_label.clear()
        self.hide()


class QueuePanel(QWidget):
    """Generate / Cancel, the progress of the running job and a one-line status.

    Signals:
        generate_requested(): the user pressed Generate.
        cancel_requested(): the user pressed Cancel.
    """

    generate_requested = Signal()
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("queue_panel")
        self.message_bar = MessageBar()

        self.generate_button = QPushButton(self.tr("Generate"), objectName="generate_button")
        self.generate_button.setToolTip(self.tr("Generate (Ctrl+Enter)"))
        self.generate_button.setMinimumHeight(36)
        self.generate_button.setMinimumWidth(140)
        self.generate_button.clicked.connect(self.generate_requested)
        self.cancel_button = QPushButton(self.tr("Cancel"), objectName="cancel_button")
        self.cancel_button.setToolTip(self.tr("Cancel the running job (Esc)"))
        self.cancel_button.setMinimumHeight(36)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)

        self.progress_bar = QProgressBar(objectName="progress_bar")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat(self.tr("Idle"))
        self.status_label = QLabel(self.tr("Ready"), objectName="status_label")
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        self.status_label.setMinimumWidth(160)

        bar = QHBoxLayout()
        bar.addWidget(self.generate_button)
        bar.addWidget(self.cancel_button)
        bar.addWidget(self.progress_bar, 1)
        bar.addWidget(self.status_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 8)
        layout.addWidget(self.message_bar)
        layout.addLayout(bar)

    def set_busy(self, busy: bool) -> None:
        self.cancel_button.setEnabled(busy)

    def set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def show_progress(self, step: int, total: int, batch_index: int, batch_count: int, words: str = "") -> None:
        """Overall progress of the job: every batch counts, so the bar never runs backwards. `words`
        say the steps (`step_words`); by default "Step 3/30"."""
        total, batch_count = max(1, total), max(1, batch_count)
        self.progress_bar.setRange(0, total * batch_count)
        self.progress_bar.setValue(min(total * batch_count, batch_index * total + step))
        # `words` come from the engine (English, shared with the CLI); the default is ours.
        words = words or self.tr("step {step}/{total}").format(step=step, total=total)
        text = words[:1].upper() + words[1:]
        if batch_count > 1:
            text = self.tr("{progress} · batch {index}/{count}").format(
                progress=text, index=batch_index + 1, count=batch_count)
        self.progress_bar.setFormat(text)

    def show_waiting(self, text: str) -> None:
        """An indefinite phase (loading a model): a busy bar with what is happening."""
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat(text)

    def reset_progress(self, text: str = "") -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(text or self.tr("Idle"))
