"""The frame of FLUX.3's layout boxes (desktop/ui/layout_boxes_editor.py): a picture's frame in miniature, in the
picture's ratio, with the boxes drawn over it and, when set, a picture under them. A drag draws a box; the selected
box moves when dragged from inside or with the arrow keys and resizes by its corners. Edges are fractions of the
frame, as a LayoutBox keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QWidget

from desktop.engine.request import MIN_LAYOUT_BOX_SIDE, LayoutBox

_BOX_COLOUR = QColor(255, 140, 0)
_SELECTED_COLOUR = QColor(40, 140, 255)
_MARGIN = 4.0
_HANDLE = 6.0  # px: a press this near a corner of the selected box resizes it (its squares are drawn this size)
_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
_NUDGE, _SHIFT_NUDGE = 0.01, 0.1  # fractions of the frame an arrow key moves the selected box, alone and with Shift


class LayoutArea(QWidget):
    """The frame with the boxes drawn over it, numbered as listed (or as `set_boxes` numbers them), over a picture
    when one is set; a drag inside it draws a new box. The selected box moves when dragged from inside it and
    resizes when dragged by a corner (the other boxes stay: a drag inside one of them draws a box in it).

    Signals:
        drawn(object): a box was drawn, its edges (left, top, right, bottom) as fractions of the frame.
        picked(int): a click fell in this box (the topmost: the last listed of those under it).
        reshaped(int, object): the selected box (its index) was moved or resized to these edges.
        deleted(int): Delete or Backspace was pressed with this box selected.
        opened(int): this box was double-clicked (the topmost under the pointer).
    """

    drawn = Signal(object)
    picked = Signal(int)
    reshaped = Signal(int, object)
    deleted = Signal(int)
    opened = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("layout_area")
        self.setMinimumSize(160, 110)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self._ratio = 1.0  # width / height of the picture
        self._boxes: tuple[LayoutBox, ...] = ()
        self._numbers: tuple[int, ...] = ()
        self._selected = -1
        self._picture: QPixmap | None = None
        self._start: QPointF | None = None
        self._end: QPointF | None = None
        self._grab: str | None = None  # while the selected box is dragged: "move" or the corner held
        self.setMouseTracking(True)  # the cursor tells where a press would move or resize
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # the arrow keys move the selected box

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(240, 160)

    def set_ratio(self, width: int, height: int) -> None:
        self._ratio = width / height if width > 0 and height > 0 else 1.0
        self.update()

    def boxes(self) -> tuple[LayoutBox, ...]:
        """The boxes drawn now."""
        return self._boxes

    def set_boxes(self, boxes: tuple[LayoutBox, ...], selected: int = -1, numbers: Sequence[int] = ()) -> None:
        """Show `boxes`, `selected` (an index into them) highlighted, labelled `numbers` (1, 2 ... when none)."""
        self._boxes, self._selected = boxes, selected
        self._numbers = tuple(numbers) or tuple(range(1, len(boxes) + 1))
        self.update()

    def numbers(self) -> tuple[int, ...]:
        """The boxes' labels, in order."""
        return self._numbers

    def selected(self) -> int:
        return self._selected

    def has_picture(self) -> bool:
        return self._picture is not None

    def set_picture(self, image: QImage | None) -> None:
        """Draw the frame over `image` and in its ratio; a plain frame when None."""
        self._picture = None if image is None or image.isNull() else QPixmap.fromImage(image)
        if self._picture is not None:
            self.set_ratio(self._picture.width(), self._picture.height())
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

    def _edges(self, index: int) -> tuple[float, float, float, float]:
        """Box `index`'s edges, as it is being moved or resized when it is."""
        box = self._boxes[index]
        if index == self._selected and self._grab is not None and self._start is not None and self._end is not None:
            return self._reshaped(box, self._grab, self._start, self._end)
        return box.left, box.top, box.right, box.bottom

    def _reshaped(self, box: LayoutBox, grab: str, start: QPointF, end: QPointF) -> tuple[float, float, float, float]:
        """`box`'s edges after the drag from `start` to `end` holding `grab`: moved (kept inside the frame) or its
        held corner moved (kept inside the frame; unchanged while it would leave less than the smallest side)."""
        frame = self.frame()
        dx, dy = (end.x() - start.x()) / frame.width(), (end.y() - start.y()) / frame.height()
        left, top, right, bottom = box.left, box.top, box.right, box.bottom
        if grab == "move":
            return _moved(box, dx, dy)
        vertical, horizontal = grab.split("_")
        top, bottom = (top + dy, bottom) if vertical == "top" else (top, bottom + dy)
        left, right = (left + dx, right) if horizontal == "left" else (left, right + dx)
        left, right = sorted((min(max(left, 0.0), 1.0), min(max(right, 0.0), 1.0)))
        top, bottom = sorted((min(max(top, 0.0), 1.0), min(max(bottom, 0.0), 1.0)))
        if right - left < MIN_LAYOUT_BOX_SIDE or bottom - top < MIN_LAYOUT_BOX_SIDE:
            return box.left, box.top, box.right, box.bottom
        return _rounded(left, top, right, bottom)

    def _grab_at(self, point: QPointF) -> str | None:
        """What a press at `point` takes hold of: a corner of the selected box, the box itself, or nothing."""
        if not 0 <= self._selected < len(self._boxes):
            return None
        rect = self.box_rect(self._boxes[self._selected])
        corners = (rect.topLeft(), rect.topRight(), rect.bottomLeft(), rect.bottomRight())
        for name, corner in zip(_CORNERS, corners, strict=True):
            if abs(point.x() - corner.x()) <= _HANDLE and abs(point.y() - corner.y()) <= _HANDLE:
                return name
        return "move" if rect.contains(point) else None

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        frame = self.frame()
        painter.fillRect(frame, self.palette().base())
        if self._picture is not None:
            painter.drawPixmap(frame, self._picture, QRectF(self._picture.rect()))
        painter.setPen(QPen(self.palette().mid().color(), 1))
        painter.drawRect(frame)
        for index, box in enumerate(self._boxes):
            colour = _SELECTED_COLOUR if index == self._selected else _BOX_COLOUR
            rect = self.box_rect(LayoutBox(box.description, *self._edges(index)))
            painter.setPen(QPen(colour, 2))
            painter.fillRect(rect, QColor(colour.red(), colour.green(), colour.blue(), 40))
            painter.drawRect(rect)
            painter.drawText(rect.adjusted(3, 1, 0, 0), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop,
                             str(self._numbers[index]))  # fmt: skip
            if index == self._selected:  # its corners, to resize it by
                for corner in (rect.topLeft(), rect.topRight(), rect.bottomLeft(), rect.bottomRight()):
                    painter.fillRect(QRectF(corner.x() - _HANDLE / 2, corner.y() - _HANDLE / 2, _HANDLE, _HANDLE),
                                     colour)  # fmt: skip
        if self._start is not None and self._end is not None and self._grab is None:
            painter.setPen(QPen(_SELECTED_COLOUR, 1, Qt.PenStyle.DashLine))
            painter.drawRect(QRectF(self._start, self._end).normalized().intersected(frame))
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.button() == Qt.MouseButton.LeftButton:
            self._grab = self._grab_at(event.position())
            if self._grab is not None or self.frame().contains(event.position()):
                self._start = self._end = event.position()
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._start is not None:
            self._end = event.position()
            self.update()
            return
        grab = self._grab_at(event.position())
        self.setCursor(Qt.CursorShape.CrossCursor if grab is None else Qt.CursorShape.SizeAllCursor if grab == "move"
                       else Qt.CursorShape.SizeFDiagCursor if grab in ("top_left", "bottom_right")
                       else Qt.CursorShape.SizeBDiagCursor)  # fmt: skip

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() == Qt.Key.Key_Escape and self._start is not None:  # the drag under way is dropped
            self._start = self._end = self._grab = None
            self.update()
            return
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and 0 <= self._selected < len(self._boxes):
            self.deleted.emit(self._selected)
            return
        steps = {Qt.Key.Key_Left: (-1, 0), Qt.Key.Key_Right: (1, 0), Qt.Key.Key_Up: (0, -1), Qt.Key.Key_Down: (0, 1)}
        step = steps.get(Qt.Key(event.key()))
        if step is None or not 0 <= self._selected < len(self._boxes):
            super().keyPressEvent(event)
            return
        # A hundredth of the frame a press; with Shift a tenth.
        size = _SHIFT_NUDGE if event.modifiers() & Qt.KeyboardModifier.ShiftModifier else _NUDGE
        box = self._boxes[self._selected]
        edges = _moved(box, step[0] * size, step[1] * size)
        if edges != (box.left, box.top, box.right, box.bottom):
            self.reshaped.emit(self._selected, edges)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        # Instead of a second press: the first press and release already picked the box.
        under = self._under(event.position())
        if event.button() == Qt.MouseButton.LeftButton and under is not None:
            self.opened.emit(under)
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._start is None or event.button() != Qt.MouseButton.LeftButton:
            return
        start, grab = self._start, self._grab
        (x0, y0), (x1, y1) = self._fractions(start), self._fractions(event.position())
        self._start = self._end = self._grab = None
        self.update()
        if grab is not None:
            # The selected box held: moved or resized, else (a click, or a drag it cannot follow) drawing nothing.
            box = self._boxes[self._selected]
            edges = self._reshaped(box, grab, start, event.position())
            if edges != (box.left, box.top, box.right, box.bottom):
                self.reshaped.emit(self._selected, edges)
            else:
                self._pick(event.position())
            return
        left, right, top, bottom = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        # A click, or a box too thin to place anything in, draws nothing: a click picks the box under it.
        if right - left >= MIN_LAYOUT_BOX_SIDE and bottom - top >= MIN_LAYOUT_BOX_SIDE:
            self.drawn.emit(_rounded(left, top, right, bottom))
            return
        self._pick(event.position())

    def _pick(self, point: QPointF) -> None:
        under = self._under(point)
        if under is not None:
            self.picked.emit(under)

    def _under(self, point: QPointF) -> int | None:
        """The topmost box at `point` (the last listed of those under it), or None."""
        under = [index for index, box in enumerate(self._boxes) if self.box_rect(box).contains(point)]
        return under[-1] if under else None


def _rounded(left: float, top: float, right: float, bottom: float) -> tuple[float, float, float, float]:
    """Edges to 4 decimals (a tenth of the rewriter's grid step), as a box keeps them."""
    return round(left, 4), round(top, 4), round(right, 4), round(bottom, 4)


def _moved(box: LayoutBox, dx: float, dy: float) -> tuple[float, float, float, float]:
    """`box`'s edges moved by (dx, dy) fractions of the frame, stopping at its edges (its size kept)."""
    dx, dy = min(max(dx, -box.left), 1 - box.right), min(max(dy, -box.top), 1 - box.bottom)
    return _rounded(box.left + dx, box.top + dy, box.right + dx, box.bottom + dy)
