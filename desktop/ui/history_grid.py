"""The history grid: a QListView in icon mode with a delegate of fixed cell size, and keyboard actions.

Why a delegate of its own: with uniform item sizes the view measures row 0 once and reuses that size
for every row. Qt's default delegate measures the thumbnail the row has *now*, and right after a
start or a new image row 0 has none yet (thumbnails come from the pool later), so every cell became
a caption-high strip until something re-laid the view out. The cell size here depends only on the
icon size and the font, never on what has loaded, so it is right from the first paint.
"""

from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, Signal
from PySide6.QtGui import QFocusEvent, QKeyEvent, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import QListView, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from desktop.bridge.history_model import RecordRole

PADDING = 4
CAPTION_LINES = 2
SPACING = 6

Index = QModelIndex | QPersistentModelIndex


class HistoryDelegate(QStyledItemDelegate):
    """Paints a thumbnail at its aspect ratio over a two-line caption, in a cell of one fixed size."""

    def __init__(self, icon_size: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._icon_size = icon_size

    def cell_size(self, option: QStyleOptionViewItem) -> QSize:
        lines = option.fontMetrics.lineSpacing() * CAPTION_LINES
        return QSize(self._icon_size + 2 * PADDING, self._icon_size + lines + 3 * PADDING)

    def sizeHint(self, option: QStyleOptionViewItem, index: Index) -> QSize:  # noqa: N802 - Qt override
        return self.cell_size(option)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: Index) -> None:
        # No initStyleOption: it reads every role of the row, and the view's option already has the
        # state (selected, hovered) and palette; this draws the background, picture and caption itself.
        opt = QStyleOptionViewItem(option)
        widget = opt.widget
        style = widget.style() if widget is not None else None
        painter.save()
        if style is not None:
            style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, opt, painter, widget)
        box = QRect(opt.rect.x() + PADDING, opt.rect.y() + PADDING, self._icon_size, self._icon_size)
        pixmap = index.data(Qt.ItemDataRole.DecorationRole)
        if isinstance(pixmap, QPixmap) and not pixmap.isNull():
            target = _fit(pixmap.width(), pixmap.height(), box)
            painter.drawPixmap(target, pixmap)
        else:
            # Not loaded yet (or unreadable): a frame of the image's own shape, so the grid does not jump.
            record = index.data(RecordRole)
            width = getattr(record, "width", None) or 1
            height = getattr(record, "height", None) or 1
            painter.setPen(option.palette.color(QPalette.ColorRole.Mid))
            painter.drawRect(_fit(width, height, box).adjusted(0, 0, -1, -1))
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        painter.setPen(opt.palette.color(role))
        metrics = opt.fontMetrics
        top = box.bottom() + 1 + PADDING
        caption = str(index.data(Qt.ItemDataRole.DisplayRole) or "")
        for line in caption.split("\n")[:CAPTION_LINES]:
            text = metrics.elidedText(line, Qt.TextElideMode.ElideRight, box.width())
            painter.drawText(QRect(box.x(), top, box.width(), metrics.lineSpacing()),
                             Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter, text)
            top += metrics.lineSpacing()
        painter.restore()


class HistoryGrid(QListView):
    """The thumbnail grid. Arrows and Home move as in any list; End goes to the oldest image of the
    query (loading the rows not fetched yet); Enter or Return asks for the detail view.

    Signals:
        open_requested(QModelIndex): Enter or Return was pressed on the current image.
    """

    open_requested = Signal(QModelIndex)

    def __init__(self, icon_size: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("history_grid")
        self.grid_delegate = HistoryDelegate(icon_size, self)
        self.setItemDelegate(self.grid_delegate)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)  # layout is then arithmetic, not a pass over every row
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(200)
        self.setIconSize(QSize(icon_size, icon_size))
        self.setVerticalScrollMode(QListView.ScrollMode.ScrollPerPixel)
        self._update_grid_size()

    def cell_size(self) -> QSize:
        option = QStyleOptionViewItem()
        option.initFrom(self)
        return self.grid_delegate.cell_size(option)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            self.open_requested.emit(self.currentIndex())
            event.accept()
            return
        if key == Qt.Key.Key_End and event.modifiers() in (Qt.KeyboardModifier.NoModifier,
                                                          Qt.KeyboardModifier.ShiftModifier):
            # Qt's End stops at the last row fetched so far; the user means the last image.
            model = self.model()
            fetch_all = getattr(model, "fetch_all", None)
            if fetch_all is not None:
                fetch_all()
        super().keyPressEvent(event)

    def focusInEvent(self, event: QFocusEvent) -> None:  # noqa: N802 - Qt override
        super().focusInEvent(event)
        # Qt makes row 0 current on focus without selecting it: Home or Enter then did nothing visible.
        current = self.currentIndex()
        selection = self.selectionModel()
        if current.isValid() and selection is not None and not selection.hasSelection():
            selection.select(current, QItemSelectionModel.SelectionFlag.ClearAndSelect)

    def changeEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        super().changeEvent(event)
        if event.type() in (event.Type.FontChange, event.Type.StyleChange):
            self._update_grid_size()

    def _update_grid_size(self) -> None:
        cell = self.cell_size()
        self.setGridSize(QSize(cell.width() + SPACING, cell.height() + SPACING))


def _fit(width: int, height: int, box: QRect) -> QRect:
    """The largest rectangle of width:height that fits in box, centred in it."""
    scale = min(box.width() / max(width, 1), box.height() / max(height, 1))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return QRect(box.x() + (box.width() - w) // 2, box.y() + (box.height() - h) // 2, w, h)
