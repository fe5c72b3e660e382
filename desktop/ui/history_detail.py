"""The detail view of one history image: the full-size picture, its recipe as text, and the panel's actions.

A separate, non-modal window so the picture can be large while the grid stays where it was. It shows
whatever the panel's current image is; Left and Right step through the grid. The picture is decoded on a
thread pool (a 40-megapixel PNG takes a while): the recipe shows at once, the picture when it is read, and
only the last of several quick steps is decoded. The recipe is the PNG's
own `parameters` text when the file has one (exactly what other tools read), followed by what only the
history knows (file, date, timings); for other images, the history row's columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from PySide6.QtCore import QT_TRANSLATE_NOOP, QObject, QSize, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QAction, QImage, QImageReader, QKeyEvent, QPixmap, QResizeEvent
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSizePolicy,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.errors import MarbleError
from desktop.engine.history import ImageRecord
from desktop.engine.metadata import read_text_chunks
from desktop.ui.translation import translate


class _ImageLabel(QLabel):
    """Shows a pixmap scaled to fit at its aspect ratio, rescaled when the window is resized."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("history_detail_image")
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setMinimumSize(160, 160)
        self._full = QPixmap()

    @property
    def full_pixmap(self) -> QPixmap:
        return self._full

    def set_full(self, pixmap: QPixmap, fallback: str = "") -> None:
        self._full = pixmap
        if pixmap.isNull():
            self.setPixmap(QPixmap())
            self.setText(fallback)
        else:
            self.setText("")
            self._rescale()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._full.isNull():
            return
        size = self.size()
        if self._full.width() <= size.width() and self._full.height() <= size.height():
            self.setPixmap(self._full)  # never blow a small image up: its pixels are what the user checks
        else:
            self.setPixmap(self._full.scaled(size, Qt.AspectRatioMode.KeepAspectRatio,
                                             Qt.TransformationMode.SmoothTransformation))


class _DecodedRelay(QObject):
    """Carries a decoded picture from the pool's thread to the GUI thread.

    Signals:
        decoded(int, QImage, str): the request's number, the image (null when unreadable), the reader's error.
    """

    decoded = Signal(int, QImage, str)


class HistoryDetailView(QDialog):
    """One image at full size with its recipe and the history actions.

    Signals:
        step_requested(int): Left (-1) or Right (+1) was pressed: show the previous or next image.
    """

    step_requested = Signal(int)

    def __init__(self, actions: Iterable[QAction], describe: Callable[[ImageRecord], str],
                 parent: QWidget | None = None, pool: QThreadPool | None = None) -> None:
        """`pool`: where pictures are decoded; one thread of the view's own when None."""
        super().__init__(parent)
        self.setObjectName("history_detail")
        self.setWindowTitle(self.tr("Image details"))
        self.setModal(False)
        # Holds the focus itself (nothing else here takes it from the keyboard): a window-wide shortcut
        # such as Delete only fires when some widget of this window has the focus.
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._describe = describe
        self._record: ImageRecord | None = None
        if pool is None:
            pool = QThreadPool(self)
            pool.setMaxThreadCount(1)
        self._pool = pool
        # The number of the latest picture asked for, read by the pool's thread too: a decode still queued
        # when another picture is asked for is skipped, and a late result is dropped.
        self._latest = [0]
        self._source = ""
        self._relay = _DecodedRelay(self)
        self._relay.decoded.connect(self._on_decoded)
        self.image_label = _ImageLabel()
        self.recipe = QPlainTextEdit(objectName="history_detail_recipe")
        self.recipe.setReadOnly(True)
        # Arrows belong to stepping through images; the recipe is for reading and copying.
        self.recipe.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        for act in actions:
            button = QToolButton()
            button.setDefaultAction(act)
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            buttons.addWidget(button)
            self.addAction(act)  # its shortcut (F, Delete, Ctrl+C) works in this window too
        buttons.addStretch(1)

        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addLayout(buttons)
        lower_layout.addWidget(self.recipe, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.image_label)
        splitter.addWidget(lower)
        splitter.setStretchFactor(0, 4)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self.resize(QSize(760, 860))

    @property
    def record(self) -> ImageRecord | None:
        return self._record

    def show_record(self, record: ImageRecord) -> None:
        """Show one image: its recipe now, its picture once the pool has read it (the previous picture stays
        until then, so stepping through the grid does not flash an empty view)."""
        self._record = record
        source = record.trash_path if record.trashed and record.trash_path else record.path
        self._source = source
        self._latest[0] += 1
        self.recipe.setPlainText(recipe_text(record, source, self._describe))
        self.setWindowTitle(self.tr("{name} — image details").format(name=Path(source).name))
        if record.missing or not Path(source).is_file():
            fallback = self.tr("{file} is missing: it was moved or deleted outside Marble.").format(file=source)
            self.image_label.set_full(QPixmap(), fallback)
            return
        number, latest, relay = self._latest[0], self._latest, self._relay

        def decode() -> None:
            if latest[0] != number:
                return  # another picture was asked for before this one's turn
            reader = QImageReader(source)
            image = reader.read()
            relay.decoded.emit(number, image, reader.errorString())

        self._pool.start(decode)

    @Slot(int, QImage, str)
    def _on_decoded(self, number: int, image: QImage, reason: str) -> None:
        if number != self._latest[0]:
            return
        fallback = self.tr("Cannot read {file}: {reason}").format(file=self._source, reason=reason)
        self.image_label.set_full(QPixmap.fromImage(image) if not image.isNull() else QPixmap(), fallback)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        step = {Qt.Key.Key_Left: -1, Qt.Key.Key_Right: 1}.get(Qt.Key(event.key()))
        if step is not None and not self.recipe.hasFocus():
            self.step_requested.emit(step)
            event.accept()
            return
        super().keyPressEvent(event)


# The labels of describe()'s lines that only the history knows (the file's own text lacks them). describe()
# (history_panel) writes its labels translated, so they are matched translated too.
HISTORY_ONLY_LABELS = (
    QT_TRANSLATE_NOOP("HistoryDescription", "Device"),
    QT_TRANSLATE_NOOP("HistoryDescription", "Time"),
    QT_TRANSLATE_NOOP("HistoryDescription", "Created"),
    QT_TRANSLATE_NOOP("HistoryDescription", "File"),
    QT_TRANSLATE_NOOP("HistoryDescription", "In the trash"),
    QT_TRANSLATE_NOOP("HistoryDescription", "Favourite"),
)


def recipe_text(record: ImageRecord, source: str, describe: Callable[[ImageRecord], str]) -> str:
    """The file's A1111 `parameters` text when it has one, then the history's own lines; else `describe`."""
    described = describe(record)
    try:
        parameters = read_text_chunks(source).get("parameters", "") if Path(source).is_file() else ""
    except (MarbleError, OSError):
        parameters = ""
    if not parameters.strip():
        return described
    # describe() starts with the prompt block; keep only its trailing "Label: value" lines the file lacks.
    own = {translate("HistoryDescription", label) for label in HISTORY_ONLY_LABELS}
    extra = [line for line in described.rsplit("\n\n", 1)[-1].splitlines() if line.split(":", 1)[0] in own]
    return parameters.rstrip() + ("\n\n" + "\n".join(extra) if extra else "")
