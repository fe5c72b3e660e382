"""FLUX.3's layout boxes in the window: the picture's frame in miniature to drag boxes on, and their list.

Each box is where FLUX.3's prompt rewriter must place what its description says (desktop/engine/backends/
layout_captions.py). The frame keeps the ratio of the size being asked for; boxes are kept as fractions of it, so
they stay in place when the size changes. A drawn box is added to the list with its description open for typing.

With reference pictures (an edit), a box may take its element from one of them ("From" in the list): the element is
then marked on that picture, shown in a second frame under the first (decoded on the window's thread pool), and the
rewriter moves it to the box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from PySide6.QtCore import QEvent, QObject, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QImage, QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.request import MAX_LAYOUT_BOXES, LayoutBox, boxes_following_references
from desktop.ui.layout_area import LayoutArea
from desktop.ui.thumbnails import ThumbnailLoader

_PICTURE_SIDE = 480  # px: a reference picture as the source frame shows it, enough to mark an element on
_TEXT, _FROM, _WHERE = range(3)  # the list's columns


class LayoutBoxesEditor(QWidget):
    """The frame to draw boxes on, the list of boxes with their descriptions and origins, Remove and Clear; for a box
    taken from a reference picture, that picture's frame to mark the element on.

    Signals:
        boxes_changed(object): the boxes now listed, a tuple of LayoutBox in order.
    """

    boxes_changed = Signal(object)

    def __init__(self, pool: QThreadPool | None = None, parent: QWidget | None = None) -> None:
        """`pool`: where reference pictures are decoded (the window's); a pool of the editor's own when None."""
        super().__init__(parent)
        self._boxes: tuple[LayoutBox, ...] = ()
        self._references: tuple[str, ...] = ()
        self._pictures: dict[str, QImage] = {}  # the listed reference pictures decoded so far
        self._marked_rows: list[int] = []  # the rows whose elements the source frame shows, in its order
        self._loader = ThumbnailLoader(pool or QThreadPool(self), _PICTURE_SIDE, self)
        self._loader.loaded.connect(self._on_picture_loaded)
        self.area = LayoutArea()
        self.area.drawn.connect(self._on_drawn)
        self.area.reshaped.connect(self._on_reshaped)
        self.area.deleted.connect(self._remove)
        self.area.opened.connect(self._describe)
        self.area.picked.connect(lambda row: self.table.setCurrentCell(row, _TEXT))
        self.area.setToolTip(self.tr("Drag in the frame to place an element of the picture, then describe it in the "
                                     "list; click a box to select it, drag the selected box to move it or its "
                                     "corners to resize it"))  # fmt: skip
        self.source_label = QLabel(objectName="layout_source_label", wordWrap=True)
        self.source_area = LayoutArea()
        self.source_area.setObjectName("layout_source_area")
        self.source_area.drawn.connect(self._on_source_drawn)
        self.source_area.reshaped.connect(lambda index, edges: self._on_source_drawn(edges))  # the selected row's
        self.source_area.picked.connect(lambda index: self.table.setCurrentCell(self._marked_rows[index], _TEXT))
        self.source_area.setToolTip(self.tr("Drag around the element on the reference picture; the rewriter moves it "
                                            "to its box in the frame above"))  # fmt: skip
        self.table = QTableWidget(0, 3, objectName="layout_table")
        self.table.setHorizontalHeaderLabels([self.tr("What it holds"), self.tr("From"), self.tr("Where")])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(_TEXT, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(_FROM, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(_WHERE, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setColumnHidden(_FROM, True)  # until there are reference pictures to take from
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
        layout.addWidget(self.source_label)
        layout.addWidget(self.source_area)
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
            self.table.setItem(row, _TEXT, QTableWidgetItem(box.description))
            self.table.setCellWidget(row, _FROM, self._origin_combo(row, box))
            where = QTableWidgetItem(_where(box))
            where.setFlags(where.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.table.setItem(row, _WHERE, where)
        self.table.blockSignals(False)
        # The origins matter with reference pictures to take from (or boxes that took from one).
        self.table.setColumnHidden(_FROM, not self._references and not any(box.reference for box in self._boxes))
        self._show_selection()

    def set_canvas_size(self, width: int, height: int) -> None:
        self.area.set_ratio(width, height)

    def set_reference_images(self, paths: Sequence[str]) -> None:
        """The job's reference pictures, in order: what a box may take its element from."""
        self._references = tuple(paths)
        self._pictures = {path: image for path, image in self._pictures.items() if path in self._references}
        for path in self._references:
            if path not in self._pictures:
                self._loader.request(path)
        self.set_boxes(self._boxes)

    @Slot(object)
    def follow_references(self, paths: Sequence[str]) -> None:
        """The user changed the reference pictures to `paths`: each box follows its picture
        (request.boxes_following_references)."""
        boxes = boxes_following_references(self._boxes, self._references, tuple(paths))
        self.set_reference_images(paths)
        if boxes != self._boxes:
            self._change(boxes)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        # The list's own Delete (not while a description is being typed: the editor has the keys then).
        if watched is self.table and event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and 0 <= self.table.currentRow():
                self.remove_selected()
                return True
        return super().eventFilter(watched, event)

    @Slot()
    def remove_selected(self) -> None:
        self._remove(self.table.currentRow())

    @Slot(int)
    def _remove(self, row: int) -> None:
        if 0 <= row < len(self._boxes):
            self._change(self._boxes[:row] + self._boxes[row + 1:])

    @Slot(int)
    def _describe(self, row: int) -> None:
        """Select box `row` with its description open for typing."""
        self.table.setCurrentCell(row, _TEXT)
        self.table.editItem(self.table.item(row, _TEXT))

    def choose_origin(self, row: int, reference: int) -> None:
        """Box `row` takes its element from reference picture `reference` (from 1), or is new content (0). A box
        newly taken from a picture starts with its element marked where the box lies, for the user to correct."""
        if not 0 <= row < len(self._boxes) or self._boxes[row].reference == reference:
            return
        box = self._boxes[row]
        if reference:
            source = box.source or (box.left, box.top, box.right, box.bottom)
            changed = replace(box, reference=reference, source=source)
        else:
            changed = replace(box, reference=0, source=None)
        self._change(self._boxes[:row] + (changed,) + self._boxes[row + 1:])
        self.table.setCurrentCell(row, _TEXT)

    def _origin_combo(self, row: int, box: LayoutBox) -> QComboBox:
        combo = QComboBox()
        combo.addItem(self.tr("New"), 0)
        for number in range(1, max(len(self._references), box.reference) + 1):
            combo.addItem(self.tr("Reference {number}").format(number=number), number)
        combo.setCurrentIndex(box.reference)
        combo.setToolTip(self.tr("New content, or an element of a reference picture moved to the box"))
        combo.currentIndexChanged.connect(lambda index: self.choose_origin(row, combo.itemData(index)))
        return combo

    @Slot(object)
    def _on_drawn(self, edges: tuple[float, float, float, float]) -> None:
        if len(self._boxes) >= MAX_LAYOUT_BOXES:
            return
        self._change(self._boxes + (LayoutBox("", *edges),))
        self._describe(len(self._boxes) - 1)

    @Slot(int, object)
    def _on_reshaped(self, row: int, edges: tuple[float, float, float, float]) -> None:
        left, top, right, bottom = edges
        changed = replace(self._boxes[row], left=left, top=top, right=right, bottom=bottom)
        self._change(self._boxes[:row] + (changed,) + self._boxes[row + 1:])

    @Slot(object)
    def _on_source_drawn(self, edges: tuple[float, float, float, float]) -> None:
        row = self.table.currentRow()
        if 0 <= row < len(self._boxes) and self._boxes[row].reference:
            changed = replace(self._boxes[row], source=edges)
            self._change(self._boxes[:row] + (changed,) + self._boxes[row + 1:])

    @Slot(str, QImage)
    def _on_picture_loaded(self, path: str, image: QImage) -> None:
        self._pictures[path] = image
        self._show_selection()

    @Slot(QTableWidgetItem)
    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        row = item.row()
        if item.column() != _TEXT or not 0 <= row < len(self._boxes):
            return
        boxes = list(self._boxes)
        boxes[row] = replace(boxes[row], description=item.text())
        self._boxes = tuple(boxes)
        self.area.set_boxes(self._boxes, row)
        self.boxes_changed.emit(self._boxes)

    def _change(self, boxes: tuple[LayoutBox, ...]) -> None:
        self.set_boxes(boxes)
        self.boxes_changed.emit(self._boxes)

    @Slot()
    def _show_selection(self) -> None:
        row = self.table.currentRow()
        self.area.set_boxes(self._boxes, row)
        self._show_source(row)
        self._update_buttons()

    def _show_source(self, row: int) -> None:
        """The reference picture the selected box takes its element from, with the elements marked on it (the
        selected one highlighted); hidden for new content."""
        box = self._boxes[row] if 0 <= row < len(self._boxes) else None
        shown = box is not None and box.reference > 0
        self.source_label.setVisible(shown)
        self.source_area.setVisible(shown)
        if box is None or not shown:
            return
        listed = box.reference <= len(self._references)
        path = self._references[box.reference - 1] if listed else ""
        if listed:
            text = self.tr("Reference {number}: mark the element to move (drag around it from outside the box, or "
                           "move the box and drag its corners)")  # fmt: skip
        else:
            text = self.tr("Reference {number} is not listed: add it under References, or choose another")
        self.source_label.setText(text.format(number=box.reference))
        self.source_area.set_picture(self._pictures.get(path))
        marked = [(index, other) for index, other in enumerate(self._boxes)
                  if other.reference == box.reference and other.source is not None]  # fmt: skip
        self._marked_rows = [index for index, _ in marked]
        self.source_area.set_boxes(tuple(LayoutBox(other.description, *other.source) for _, other in marked),
                                   self._marked_rows.index(row), [index + 1 for index in self._marked_rows])

    def _update_buttons(self) -> None:
        self.remove_button.setEnabled(0 <= self.table.currentRow() < len(self._boxes))
        self.clear_button.setEnabled(bool(self._boxes))
        self.area.setEnabled(len(self._boxes) < MAX_LAYOUT_BOXES)


def _where(box: LayoutBox) -> str:
    """The box's edges as percentages of the picture: left, top – right, bottom."""
    return f"{box.left:.0%}, {box.top:.0%} – {box.right:.0%}, {box.bottom:.0%}"
