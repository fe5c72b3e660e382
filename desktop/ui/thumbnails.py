"""Small thumbnails of image files, decoded on the window's thread pool: a 40-megapixel photo dropped on
the window must not freeze it while it decodes. Shared by the result strip and the References row."""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage, QImageReader

from desktop.ui.canvas.picture_view import MAX_IMAGE_PIXELS


def scaled_thumbnail(path: str, side: int) -> QImage:
    """The image at `path` scaled to fit a `side` x `side` square; null when unreadable or larger than the
    canvas would open (the size is read from the header before any pixels are decoded)."""
    reader = QImageReader(path)
    reader.setAutoTransform(True)
    size = reader.size()
    if size.isValid() and size.width() * size.height() > MAX_IMAGE_PIXELS:
        return QImage()
    if size.isValid() and (size.width() > side or size.height() > side):
        # Decoded at the small size where the format allows (a JPEG's DCT scaling): a 40-megapixel photo
        # never takes its full size in memory for a thumbnail.
        reader.setScaledSize(size.scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        return image
    return image.scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


class ThumbnailLoader(QObject):
    """Decodes thumbnails on `pool` and hands each back on the GUI thread.

    Signals:
        loaded(str, QImage): the thumbnail of a requested path (null when unreadable), emitted from a pool
            thread; a connection to a widget's slot queues it to the GUI thread.
    """

    loaded = Signal(str, QImage)

    def __init__(self, pool: QThreadPool, side: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = pool
        self._side = side

    def request(self, path: str) -> None:
        side, loaded = self._side, self.loaded

        def load() -> None:
            loaded.emit(path, scaled_thumbnail(path, side))

        self._pool.start(load)
