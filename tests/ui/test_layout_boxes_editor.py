"""FLUX.3's layout boxes in the window (desktop/ui/layout_boxes_editor.py): drawn by dragging on the frame, described
in the list, carried by the job while rewriting is on for a FLUX.3 model, kept across sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QLineEdit

from desktop.engine.request import LayoutBox
from desktop.ui.layout_boxes_editor import LayoutBoxesEditor
from desktop.ui.parameter_model import Parameters
from desktop.ui.session_memory import parameters_from_json, parameters_to_json
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import TIMEOUT_MS
from tests.ui.test_flux_panel import flux3_and_sd_models
from tests.ui.test_session_memory import pick
from tests.ui.test_settings_and_logs import close_window, open_window


def at(editor: LayoutBoxesEditor, x: float, y: float, area=None) -> QPoint:
    """The point of the frame (the editor's first, or `area`'s) at these fractions of it."""
    frame = (area or editor.area).frame()
    return QPoint(round(frame.left() + x * frame.width()), round(frame.top() + y * frame.height()))


def drag(editor: LayoutBoxesEditor, start: QPoint, end: QPoint, area=None) -> None:
    area = area or editor.area
    QTest.mousePress(area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    QTest.mouseMove(area, end)
    QTest.mouseRelease(area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)


def describe(editor: LayoutBoxesEditor, text: str) -> None:
    """Type into the description the drawing opened for editing, and commit it."""
    QApplication.processEvents()
    (typing,) = editor.table.viewport().findChildren(QLineEdit)
    QTest.keyClicks(typing, text)
    QTest.keyClick(typing, Qt.Key.Key_Return)
    QApplication.processEvents()


@pytest.fixture
def editor(qtbot):
    widget = LayoutBoxesEditor()
    widget.resize(300, 420)
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_a_dragged_box_is_listed_where_it_was_drawn_and_described(editor, qtbot):
    editor.set_canvas_size(1024, 512)
    frame = editor.area.frame()
    assert frame.width() == pytest.approx(2 * frame.height(), abs=0.01)  # the picture's ratio
    emitted = []
    editor.boxes_changed.connect(emitted.append)
    drag(editor, at(editor, 0.5, 0.9), at(editor, 0.1, 0.2))  # drawn up and to the left: the same box
    (box,) = editor.boxes()
    tolerance = 1.5 / frame.height()  # a pixel of the frame
    assert box.left == pytest.approx(0.1, abs=tolerance) and box.right == pytest.approx(0.5, abs=tolerance)
    assert box.top == pytest.approx(0.2, abs=tolerance) and box.bottom == pytest.approx(0.9, abs=tolerance)
    assert box.description == "" and editor.table.item(0, 2).text() == "10%, 20% – 50%, 90%"
    assert editor.table.isColumnHidden(1)  # "From": no reference pictures to take from
    describe(editor, "a red fox sitting")
    assert editor.boxes()[0].description == "a red fox sitting"
    assert emitted[-1] == editor.boxes() and len(emitted) == 2
    # A drag past the frame stops at its edge; a click, or one starting outside the frame, draws nothing.
    drag(editor, at(editor, 0.6, 0.1), at(editor, 1.4, 0.5))
    assert editor.boxes()[1].right == 1.0 and editor.boxes()[1].left == pytest.approx(0.6, abs=tolerance)
    describe(editor, "a moon")
    QTest.mouseClick(editor.area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.3, 0.3))
    drag(editor, QPoint(1, 1), at(editor, 0.5, 0.5))  # the frame is 2:1 in a taller area: (1, 1) is above it
    assert len(editor.boxes()) == 2
    # A click in a box selects its row; where boxes overlap, the topmost (the last listed).
    def click(x: float, y: float) -> int:
        QTest.mouseClick(editor.area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, x, y))
        return editor.table.currentRow()

    assert click(0.2, 0.8) == 0 and click(0.9, 0.3) == 1 and click(0.2, 0.8) == 0
    drag(editor, at(editor, 0.7, 0.2), at(editor, 0.8, 0.4))  # a third box inside the moon's
    describe(editor, "a bat")
    assert click(0.9, 0.45) == 1 and click(0.75, 0.3) == 2 and len(editor.boxes()) == 3
    # Delete in the list removes the selected box.
    QTest.keyClick(editor.table, Qt.Key.Key_Delete)
    assert len(editor.boxes()) == 2 and emitted[-1] == editor.boxes()
    editor.table.setCurrentCell(0, 0)
    editor.remove_button.click()
    assert [box.description for box in editor.boxes()] == ["a moon"] and emitted[-1] == editor.boxes()
    editor.clear_button.click()
    assert editor.boxes() == () and emitted[-1] == () and not editor.clear_button.isEnabled()


def pictures(folder: Path) -> tuple[str, str]:
    """A wide red reference picture and a tall blue one."""
    from PIL import Image

    wide, tall = folder / "wide.png", folder / "tall.png"
    Image.new("RGB", (200, 100), (255, 0, 0)).save(wide)
    Image.new("RGB", (60, 120), (0, 0, 255)).save(tall)
    return str(wide), str(tall)


def test_a_box_takes_its_element_from_a_reference_picture(editor, qtbot, tmp_path: Path):
    from PIL import Image

    editor.set_reference_images(pictures(tmp_path))
    assert not editor.table.isColumnHidden(1) and not editor.source_area.isVisible()
    drag(editor, at(editor, 0.5, 0.5), at(editor, 0.9, 0.9))
    describe(editor, "the cup")
    emitted = []
    editor.boxes_changed.connect(emitted.append)
    combo = editor.table.cellWidget(0, 1)
    assert [combo.itemText(index) for index in range(combo.count())] == ["New", "Reference 1", "Reference 2"]
    combo.setCurrentIndex(2)
    editor.choose_origin(0, 2)  # the same again: no edit
    (box,) = editor.boxes()
    # Taken from reference 2, its element marked at first where the box lies, for the user to correct.
    assert (box.reference, box.source) == (2, (box.left, box.top, box.right, box.bottom)) and emitted == [(box,)]
    assert editor.source_area.isVisible() and editor.source_label.text().startswith("Reference 2:")
    area = editor.source_area
    qtbot.waitUntil(area.has_picture, timeout=TIMEOUT_MS)  # decoded on the pool
    frame = area.frame()
    assert frame.height() == pytest.approx(2 * frame.width(), abs=0.01)  # the tall picture's ratio
    outside = area.grab().toImage().pixelColor(at(editor, 0.2, 0.1, area))  # the picture, outside the boxes
    assert (outside.red(), outside.green(), outside.blue()) == (0, 0, 255)
    assert area.boxes() == (LayoutBox("the cup", *box.source),)
    drag(editor, at(editor, 0.1, 0.2, area), at(editor, 0.6, 0.4, area), area)
    (moved,) = editor.boxes()
    tolerance = 1.5 / frame.width()
    assert moved.source == pytest.approx((0.1, 0.2, 0.6, 0.4), abs=tolerance) and emitted[-1] == (moved,)
    assert (moved.left, moved.top, moved.right, moved.bottom) == (box.left, box.top, box.right, box.bottom)
    drag(editor, at(editor, 0.3, 0.3, area), at(editor, 0.4, 0.3, area), area)  # the marked element moved
    assert editor.boxes()[0].source == pytest.approx((0.2, 0.2, 0.7, 0.4), abs=tolerance)
    moved = editor.boxes()[0]
    describe_again = editor.table.item(0, 0)
    describe_again.setText("the red cup")  # a description edit keeps where the element comes from
    assert editor.boxes()[0] == LayoutBox("the red cup", box.left, box.top, box.right, box.bottom, 2, moved.source)
    # A second box from reference 2 is marked on it too, numbered as listed; one from reference 1 is not.
    drag(editor, at(editor, 0.05, 0.05), at(editor, 0.3, 0.3))
    describe(editor, "a spoon")
    editor.table.cellWidget(1, 1).setCurrentIndex(1)
    assert editor.source_label.text().startswith("Reference 1:") and len(area.boxes()) == 1
    qtbot.waitUntil(lambda: area.frame().width() == pytest.approx(2 * area.frame().height(), abs=0.01),
                    timeout=TIMEOUT_MS)  # fmt: skip
    editor.table.cellWidget(1, 1).setCurrentIndex(2)
    assert [b.description for b in area.boxes()] == ["the red cup", "a spoon"] and area.numbers() == (1, 2)
    assert area.selected() == 1
    # A click on an element marked on the picture selects its row.
    QTest.mouseClick(area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.5, 0.35, area))
    assert editor.table.currentRow() == 0 and area.selected() == 0
    QTest.mouseClick(area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.1, 0.1, area))
    assert editor.table.currentRow() == 1 and area.selected() == 1
    # Back to new content: no source, the picture's frame hidden.
    editor.table.cellWidget(0, 1).setCurrentIndex(0)
    assert (editor.boxes()[0].reference, editor.boxes()[0].source) == (0, None)
    assert not editor.source_area.isVisible()
    editor.table.setCurrentCell(1, 0)
    assert area.boxes() == (LayoutBox("a spoon", *editor.boxes()[1].source),) and area.numbers() == (2,)  # as listed
    # A reference no longer listed is named, and the box keeps it (the job then says what is wrong).
    editor.set_reference_images(())
    assert editor.boxes()[1].reference == 2 and "not listed" in editor.source_label.text()
    assert editor.table.cellWidget(1, 1).currentText() == "Reference 2" and not editor.table.isColumnHidden(1)
    assert not area.has_picture()
    # Listed again as another file: its picture comes when decoded, and the frame shows it.
    other = tmp_path / "other.png"
    Image.new("RGB", (90, 90), (0, 255, 0)).save(other)
    editor.set_reference_images((pictures(tmp_path)[0], str(other)))
    qtbot.waitUntil(area.has_picture, timeout=TIMEOUT_MS)
    assert area.frame().width() == pytest.approx(area.frame().height(), abs=0.01)


def test_the_selected_box_moves_and_resizes_by_dragging(editor):
    editor.set_canvas_size(1024, 512)
    fox, moon = LayoutBox("a fox", 0.1, 0.2, 0.5, 0.9), LayoutBox("a moon", 0.6, 0.1, 0.9, 0.5)
    editor.set_boxes((fox, moon))
    editor.table.setCurrentCell(0, 0)
    emitted = []
    editor.boxes_changed.connect(emitted.append)
    frame = editor.area.frame()
    tolerance = 1.5 / frame.height()

    def edges(row: int) -> tuple[float, ...]:
        box = editor.boxes()[row]
        return box.left, box.top, box.right, box.bottom

    # A drag inside a box that is not selected draws a box in it; the moon stays.
    drag(editor, at(editor, 0.65, 0.15), at(editor, 0.8, 0.3))
    describe(editor, "a bat")
    assert len(editor.boxes()) == 3 and editor.boxes()[1] == moon
    editor.table.setCurrentCell(0, 0)
    # Moved by a drag from inside it, the same size; the other boxes and the selection stay.
    drag(editor, at(editor, 0.3, 0.5), at(editor, 0.4, 0.4))
    assert edges(0) == pytest.approx((0.2, 0.1, 0.6, 0.8), abs=tolerance) and editor.boxes()[0].description == "a fox"
    assert editor.boxes()[1:] == emitted[-1][1:] and emitted[-1] == editor.boxes() and editor.table.currentRow() == 0
    assert editor.table.item(0, 2).text() == "20%, 10% – 60%, 80%"
    # Moved past the frame, it stops at its edge, its size kept.
    drag(editor, at(editor, 0.4, 0.4), at(editor, 1.5, 0.2))
    assert edges(0) == pytest.approx((0.6, 0.0, 1.0, 0.7), abs=tolerance)
    # Resized by a corner; a corner dragged past the opposite edge turns the box over.
    QTest.mouseMove(editor.area, at(editor, 0.6, 0.0))
    assert editor.area.cursor().shape() == Qt.CursorShape.SizeFDiagCursor
    drag(editor, at(editor, 0.6, 0.0), at(editor, 0.5, 0.1))
    assert edges(0) == pytest.approx((0.5, 0.1, 1.0, 0.7), abs=tolerance)
    drag(editor, at(editor, 0.5, 0.7), at(editor, 0.45, 0.95))  # the bottom left corner
    assert edges(0) == pytest.approx((0.45, 0.1, 1.0, 0.95), abs=tolerance)
    drag(editor, at(editor, 0.45, 0.1), at(editor, 0.45, 1.0))  # the top left one, past the bottom
    assert edges(0) == pytest.approx((0.45, 0.95, 1.0, 1.0), abs=tolerance)
    drag(editor, at(editor, 1.0, 0.95), at(editor, 0.452, 0.95))  # to nothing: the box stays as it was
    assert edges(0) == pytest.approx((0.45, 0.95, 1.0, 1.0), abs=tolerance)
    corner = at(editor, 1.0, 0.95) + QPoint(4, -4)  # a press a little off the corner still holds it
    drag(editor, corner, at(editor, 0.3, 0.5) + QPoint(4, -4))  # past the left edge: turned over
    assert edges(0) == pytest.approx((0.3, 0.5, 0.45, 1.0), abs=tolerance)
    drag(editor, at(editor, 0.3, 0.5), at(editor, 0.2, -0.5))  # past the top of the frame: stops there
    assert edges(0) == pytest.approx((0.2, 0.0, 0.45, 1.0), abs=tolerance)
    # While dragged, the box is drawn where it would go.
    QTest.mousePress(editor.area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.3, 0.5))
    QTest.mouseMove(editor.area, at(editor, 0.55, 0.5))
    tinted = editor.area.grab().toImage().pixelColor(at(editor, 0.6, 0.7))
    QTest.mouseRelease(editor.area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.55, 0.5))
    assert tinted.red() < tinted.blue() and edges(0) == pytest.approx((0.45, 0.0, 0.7, 1.0), abs=tolerance)
    # A click inside the selected box changes nothing; the cursor says a drag there moves it.
    count = len(emitted)
    QTest.mouseMove(editor.area, at(editor, 0.55, 0.6))
    assert editor.area.cursor().shape() == Qt.CursorShape.SizeAllCursor
    QTest.mouseClick(editor.area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.55, 0.6))
    assert len(emitted) == count and editor.table.currentRow() == 0
    QTest.mouseMove(editor.area, at(editor, 0.2, 0.5))
    assert editor.area.cursor().shape() == Qt.CursorShape.CrossCursor
    # The arrow keys move it a hundredth of the frame, a tenth with Shift, stopping at the frame's edges.
    assert editor.area.focusPolicy() == Qt.FocusPolicy.StrongFocus
    QTest.keyClick(editor.area, Qt.Key.Key_Right)
    assert edges(0) == pytest.approx((0.46, 0.0, 0.71, 1.0), abs=tolerance) and emitted[-1] == editor.boxes()
    count = len(emitted)
    QTest.keyClick(editor.area, Qt.Key.Key_Down, Qt.KeyboardModifier.ShiftModifier)  # as tall as the frame
    assert len(emitted) == count
    QTest.keyClick(editor.area, Qt.Key.Key_Left, Qt.KeyboardModifier.ShiftModifier)
    assert edges(0) == pytest.approx((0.36, 0.0, 0.61, 1.0), abs=tolerance)
    for _ in range(5):
        QTest.keyClick(editor.area, Qt.Key.Key_Left, Qt.KeyboardModifier.ShiftModifier)
    assert edges(0) == pytest.approx((0.0, 0.0, 0.25, 1.0), abs=tolerance)
    # Dragged further out of the frame's corner, it cannot follow: nothing changes, nothing is drawn.
    count = len(emitted)
    drag(editor, at(editor, 0.1, 0.5), at(editor, -0.5, 0.9))
    assert len(emitted) == count and len(editor.boxes()) == 3
    editor.table.setCurrentCell(1, 0)
    QTest.keyClick(editor.area, Qt.Key.Key_Up)
    assert edges(1) == pytest.approx((0.6, 0.09, 0.9, 0.49), abs=tolerance)
    assert edges(0) == pytest.approx((0.0, 0.0, 0.25, 1.0), abs=tolerance)
    # Escape drops a drag under way: the box stays, nothing is drawn.
    count = len(emitted)
    QTest.mousePress(editor.area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.7, 0.4))
    QTest.mouseMove(editor.area, at(editor, 0.4, 0.8))
    QTest.keyClick(editor.area, Qt.Key.Key_Escape)
    QTest.mouseRelease(editor.area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.4, 0.8))
    assert len(emitted) == count and edges(1) == pytest.approx((0.6, 0.09, 0.9, 0.49), abs=tolerance)
    # A double click on a box opens its description; Delete in the frame removes the selected box.
    editor.table.setCurrentCell(0, 0)
    QTest.mouseDClick(editor.area, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(editor, 0.85, 0.4))
    assert editor.table.currentRow() == 1
    describe(editor, "a full moon")
    assert editor.boxes()[1].description == "a full moon"
    editor.table.setCurrentCell(2, 0)
    QTest.keyClick(editor.area, Qt.Key.Key_Delete)
    assert [box.description for box in editor.boxes()] == ["a fox", "a full moon"] and emitted[-1] == editor.boxes()


def test_a_picture_listed_again_is_read_again(editor, qtbot, tmp_path: Path):
    from PIL import Image

    path = tmp_path / "cup.png"
    Image.new("RGB", (80, 80), (255, 0, 0)).save(path)
    editor.set_reference_images([str(path)])
    editor.set_boxes((LayoutBox("the cup", 0.2, 0.2, 0.4, 0.4, reference=1, source=(0.2, 0.2, 0.4, 0.4)),))
    editor.table.setCurrentCell(0, 0)
    area = editor.source_area
    qtbot.waitUntil(area.has_picture, timeout=TIMEOUT_MS)
    assert area.grab().toImage().pixelColor(at(editor, 0.8, 0.8, area)).red() == 255
    # Removed, changed on disk, listed again: the picture shown is the file as it is now.
    editor.set_reference_images([])
    Image.new("RGB", (80, 80), (0, 255, 0)).save(path)
    editor.set_reference_images([str(path)])
    qtbot.waitUntil(lambda: area.grab().toImage().pixelColor(at(editor, 0.8, 0.8, area)).green() == 255,
                    timeout=TIMEOUT_MS)  # fmt: skip


def test_boxes_set_from_a_recipe_are_shown_without_an_edit(editor):
    emitted = []
    editor.boxes_changed.connect(emitted.append)
    boxes = (LayoutBox("a fox", 0.1, 0.2, 0.5, 0.9), LayoutBox("a moon", 0.7, 0.05, 0.9, 0.25))
    editor.set_boxes(boxes)
    assert editor.boxes() == boxes and emitted == []
    assert [editor.table.item(row, 0).text() for row in range(2)] == ["a fox", "a moon"]
    # A tall picture's frame fits the area's height, not its width.
    editor.set_canvas_size(512, 1024)
    frame = editor.area.frame()
    assert frame.height() == pytest.approx(2 * frame.width(), abs=0.01)
    assert frame.top() >= 0 and frame.bottom() <= editor.area.height() and frame.width() < editor.area.width() / 2
    assert editor.area.box_rect(boxes[1]).left() == pytest.approx(
        editor.area.frame().left() + 0.7 * editor.area.frame().width())


def test_the_window_carries_the_boxes_while_flux3_rewrites(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    flux3_and_sd_models(home)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    editor = panel.layout_editor
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-flux3") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-flux3")
        qtbot.waitUntil(lambda: panel.rewrite_check.isVisibleTo(panel), timeout=TIMEOUT_MS)
        assert not editor.isVisibleTo(panel)  # rewriting is off
        panel.rewrite_check.setChecked(True)
        assert editor.isVisibleTo(panel) and panel.layout_label.isVisibleTo(panel)
        panel.width_spin.setValue(768)
        panel.height_spin.setValue(512)
        frame = editor.area.frame()
        assert frame.width() == pytest.approx(1.5 * frame.height(), abs=0.01)
        drag(editor, at(editor, 0.25, 0.25), at(editor, 0.75, 0.75))
        describe(editor, "a lighthouse")
        (box,) = panel.model.value("layout_boxes")
        assert box.description == "a lighthouse" and box.left == pytest.approx(0.25, abs=0.01)
        request = window.current_request().validate()
        assert request.layout_boxes == (box,) and request.rewrite_prompt
        # Rewriting off, or another model: the boxes are hidden and left out of the job, and kept.
        panel.rewrite_check.setChecked(False)
        assert not editor.isVisibleTo(panel)
        assert window.current_request().validate().layout_boxes == ()
        panel.rewrite_check.setChecked(True)
        pick(panel.model_combo, "zz-sd1-model")
        qtbot.waitUntil(lambda: not panel.rewrite_check.isVisibleTo(panel), timeout=TIMEOUT_MS)
        assert not editor.isVisibleTo(panel) and window.current_request().validate().layout_boxes == ()
        pick(panel.model_combo, "zz-flux3")
        qtbot.waitUntil(lambda: editor.isVisibleTo(panel), timeout=TIMEOUT_MS)
        assert window.current_request().layout_boxes == (box,)
        # A recipe's boxes are shown.
        recipe = (LayoutBox("a boat", 0, 0.5, 0.4, 1.0),)
        panel.model.update(layout_boxes=recipe)
        assert editor.boxes() == recipe and editor.table.item(0, 0).text() == "a boat"
        # With reference pictures (an edit), a box takes its element from one; the job carries it.
        assert editor.table.isColumnHidden(1)
        panel.references_row.add_images(pictures(tmp_path))
        assert not editor.table.isColumnHidden(1)
        editor.table.cellWidget(0, 1).setCurrentIndex(2)
        request = window.current_request().validate()
        assert request.layout_boxes == (LayoutBox("a boat", 0, 0.5, 0.4, 1.0, 2, (0, 0.5, 0.4, 1.0)),)
        assert request.reference_images == pictures(tmp_path)
        # The box follows its picture when the pictures change: renumbered when one before it goes, new content
        # when its own goes (its number would name another picture).
        panel.references_row.list.setCurrentRow(0)
        panel.references_row.remove_selected()
        request = window.current_request().validate()
        assert request.layout_boxes == (LayoutBox("a boat", 0, 0.5, 0.4, 1.0, 1, (0, 0.5, 0.4, 1.0)),)
        assert editor.table.cellWidget(0, 1).currentText() == "Reference 1"
        panel.references_row.add_images(pictures(tmp_path)[:1])  # after it: its number stays
        assert panel.model.value("layout_boxes")[0].reference == 1
        panel.references_row.list.setCurrentRow(0)
        panel.references_row.remove_selected()
        assert window.current_request().validate().layout_boxes == (LayoutBox("a boat", 0, 0.5, 0.4, 1.0),)
    finally:
        close_window(window, controller)


def test_boxes_follow_their_pictures_across_a_restart(qtbot, tmp_path: Path) -> None:
    """A reference picture deleted since the last close is left out: the box that took from it becomes new content,
    and one taking from a picture after it keeps that picture under its new number."""
    home = tmp_path / "home"
    flux3_and_sd_models(home)
    gone, kept = pictures(tmp_path)
    cup = LayoutBox("the cup", 0.5, 0.5, 0.9, 0.9, reference=2, source=(0.1, 0.1, 0.3, 0.3))
    hat = LayoutBox("the hat", 0.1, 0.1, 0.3, 0.3, reference=1, source=(0.5, 0.5, 0.7, 0.7))
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-flux3") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-flux3")
        panel.rewrite_check.setChecked(True)
        panel.references_row.add_images([gone, kept])
        panel.model.update(layout_boxes=(cup, hat))
        assert window.current_request().validate().layout_boxes == (cup, hat)
    finally:
        close_window(window, controller)
    Path(gone).unlink()
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2), model="zz-flux3")
    try:
        request = window.current_request().validate()
        assert request.reference_images == (kept,) and gone in window.message_bar.text()
        assert request.layout_boxes == (LayoutBox("the cup", 0.5, 0.5, 0.9, 0.9, 1, (0.1, 0.1, 0.3, 0.3)),
                                        LayoutBox("the hat", 0.1, 0.1, 0.3, 0.3))  # fmt: skip
        assert window.parameter_panel.layout_editor.boxes() == request.layout_boxes
    finally:
        close_window(window, controller)


def test_the_frame_has_the_ratio_of_the_panels_size_from_the_start(qtbot):
    from desktop.ui.parameter_model import ParameterModel
    from desktop.ui.parameter_panel import ParameterPanel

    panel = ParameterPanel(ParameterModel(Parameters(width=1024, height=512)))
    qtbot.addWidget(panel)
    panel.layout_editor.resize(300, 400)
    frame = panel.layout_editor.area.frame()
    assert frame.width() == pytest.approx(2 * frame.height(), abs=0.01)


def test_the_boxes_are_kept_across_sessions_and_damaged_ones_are_dropped():
    boxes = (LayoutBox("a fox", 0.1, 0.2, 0.5, 0.9), LayoutBox("", 0.7, 0.05, 0.9, 0.25),
             LayoutBox("a cup", 0.5, 0.5, 0.9, 0.9, reference=1, source=(0.1, 0.1, 0.3, 0.3)))  # fmt: skip
    base = Parameters()
    stored = json.loads(json.dumps(parameters_to_json(Parameters(layout_boxes=boxes))))
    assert parameters_from_json(stored, base).layout_boxes == boxes  # a box not yet described is kept
    for damaged in ("x", [{"description": "a"}], [{**stored["layout_boxes"][0], "left": 7}],
                    [{**stored["layout_boxes"][0], "top": True}], [{**stored["layout_boxes"][0], "description": 3}],
                    [{**stored["layout_boxes"][2], "source": [0.1, 0.1, 0.3]}],
                    [{**stored["layout_boxes"][2], "reference": 0}]):
        assert parameters_from_json({"layout_boxes": damaged}, base).layout_boxes == ()
