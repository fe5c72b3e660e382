"""The picture view the editing canvas builds on: the live preview while a job runs, the finished image
after, zoom and pan; and the QImage <-> PNG bytes / numpy conversions the canvas uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QRectF, Qt, Signal, Slot
from PySide6.QtGui import (
    QColor,
    QImage,
    QImageReader,
    QMouseEvent,
    QPainter,
    QPixmap,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QWidget,
)

MIN_ZOOM, MAX_ZOOM = 0.02, 32.0
# Pillow's default decompression-bomb limit: an image file bigger than this is not a picture we made.
MAX_IMAGE_PIXELS = 89_478_485


def png_bytes(image: QImage, quality: int = -1) -> bytes:
    """`image` as PNG file bytes. Qt releases the GIL while it encodes, so a thread can do this."""
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG", quality)
    buffer.close()
    return bytes(data.data())


def array_to_qimage(array: np.ndarray) -> QImage:
    """An RGB(A) uint8 array (H, W, 3|4) as a QImage that owns its pixels.

    QImage(buffer, ...) only borrows the buffer; `.copy()` detaches it, so the image stays valid after
    the array is gone. Call this on the GUI thread: the array came through a queued signal.
    """
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3|4) uint8 array, got {array.shape} {array.dtype}")
    pixels = np.ascontiguousarray(array)
    height, width, channels = pixels.shape
    image_format = QImage.Format.Format_RGB888 if channels == 3 else QImage.Format.Format_RGBA8888
    return QImage(pixels.data, width, height, pixels.strides[0], image_format).copy()


class CanvasView(QGraphicsView):
    """Shows one picture, fitted to the window until the user zooms (wheel) or double-clicks.

    Signals:
        zoom_changed(float): the scale factor changed (1.0 is one image pixel per screen pixel).
    """

    zoom_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("canvas_view")
        self.setScene(QGraphicsScene(self))
        self._item = QGraphicsPixmapItem()
        self._item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._item.hide()
        self.scene().addItem(self._item)
        self._placeholder = QGraphicsSimpleTextItem(self.tr("Your image appears here"))
        self._placeholder.setBrush(QColor(140, 140, 140))
        self.scene().addItem(self._placeholder)
        self.scene().setSceneRect(self._placeholder.boundingRect())
        self._image: QImage | None = None
        self._is_preview = False
        self._fit = True

        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setBackgroundBrush(QColor(32, 32, 34))
        self.setFrameShape(QGraphicsView.Shape.NoFrame)
        self.setMinimumSize(256, 256)

    # ------------------------------------------------------------------------------------ public

    @property
    def current_image(self) -> QImage | None:
        """The picture on screen at its own resolution (a preview is smaller than the final image)."""
        return self._image

    @property
    def is_preview(self) -> bool:
        return self._is_preview

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    @property
    def fits_window(self) -> bool:
        return self._fit

    def show_preview(self, array: np.ndarray, display_size: tuple[int, int] | None = None) -> None:
        """Show a step preview, stretched to `display_size` (the final image's width, height) if given,
        so the view does not jump when the full-size image replaces it."""
        self._set_image(array_to_qimage(array), preview=True, display_size=display_size)

    def show_image(self, path: str | Path) -> bool:
        """Show an image file; False (and nothing changes) when it cannot be read."""
        reader = QImageReader(str(path))
        reader.setAutoTransform(True)
        size = reader.size()
        if size.isValid() and size.width() * size.height() > MAX_IMAGE_PIXELS:
            return False
        image = reader.read()
        if image.isNull():
            return False
        self._set_image(image, preview=False, display_size=None)
        return True

    def clear(self) -> None:
        self._image = None
        self._is_preview = False
        self._item.hide()
        self._item.setPixmap(QPixmap())
        self._placeholder.show()
        self.scene().setSceneRect(self._placeholder.boundingRect())
        self.resetTransform()

    @Slot()
    def fit_to_window(self) -> None:
        self._fit = True
        if self._image is not None:
            self.fitInView(self._item, Qt.AspectRatioMode.KeepAspectRatio)
        else:
            self.resetTransform()
        self.zoom_changed.emit(self.zoom)

    @Slot()
    def show_actual_size(self) -> None:
        self._fit = False
        self.resetTransform()
        self.zoom_changed.emit(self.zoom)

    def zoom_by(self, factor: float) -> None:
        if self._image is None or factor <= 0:
            return
        factor = min(MAX_ZOOM, max(MIN_ZOOM, self.zoom * factor)) / self.zoom
        self._fit = False
        self.scale(factor, factor)
        self.zoom_changed.emit(self.zoom)

    # --------------------------------------------------------------------------------- Qt events

    def wheelEvent(self, event: QWheelEvent) -> None:
        delta = event.angleDelta().y()
        if not delta or self._image is None:
            super().wheelEvent(event)
            return
        # 120 units per notch: about 20 % per notch, and smooth on touchpads that send small deltas.
        self.zoom_by(1.0015**delta)
        event.accept()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self._fit:
            self.fit_to_window()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if self._fit:
            self.show_actual_size()
        else:
            self.fit_to_window()
        event.accept()

    # ----------------------------------------------------------------------------------- private

    def _set_image(self, image: QImage, preview: bool, display_size: tuple[int, int] | None) -> None:
        self._image = image
        self._is_preview = preview
        self._item.setPixmap(QPixmap.fromImage(image))
        transform = QTransform()
        if display_size and image.width() and image.height():
            transform = QTransform.fromScale(
                display_size[0] / image.width(), display_size[1] / image.height()
            )
        self._item.setTransform(transform)
        self._item.show()
        self._placeholder.hide()
        self.scene().setSceneRect(QRectF(self._item.sceneBoundingRect()))
        if self._fit:
            self.fit_to_window()
