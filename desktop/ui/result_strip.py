"""The strip of the last job's images under the canvas: one thumbnail per image, labelled with its seed.

Thumbnails are decoded on the thread pool the window shares (ui/thumbnails.py); the strip shows each as it
arrives.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QSize, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QWidget

from desktop.ui.thumbnails import ThumbnailLoader

THUMBNAIL_SIZE = 96
PATH_ROLE = Qt.ItemDataRole.UserRole


class ResultStrip(QListWidget):
    """The finished images of the last job, newest selected.

    Signals:
        result_chosen(str): the user clicked an image, or moved to it with the arrow keys.
    """

    result_chosen = Signal(str)

    def __init__(self, pool: QThreadPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("result_strip")
        self._thumbnails = ThumbnailLoader(pool, THUMBNAIL_SIZE, self)
        self._thumbnails.loaded.connect(self._on_thumbnail_loaded)
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListWidget.Movement.Static)
        self.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        self.setFixedHeight(THUMBNAIL_SIZE + 44)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.itemClicked.connect(self._on_item_chosen)
        self.currentItemChanged.connect(self._on_item_chosen)
        # Shown only when there is a choice to make: one image is already on the canvas, and an empty
        # strip would take room from it.
        self.hide()

    def paths(self) -> list[str]:
        return [self.item(row).data(PATH_ROLE) for row in range(self.count())]

    def set_results(self, paths: Sequence[str], seeds: Sequence[int]) -> None:
        """Show these images, select the last one, and say so (`result_chosen`) when there is one."""
        self.blockSignals(True)
        self.clear()
        for path, seed in zip(paths, seeds, strict=False):
            item = QListWidgetItem(str(seed))
            item.setData(PATH_ROLE, path)
            item.setToolTip(self.tr("Seed {seed}\n{path}").format(seed=seed, path=path))
            item.setSizeHint(QSize(THUMBNAIL_SIZE + 12, THUMBNAIL_SIZE + 28))
            self.addItem(item)
            self._thumbnails.request(path)
        if paths:
            self.setCurrentRow(len(paths) - 1)
        self.setVisible(len(paths) > 1)
        self.blockSignals(False)
        if paths:
            self.result_chosen.emit(paths[-1])

    @Slot(str, QImage)
    def _on_thumbnail_loaded(self, path: str, image: QImage) -> None:
        if image.isNull():
            return
        icon = QIcon(QPixmap.fromImage(image))
        for row in range(self.count()):
            item = self.item(row)
            if item.data(PATH_ROLE) == path:
                item.setIcon(icon)

    @Slot(QListWidgetItem)
    def _on_item_chosen(self, item: QListWidgetItem | None) -> None:
        if item is not None:
            self.result_chosen.emit(item.data(PATH_ROLE))
