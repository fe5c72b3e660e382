"""The inpainting mask: a QImage painted by brush strokes, drawn as a tinted overlay, undoable per stroke.

The mask lives in one ARGB32 premultiplied QImage the size of the source image, whose alpha channel
is the mask (255 = repaint). A dab repaints only its own rectangle on screen, and an undo step keeps
only the rectangle a stroke touched, so painting stays quick on a 4096 x 4096 image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QLineF, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QRadialGradient, QUndoCommand, QUndoStack
from PySide6.QtWidgets import QGraphicsItem, QGraphicsObject, QStyleOptionGraphicsItem, QWidget

from desktop.ui.canvas.picture_view import png_bytes

MASK_COLOR = QColor(255, 64, 64)
_FORMAT = QImage.Format.Format_ARGB32_Premultiplied
# Dab spacing as a fraction of the brush diameter: close enough that a fast stroke has no gaps.
_SPACING = 0.12
# A stroke saves the old pixels of each tile it is about to touch, never the whole mask.
_TILE = 256


@dataclass(frozen=True)
class Brush:
    """A round brush: diameter in image pixels, hardness 0 (soft edge) to 1 (hard edge)."""

    size: float = 32.0
    hardness: float = 0.8
    erase: bool = False


def alpha_of(image: QImage) -> np.ndarray:
    """The mask values (H, W) uint8 of an ARGB32 premultiplied image: its alpha channel, a copy."""
    image = image.convertToFormat(_FORMAT)
    width, height = image.width(), image.height()
    words = np.frombuffer(image.constBits(), np.uint32, count=height * image.bytesPerLine() // 4)
    # As 32-bit words the layout is 0xAARRGGBB whatever the byte order.
    return (words.reshape(height, image.bytesPerLine() // 4)[:, :width] >> 24).astype(np.uint8)


def mask_image(values: np.ndarray, color: QColor = MASK_COLOR) -> QImage:
    """A tinted overlay image whose alpha is `values` (H, W) uint8."""
    alpha = np.ascontiguousarray(values, dtype=np.uint32)
    red, green, blue = (alpha * channel // 255 for channel in color.getRgb()[:3])
    words = np.ascontiguousarray((alpha << 24) | (red << 16) | (green << 8) | blue, dtype=np.uint32)
    height, width = alpha.shape
    return QImage(words.data, width, height, width * 4, _FORMAT).copy()


def grayscale_png(values: np.ndarray) -> bytes:
    """The mask as an 8-bit grayscale PNG (white = repaint), the format the engine and A1111 read."""
    values = np.ascontiguousarray(values, dtype=np.uint8)
    height, width = values.shape
    image = QImage(values.data, width, height, width, QImage.Format.Format_Grayscale8).copy()
    # Light compression: masks are mostly flat, and this runs when the user presses Generate.
    return png_bytes(image, 80)


def values_from_image(image: QImage) -> np.ndarray:
    """Mask values from a loaded mask file: its alpha if it has real transparency, else its gray level."""
    if image.hasAlphaChannel():
        alpha = alpha_of(image)
        if alpha.min() < 255:
            return alpha
    gray = image.convertToFormat(QImage.Format.Format_Grayscale8)
    height, width = gray.height(), gray.width()
    rows = np.frombuffer(gray.constBits(), np.uint8, count=height * gray.bytesPerLine())
    return rows.reshape(height, gray.bytesPerLine())[:, :width].copy()


class _PatchCommand(QUndoCommand):
    """Replaces one rectangle of the mask; undo puts the old pixels back."""

    def __init__(self, layer: MaskLayer, rect: QRect, before: QImage, after: QImage, text: str) -> None:
        super().__init__(text)
        self._layer, self._rect, self._before, self._after = layer, QRect(rect), before, after

    def redo(self) -> None:
        self._layer._put(self._rect, self._after)

    def undo(self) -> None:
        self._layer._put(self._rect, self._before)


class MaskLayer(QGraphicsObject):
    """The mask over the canvas, in image pixel coordinates (the item sits at the scene origin).

    Signals:
        mask_edited(QRect): these image pixels of the mask changed (a stroke, an undo, a fill...).
    """

    mask_edited = Signal(QRect)
    # What a stroke paints with; the control drawing (control_layer.py) paints white.
    COLOR = MASK_COLOR

    def __init__(self, size: QSize, undo_stack: QUndoStack, parent: QGraphicsItem | None = None) -> None:
        super().__init__(parent)
        self._image = QImage(size, _FORMAT)
        self._image.fill(Qt.GlobalColor.transparent)
        self._undo = undo_stack
        self._opacity = 0.5
        self._saved: dict[tuple[int, int], QImage] | None = None
        self._dirty = QRect()
        self._last: QPointF | None = None
        self._brush = Brush()
        self.setZValue(1)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)  # the view turns mouse events into strokes
        # exposedRect in paint(): redraw only what changed, never the whole 4096 x 4096 overlay.
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)

    # --------------------------------------------------------------------------------- QGraphicsItem

    def boundingRect(self) -> QRectF:
        return QRectF(0, 0, self._image.width(), self._image.height())

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        rect = option.exposedRect.toAlignedRect().intersected(self._image.rect())
        if rect.isEmpty():
            return
        painter.setOpacity(self._opacity)
        painter.drawImage(rect, self._image, rect)

    # ---------------------------------------------------------------------------------------- state

    @property
    def size(self) -> QSize:
        return self._image.size()

    @property
    def image(self) -> QImage:
        return self._image

    def values(self) -> np.ndarray:
        """The mask (H, W) uint8, 255 = repaint."""
        return alpha_of(self._image)

    def is_empty(self) -> bool:
        return not self.values().any()

    def overlay_opacity(self) -> float:
        return self._opacity

    def set_overlay_opacity(self, opacity: float) -> None:
        self._opacity = min(max(opacity, 0.0), 1.0)
        self.update()

    # -------------------------------------------------------------------------------------- strokes

    def begin_stroke(self, point: QPointF, brush: Brush) -> None:
        self._saved = {}
        self._dirty = QRect()
        self._brush = brush
        self._last = QPointF(point)
        self._dabs([QPointF(point)])

    def continue_stroke(self, point: QPointF) -> None:
        if self._last is None:
            return
        line = QLineF(self._last, point)
        spacing = max(1.0, self._brush.size * _SPACING)
        count = int(line.length() // spacing)
        if count == 0:
            return
        points = [line.pointAt(k * spacing / line.length()) for k in range(1, count + 1)]
        self._last = points[-1]
        self._dabs(points)

    def end_stroke(self) -> None:
        if self._saved is None:
            return
        saved, rect = self._saved, self._dirty
        self._saved, self._last = None, None
        if rect.isEmpty():
            return
        # The old pixels of the stroke's rectangle: today's pixels, with the touched tiles put back.
        before = self._image.copy(rect)
        painter = QPainter(before)
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        for (column, row), tile in saved.items():
            painter.drawImage(column * _TILE - rect.x(), row * _TILE - rect.y(), tile)
        painter.end()
        text = self.tr("Erase") if self._brush.erase else self.tr("Brush stroke")
        self._undo.push(_PatchCommand(self, rect, before, self._image.copy(rect), text))

    def _save_tiles(self, rect: QRect) -> None:
        if self._saved is None:
            return
        for row in range(max(rect.top(), 0) // _TILE, min(rect.bottom(), self._image.height() - 1) // _TILE + 1):
            for column in range(max(rect.left(), 0) // _TILE, min(rect.right(), self._image.width() - 1) // _TILE + 1):
                if (column, row) not in self._saved:
                    self._saved[(column, row)] = self._image.copy(column * _TILE, row * _TILE, _TILE, _TILE)

    def _dabs(self, points: list[QPointF]) -> None:
        brush = self._brush
        radius = max(brush.size / 2.0, 0.5)
        xs, ys = [p.x() for p in points], [p.y() for p in points]
        reach = QRectF(
            min(xs) - radius, min(ys) - radius, max(xs) - min(xs) + 2 * radius, max(ys) - min(ys) + 2 * radius
        )
        self._save_tiles(reach.toAlignedRect().adjusted(-1, -1, 1, 1))
        painter = QPainter(self._image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setCompositionMode(
            QPainter.CompositionMode.CompositionMode_DestinationOut
            if brush.erase
            else QPainter.CompositionMode.CompositionMode_SourceOver
        )
        changed = QRect()
        for center in points:
            if brush.hardness >= 0.999:
                painter.setBrush(self.COLOR)
            else:
                gradient = QRadialGradient(center, radius)
                transparent = QColor(self.COLOR)
                transparent.setAlpha(0)
                gradient.setColorAt(0.0, self.COLOR)
                gradient.setColorAt(max(brush.hardness, 0.0), self.COLOR)
                gradient.setColorAt(1.0, transparent)
                painter.setBrush(gradient)
            painter.drawEllipse(center, radius, radius)
            changed = changed.united(
                QRectF(center.x() - radius, center.y() - radius, 2 * radius, 2 * radius)
                .toAlignedRect()
                .adjusted(-1, -1, 1, 1)
            )
        painter.end()
        changed = changed.intersected(self._image.rect())
        self._dirty = self._dirty.united(changed)
        self.update(QRectF(changed))
        self.mask_edited.emit(changed)

    # ------------------------------------------------------------------------ whole-mask operations

    def invert(self) -> None:
        self.set_values(255 - self.values(), self.tr("Invert mask"))

    def clear(self) -> None:
        self.set_values(np.zeros((self._image.height(), self._image.width()), np.uint8), self.tr("Clear mask"))

    def fill(self) -> None:
        self.set_values(np.full((self._image.height(), self._image.width()), 255, np.uint8), self.tr("Fill mask"))

    def set_values(self, values: np.ndarray, text: str = "") -> None:
        """Replace the whole mask (undoable); `values` must be the layer's size."""
        if values.shape != (self._image.height(), self._image.width()):
            raise ValueError(
                f"mask of shape {values.shape} does not fit a {self.size.width()}x{self.size.height()} layer"
            )
        rect = self._image.rect()
        after = mask_image(values, self.COLOR)
        self._undo.push(_PatchCommand(self, rect, self._image.copy(), after, text or self.tr("Load mask")))

    def _put(self, rect: QRect, pixels: QImage) -> None:
        painter = QPainter(self._image)
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        painter.drawImage(rect.topLeft(), pixels)
        painter.end()
        self.update(QRectF(rect))
        self.mask_edited.emit(QRect(rect))
