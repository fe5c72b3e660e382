"""The parameter panel's "References" row: further pictures a model reads beside its prompt (Flux.2's
multi-reference editing; Qwen-Image-Edit Plus's "Picture 2", "Picture 3" after its source) -- the window's
form of the command line's `--reference-image`. Files are added with the button or dropped on the row,
shown as small thumbnails in order (decoded on the window's thread pool: ui/thumbnails.py), and removed one
by one. The panel shows the row only for models that
read references (`library.dit.reference_image_limit`) and tells it how many they take."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.ui.thumbnails import ThumbnailLoader
from desktop.ui.translation import translate

_THUMB = 40  # px: enough to tell pictures apart without making the panel taller than two rows
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ReferenceImagesRow(QWidget):
    """An ordered list of image files with Add… and Remove, limited to what the chosen model reads.

    Signals:
        images_changed(object): the files now listed, a tuple of paths in order.
    """

    images_changed = Signal(object)

    def __init__(self, pool: QThreadPool | None = None, parent: QWidget | None = None) -> None:
        """`pool`: where thumbnails are decoded (the window's); a pool of the row's own when None."""
        super().__init__(parent)
        self._limit = 0
        self._thumbnails = ThumbnailLoader(pool or QThreadPool(self), _THUMB, self)
        self._thumbnails.loaded.connect(self._on_thumbnail_loaded)
        self.list = QListWidget(objectName="reference_images_list")
        self.list.setViewMode(QListWidget.ViewMode.IconMode)
        self.list.setFlow(QListWidget.Flow.LeftToRight)
        self.list.setWrapping(False)
        self.list.setIconSize(QSize(_THUMB, _THUMB))
        self.list.setFixedHeight(_THUMB + 26)
        self.list.setAcceptDrops(False)  # the row takes drops, so a drop anywhere on it counts
        self.list.setToolTip(self.tr("Pictures the prompt can refer to, in order (Picture 2, Picture 3, …)"))
        self.add_button = QToolButton(objectName="reference_images_add", text=self.tr("Add…"))
        self.add_button.setToolTip(self.tr("Add reference images (or drop image files on this row)"))
        self.add_button.clicked.connect(self.choose_files)
        self.remove_button = QToolButton(objectName="reference_images_remove", text="−")
        self.remove_button.setToolTip(self.tr("Remove the selected reference image"))
        self.remove_button.clicked.connect(self.remove_selected)
        buttons = QVBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        self.problem = QLabel(objectName="reference_images_problem", wordWrap=True)
        self.problem.setVisible(False)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(4)
        row.addWidget(self.list, 1)
        row.addLayout(buttons)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.problem)
        self.setAcceptDrops(True)
        self._update_buttons()

    # ------------------------------------------------------------------------------------------ state

    def images(self) -> tuple[str, ...]:
        return tuple(self.list.item(row).data(Qt.ItemDataRole.UserRole) for row in range(self.list.count()))

    def set_images(self, paths: Sequence[str]) -> None:
        """Show `paths` as they are (a recipe's files may be missing: the job then says which)."""
        if tuple(paths) == self.images():
            return
        self.list.clear()
        for path in paths:
            self._add_item(path)
        self._update_buttons()

    def set_limit(self, limit: int) -> None:
        """How many the chosen model reads; the list keeps what it holds (the job names an excess)."""
        self._limit = limit
        self._update_buttons()

    # ---------------------------------------------------------------------------------------- editing

    @Slot()
    def choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, self.tr("Reference images"), "", self.tr("Images (*.png *.jpg *.jpeg *.webp *.bmp)")
        )
        self.add_images(paths)

    def add_images(self, paths: Sequence[str]) -> None:
        """Append `paths` up to the model's limit; what does not fit is refused with the limit named."""
        room = self._limit - self.list.count()
        over = len(paths) > room
        self.problem.setText(translate(
            "ReferenceImagesRow", "This model reads at most {count} reference images."
        ).format(count=self._limit) if over else "")  # fmt: skip
        self.problem.setVisible(over)
        for path in list(paths)[: max(room, 0)]:
            self._add_item(path)
        self._changed()

    @Slot()
    def remove_selected(self) -> None:
        row = self.list.currentRow()
        if row < 0 and self.list.count():
            row = self.list.count() - 1  # nothing selected: the last one, as a "−" next to a list suggests
        if row >= 0:
            self.list.takeItem(row)
            self._changed()

    def _add_item(self, path: str) -> None:
        item = QListWidgetItem(Path(path).name)
        item.setData(Qt.ItemDataRole.UserRole, path)
        item.setToolTip(path)
        self.list.addItem(item)
        self._thumbnails.request(path)

    @Slot(str, QImage)
    def _on_thumbnail_loaded(self, path: str, image: QImage) -> None:
        if image.isNull():
            return
        icon = QIcon(QPixmap.fromImage(image))
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(Qt.ItemDataRole.UserRole) == path:
                item.setIcon(icon)

    def _changed(self) -> None:
        self._update_buttons()
        self.images_changed.emit(self.images())

    def _update_buttons(self) -> None:
        self.add_button.setEnabled(self.list.count() < self._limit)
        self.remove_button.setEnabled(self.list.count() > 0)

    # ------------------------------------------------------------------------------------ drag & drop

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _image_files(event.mimeData().urls()):
            event.acceptProposedAction()
            return
        event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        files = _image_files(event.mimeData().urls())
        if files:
            self.add_images(files)
            event.acceptProposedAction()
            return
        event.ignore()


def present_files(paths: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the files of `paths` that exist, those that do not), each in order: a reused recipe brings back
    only pictures still there, so the next job does not fail on one deleted since."""
    present = tuple(path for path in paths if Path(path).is_file())
    return present, tuple(path for path in paths if path not in present)


def _image_files(urls: Sequence) -> list[str]:
    files = [url.toLocalFile() for url in urls if url.isLocalFile()]
    return [path for path in files if Path(path).suffix.lower() in _IMAGE_SUFFIXES]
