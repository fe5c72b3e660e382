"""FLUX.3's layout boxes in the window: the picture's frame in miniature to drag boxes on, and their list.

Each box is where FLUX.3's prompt rewriter must place what its description says (desktop/engine/backends/
layout_captions.py). The frame keeps the ratio of the size being asked for; boxes are kept as fractions of it, so
they stay in place when the size changes. A drawn box is added to the list with its description open for typing.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, QSize, Qt, Signal, Slot
from PySide6.QtGui import QColor, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.request import MAX_LAYOUT_BOXES, MIN_LAYOUT_BOX_SIDE, LayoutBox

_BOX_COLOUR = QColor(255, 140, 0)
_SELECTED_COLOUR = QColor(40, 140, 255)
_MARGIN = 4.0


class LayoutArea(QWidget):
    """The frame with the boxes drawn over it, numbered as listed; a drag inside it draws a new box.

    Signals:
        drawn(object): a box was drawn, its edges (left, top, right, bottom) as fractions of the frame.
        picked(int): a click fell in this box (the topmost: the last listed of those under it).
    """

    drawn = Signal(object)
    picked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("layout_area")
        self.setMinimumSize(160, 110)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self._ratio = 1.0  # width / height of the picture
        self._boxes: tuple[LayoutBox, ...] = ()
        self._selected = -1
        self._start: QPointF | None = None
        self._end: QPointF | None = None

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(240, 160)

    def set_ratio(self, width: int, height: int) -> None:
        self._ratio = width / height if width > 0 and height > 0 else 1.0
        self.update()

    def boxes(self) -> tuple[LayoutBox, ...]:
        """The boxes drawn now."""
        return self._boxes

    def set_boxes(self, boxes: tuple[LayoutBox, ...], selected: int = -1) -> None:
        self._boxes, self._selected = boxes, selected
        self.update()

    def frame(self) -> QRectF:
        """Where the picture's frame lies in the widget: as large as fits, centred."""
        room = QRectF(self.rect()).adjusted(_MARGIN, _MARGIN, -_MARGIN, -_MARGIN)
        width = min(room.width(), room.height() * self._ratio)
        height = width / self._ratio
        return QRectF(room.center().x() - width / 2, room.center().y() - height / 2, width, height)

    def box_rect(self, box: LayoutBox) -> QRectF:
        frame = self.frame()
        return QRectF(QPointF(frame.left() + box.left * frame.width(), frame.top() + box.top * frame.height()),
                      QPointF(frame.left() + box.right * frame.width(), frame.top() + box.bottom * frame.height()))

    def _fractions(self, point: QPointF) -> tuple[float, float]:
        frame = self.frame()
        x = (point.x() - frame.left()) / frame.width()
        y = (point.y() - frame.top()) / frame.height()
        return min(1.0, max(0.0, x)), min(1.0, max(0.0, y))

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        frame = self.frame()
        painter.fillRect(frame, self.palette().base())
        painter.setPen(QPen(self.palette().mid().color(), 1))
        painter.drawRect(frame)
        for index, box in enumerate(self._boxes):
            colour = _SELECTED_COLOUR if index == self._selected else _BOX_COLOUR
            rect = self.box_rect(box)
            painter.setPen(QPen(colour, 2))
            painter.fillRect(rect, QColor(colour.red(), colour.green(), colour.blue(), 40))
            painter.drawRect(rect)
            painter.drawText(rect.adjusted(3, 1, 0, 0), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop,
                             str(index + 1))  # fmt: skip
        if self._start is not None and self._end is not None:
            painter.setPen(QPen(_SELECTED_COLOUR, 1, Qt.PenStyle.DashLine))
            painter.drawRect(QRectF(self._start, self._end).normalized().intersected(frame))
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.button() == Qt.MouseButton.LeftButton and self.frame().contains(event.position()):
            self._start = self._end = event.position()
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._start is not None:
            self._end = event.position()
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._start is None or event.button() != Qt.MouseButton.LeftButton:
            return
        (x0, y0), (x1, y1) = self._fractions(self._start), self._fractions(event.position())
        self._start = self._end = None
        self.update()
        left, right, top, bottom = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        # A click, or a box too thin to place anything in, draws nothing: a click picks the box under it.
        if right - left >= MIN_LAYOUT_BOX_SIDE and bottom - top >= MIN_LAYOUT_BOX_SIDE:
            self.drawn.emit(tuple(round(edge, 4) for edge in (left, top, right, bottom)))
            return
        under = [index for index, box in enumerate(self._boxes) if self.box_rect(box).contains(event.position())]
        if under:
            self.picked.emit(under[-1])


class LayoutBoxesEditor(QWidget):
    """The frame to draw boxes on, the list of boxes with their descriptions, Remove and Clear.

    Signals:
        boxes_changed(object): the boxes now listed, a tuple of LayoutBox in order.
    """

    boxes_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._boxes: tuple[LayoutBox, ...] = ()
        self.area = LayoutArea()
        self.area.drawn.connect(self._on_drawn)
        self.area.picked.connect(lambda row: self.table.setCurrentCell(row, 0))
        self.area.setToolTip(self.tr("Drag in the frame to place an element of the picture, then describe it in the "
                                     "list; click a box to select it"))  # fmt: skip
        self.table = QTableWidget(0, 2, objectName="layout_table")
        self.table.setHorizontalHeaderLabels([self.tr("What it holds"), self.tr("Where")])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setMaximumHeight(140)
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.itemSelectionChanged.connect(self._show_selection)
        self.remove_button = QToolButton(objectName="layout_remove", text=self.tr("Remove"))
        self.remove_button.setToolTip(self.tr("Remove the selected box"))
        self.remove_button.clicked.connect(self.remove_selected)
        self.table.installEventFilter(self)  # Delete in the list removes the selected box, as the button does
        self.clear_button = QToolButton(objectName="layout_clear", text=self.tr("Clear"))
        self.clear_button.setToolTip(self.tr("Remove every box"))
        self.clear_button.clicked.connect(lambda: self._change(()))
        self.hint = QLabel(self.tr("Drag in the frame to place an element; the rewriter writes the caption around "
                                   "the boxes."), wordWrap=True)  # fmt: skip
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.remove_button)
        buttons.addWidget(self.clear_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.hint)
        layout.addWidget(self.area)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self._update_buttons()

    def boxes(self) -> tuple[LayoutBox, ...]:
        return self._boxes

    def set_boxes(self, boxes: tuple[LayoutBox, ...]) -> None:
        """Show `boxes` (a recipe's or a restored session's); says nothing."""
        self._boxes = tuple(boxes)
        self.table.blockSignals(True)
        self.table.setRowCount(len(self._boxes))
        for row, box in enumerate(self._boxes):
            self.table.setItem(row, 0, QTableWidgetItem(box.description))
            where = QTableWidgetItem(_where(box))
            where.setFlags(where.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.table.setItem(row, 1, where)
        self.table.blockSignals(False)
        self.area.set_boxes(self._boxes, self.table.currentRow())
        self._update_buttons()

    def set_canvas_size(self, width: int, height: int) -> None:
        self.area.set_ratio(width, height)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        # The list's own Delete (not while a description is being typed: the editor has the keys then).
        if watched is self.table and event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and 0 <= self.table.currentRow():
                self.remove_selected()
                return True
        return super().eventFilter(watched, event)

    @Slot()
    def remove_selected(self) -> None:
        row = self.table.currentRow()
        if 0 <= row < len(self._boxes):
            self._change(self._boxes[:row] + self._boxes[row + 1:])

    @Slot(object)
    def _on_drawn(self, edges: tuple[float, float, float, float]) -> None:
        if len(self._boxes) >= MAX_LAYOUT_BOXES:
            return
        self._change(self._boxes + (LayoutBox("", *edges),))
        row = len(self._boxes) - 1
        self.table.setCurrentCell(row, 0)
        self.table.editItem(self.table.item(row, 0))

    @Slot(QTableWidgetItem)
    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        row = item.row()
        if item.column() != 0 or not 0 <= row < len(self._boxes):
            return
        boxes = list(self._boxes)
        old = boxes[row]
        boxes[row] = LayoutBox(item.text(), old.left, old.top, old.right, old.bottom)
        self._boxes = tuple(boxes)
        self.area.set_boxes(self._boxes, row)
        self.boxes_changed.emit(self._boxes)

    def _change(self, boxes: tuple[LayoutBox, ...]) -> None:
        self.set_boxes(boxes)
        self.boxes_changed.emit(self._boxes)

    @Slot()
    def _show_selection(self) -> None:
        self.area.set_boxes(self._boxes, self.table.currentRow())
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.remove_button.setEnabled(0 <= self.table.currentRow() < len(self._boxes))
        self.clear_button.setEnabled(bool(self._boxes))
        self.area.setEnabled(len(self._boxes) < MAX_LAYOUT_BOXES)


def _where(box: LayoutBox) -> str:
    """The box's edges as percentages of the picture: left, top – right, bottom."""
    return f"{box.left:.0%}, {box.top:.0%} – {box.right:.0%}, {box.bottom:.0%}"
