"""The control drawing on the canvas: a scribble drawn by hand (white on black) for a control unit.

`ControlLayer` is a mask layer that paints white and draws a black backdrop at a chosen opacity, so
the picture under it shows through while the drawing itself reads as the control image will: white
strokes on black. Its values (alpha) are the control image's gray levels; `grayscale_png` of them is
the file a control unit reads. `ControlDrawBar` holds the drawing's tools above the canvas.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QSize, Qt, Slot
from PySide6.QtGui import QColor, QPainter, QUndoStack
from PySide6.QtWidgets import (
    QButtonGroup,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSpinBox,
    QStyleOptionGraphicsItem,
    QToolButton,
    QWidget,
)

from desktop.ui.canvas.mask_layer import Brush, MaskLayer
from desktop.ui.canvas.view import CONTROL_TOOLS, MaskCanvas

# Over the mask (z 1): the drawing is what the user is working on while it shows.
_Z = 2
DEFAULT_BACKDROP = 0.6


class ControlLayer(MaskLayer):
    """White strokes on a black backdrop, in image pixels at the scene origin (like the mask)."""

    COLOR = QColor(255, 255, 255)

    def __init__(self, size: QSize, undo_stack: QUndoStack) -> None:
        super().__init__(size, undo_stack)
        self.setZValue(_Z)
        self.set_overlay_opacity(DEFAULT_BACKDROP)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        rect = option.exposedRect.toAlignedRect().intersected(self.image.rect())
        if rect.isEmpty():
            return
        # The overlay opacity is the backdrop's: 1 hides the picture, 0 shows it fully. Strokes stay opaque.
        painter.setOpacity(self.overlay_opacity())
        painter.fillRect(rect, Qt.GlobalColor.black)
        painter.setOpacity(1.0)
        painter.drawImage(rect, self.image, rect)

    def clear_drawing(self) -> None:
        self.set_values(np.zeros((self.size.height(), self.size.width()), np.uint8), self.tr("Clear drawing"))


class ControlDrawBar(QWidget):
    """The control drawing's tools: brush, eraser, size, backdrop, clear, undo/redo and Done.

    It sets the canvas's control tool and brush; the owner (ControlDrawing) shows it while drawing and
    connects `done_button`.
    """

    def __init__(self, canvas: MaskCanvas, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("control_draw_bar")
        self._canvas = canvas
        self.tool_buttons = {
            tool: _button(text, tip, checkable=True)
            for tool, text, tip in (
                ("control_brush", self.tr("Scribble"), self.tr("Draw white lines of the control image")),
                ("control_eraser", self.tr("Erase"), self.tr("Erase lines back to black")),
            )
        }
        self._tools = QButtonGroup(self)
        for button in self.tool_buttons.values():
            self._tools.addButton(button)
        self.tool_buttons["control_brush"].setChecked(True)
        self.size_spin = QSpinBox(minimum=1, maximum=512, value=8, suffix=self.tr(" px"), objectName="control_size")
        self.size_spin.setToolTip(self.tr("Scribble width (image pixels)"))
        self.backdrop_slider = QSlider(Qt.Orientation.Horizontal, objectName="control_backdrop")
        self.backdrop_slider.setRange(0, 100)
        self.backdrop_slider.setValue(round(DEFAULT_BACKDROP * 100))
        self.backdrop_slider.setMaximumWidth(90)
        self.backdrop_slider.setToolTip(self.tr("How much the black backdrop hides the picture under the drawing"))
        self.clear_button = _button(self.tr("Clear"), self.tr("Clear the drawing to black"))
        self.undo_button = _button(self.tr("Undo"), self.tr("Undo the last edit (Ctrl+Z)"))
        self.redo_button = _button(self.tr("Redo"), self.tr("Redo (Ctrl+Shift+Z)"))
        self.done_button = _button(self.tr("Done"), self.tr("Use the drawing as the unit's control image"))
        self.title = QLabel(self.tr("Control drawing:"))

        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        layout.setSpacing(4)
        for widget in (self.title, *self.tool_buttons.values(), QLabel(self.tr("Size")), self.size_spin,
                       QLabel(self.tr("Backdrop")), self.backdrop_slider, self.clear_button, self.undo_button,
                       self.redo_button):
            layout.addWidget(widget)
        layout.addStretch(1)
        layout.addWidget(self.done_button)

        self._tools.buttonClicked.connect(self._on_tool_clicked)
        self.size_spin.valueChanged.connect(self._update_brush)
        self.backdrop_slider.valueChanged.connect(self._update_backdrop)
        self.clear_button.clicked.connect(self._clear)
        self.undo_button.clicked.connect(canvas.undo_stack.undo)
        self.redo_button.clicked.connect(canvas.undo_stack.redo)
        self._update_brush()
        self.setVisible(False)

    def tool(self) -> str:
        return next(name for name, button in self.tool_buttons.items() if button.isChecked())

    def apply(self) -> None:
        """Put the bar's tool, brush and backdrop on the canvas (when drawing starts)."""
        self._update_brush()
        self._update_backdrop()
        self._canvas.set_tool(self.tool())

    def _on_tool_clicked(self, button: QToolButton) -> None:
        self._canvas.set_tool(next(name for name, b in self.tool_buttons.items() if b is button))

    @Slot()
    def _update_brush(self) -> None:
        # Hard: a scribble is white or black, the way ControlNet's scribble models were trained.
        self._canvas.control_brush = Brush(float(self.size_spin.value()), 1.0)

    @Slot()
    def _update_backdrop(self) -> None:
        layer = self._canvas.control_layer
        if layer is not None:
            layer.set_overlay_opacity(self.backdrop_slider.value() / 100)

    @Slot()
    def _clear(self) -> None:
        layer = self._canvas.control_layer
        if isinstance(layer, ControlLayer):
            layer.clear_drawing()


def is_control_tool(tool: str) -> bool:
    return tool in CONTROL_TOOLS


def _button(text: str, tip: str, checkable: bool = False) -> QToolButton:
    button = QToolButton(text=text, toolTip=tip, checkable=checkable)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    return button
