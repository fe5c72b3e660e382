"""The editing canvas: CanvasView plus a mask layer, brush/eraser tools, undo/redo and image drops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QPointF, QSize, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QImage,
    QKeySequence,
    QMouseEvent,
    QUndoStack,
)
from PySide6.QtWidgets import QGraphicsView, QWidget

from desktop.ui.canvas.mask_layer import Brush, MaskLayer
from desktop.ui.canvas.picture_view import CanvasView

MASK_TOOLS = ("brush", "eraser")
# The control drawing's brush and eraser (control_layer.py): they paint on `control_layer`, not the mask.
CONTROL_TOOLS = ("control_brush", "control_eraser")
TOOLS = ("pan", *MASK_TOOLS, *CONTROL_TOOLS)


class MaskCanvas(CanvasView):
    """A CanvasView on which a mask can be painted over the picture.

    Strokes are mapped from the pointer through the view's transform to image pixels, so they land
    where the pointer went at any zoom. With the pan tool the view drags as before.

    Signals:
        mask_edited(): the mask changed (stroke, undo, redo, invert, clear, fill, load).
        image_dropped(str): a local file was dropped on the canvas.
        tool_changed(str): the active tool is now this one of TOOLS.
        picture_changed(): the canvas shows another picture (a file, a preview, an image in memory).
    """

    mask_edited = Signal()
    image_dropped = Signal(str)
    tool_changed = Signal(str)
    picture_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        # Each step keeps only what it changed, but whole-mask steps of a 4096 x 4096 mask are 64 MB.
        self.undo_stack.setUndoLimit(40)
        self.mask_layer: MaskLayer | None = None
        self.brush = Brush()
        # Set by ControlDrawing: the layer and brush the control tools paint with.
        self.control_layer: MaskLayer | None = None
        self.control_brush = Brush(8.0, 1.0)
        self._tool = "pan"
        self._painting = False
        self._shown_file: str | None = None
        self.setAcceptDrops(True)
        self.undo_action = self._shortcut_action(
            self.undo_stack.createUndoAction(self, self.tr("Undo")), QKeySequence.StandardKey.Undo
        )
        self.redo_action = self._shortcut_action(
            self.undo_stack.createRedoAction(self, self.tr("Redo")), QKeySequence("Ctrl+Shift+Z")
        )

    def _shortcut_action(self, action: QAction, key: QKeySequence | QKeySequence.StandardKey) -> QAction:
        action.setShortcut(key)
        # Only while the canvas has focus: the prompt editor keeps its own text undo.
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.addAction(action)
        return action

    # --------------------------------------------------------------------------------------- public

    @property
    def tool(self) -> str:
        return self._tool

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown tool {tool!r}")
        self._tool = tool
        painting = tool != "pan"
        self.setDragMode(QGraphicsView.DragMode.NoDrag if painting else QGraphicsView.DragMode.ScrollHandDrag)
        self.viewport().setCursor(Qt.CursorShape.CrossCursor if painting else Qt.CursorShape.OpenHandCursor)
        self.tool_changed.emit(tool)

    @property
    def shown_file(self) -> str | None:
        """The file the canvas shows, when it shows one (not a preview, not an edited image)."""
        return self._shown_file

    def show_image(self, path: str | Path) -> bool:
        shown = super().show_image(path)
        if shown:
            self._shown_file = str(path)
        return shown

    def show_preview(self, array: np.ndarray, display_size: tuple[int, int] | None = None) -> None:
        self._shown_file = None
        super().show_preview(array, display_size)

    def show_qimage(self, image: QImage) -> None:
        """Show an image made in memory (an outpainting canvas)."""
        self._shown_file = None
        self._set_image(image.copy(), preview=False, display_size=None)

    def _set_image(self, image: QImage, preview: bool, display_size: tuple[int, int] | None) -> None:
        super()._set_image(image, preview, display_size)
        self.picture_changed.emit()

    def ensure_mask(self, size: QSize) -> MaskLayer:
        """A mask of `size` image pixels; a mask of another size is replaced by an empty one."""
        if self.mask_layer is not None and self.mask_layer.size == size:
            return self.mask_layer
        if self.mask_layer is not None:
            self.scene().removeItem(self.mask_layer)
            self.mask_layer.deleteLater()
        self.undo_stack.clear()
        self.mask_layer = MaskLayer(size, self.undo_stack)
        self.mask_layer.mask_edited.connect(lambda _rect: self.mask_edited.emit())
        self.scene().addItem(self.mask_layer)
        return self.mask_layer

    def set_mask_visible(self, visible: bool) -> None:
        if self.mask_layer is not None:
            self.mask_layer.setVisible(visible)

    def image_point(self, view_point: QPointF) -> QPointF:
        """A viewport position (float, from the event) in image pixels, without rounding to screen pixels."""
        inverse, _ = self.viewportTransform().inverted()
        scene_point = inverse.map(view_point)
        return self.mask_layer.mapFromScene(scene_point) if self.mask_layer is not None else scene_point

    # ------------------------------------------------------------------------------------ Qt events

    def _target(self) -> MaskLayer | None:
        """The layer the current tool paints on."""
        return self.control_layer if self._tool in CONTROL_TOOLS else self.mask_layer

    def mousePressEvent(self, event: QMouseEvent) -> None:
        layer = self._target()
        if self._tool != "pan" and event.button() == Qt.MouseButton.LeftButton and layer is not None:
            self._painting = True
            base = self.control_brush if self._tool in CONTROL_TOOLS else self.brush
            brush = Brush(base.size, base.hardness, self._tool in ("eraser", "control_eraser"))
            layer.begin_stroke(self.image_point(event.position()), brush)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        layer = self._target()
        if self._painting and layer is not None:
            layer.continue_stroke(self.image_point(event.position()))
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._painting and event.button() == Qt.MouseButton.LeftButton:
            self._painting = False
            layer = self._target()
            if layer is not None:
                layer.continue_stroke(self.image_point(event.position()))
                layer.end_stroke()
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if self._tool != "pan":
            self.mousePressEvent(event)  # a quick second dab, not a zoom toggle
            return
        super().mouseDoubleClickEvent(event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _local_file(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        # QGraphicsView hands drags to the scene, which has no drop target and would refuse them.
        if _local_file(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        path = _local_file(event)
        if path is None:
            event.ignore()
            return
        event.acceptProposedAction()
        self.image_dropped.emit(path)


def _local_file(event: QDropEvent | QDragEnterEvent | QDragMoveEvent) -> str | None:
    mime = event.mimeData()
    if mime is None or not mime.hasUrls():
        return None
    for url in mime.urls():
        if url.isLocalFile():
            return url.toLocalFile()
    return None
