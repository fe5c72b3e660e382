"""The window a creator lives in: it fits a 1280 x 720 screen with every panel open (history docked),
at 100, 150 and 200 % scaling, and the canvas toolbar shows only what the current mode uses and says
what a click or drag on the canvas does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QRect
from PySide6.QtWidgets import QDockWidget, QPushButton, QScrollArea, QWidget

import desktop
from desktop.app import build_main_window
from desktop.engine.errors import InvalidRequest
from desktop.engine.history import HistoryStore
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.runner import JobRunner
from desktop.ui.canvas.toolbar import MODES
from desktop.ui.main_window import MainWindow
from tests.support.fake_backend import FakeBackend

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

SCREEN_W, SCREEN_H = 1280, 720
TIMEOUT_MS = 10_000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def docked(qtbot, tmp_path: Path) -> Iterator[MainWindow]:
    """The real window as the app builds it, with its history panel docked."""
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    (paths.models / "fake-model.safetensors").write_bytes(b"")
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    writer = ImageWriter(paths.outputs)
    window, controller = build_main_window(
        paths, lambda: JobRunner(FakeBackend(steps=2), writer, desktop.__version__, store), history=store
    )
    try:
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        yield window
    finally:
        controller.shutdown()
        window.wait_for_background()
        if window.history_panel is not None:
            window.history_panel.model.wait_for_background()
        store.close_all()


def rect_in(window: QWidget, widget: QWidget) -> QRect:
    return QRect(widget.mapTo(window, widget.rect().topLeft()), widget.size())


def load_source(window: MainWindow, tmp_path: Path) -> None:
    path = tmp_path / "source.png"
    Image.new("RGB", (160, 120), (200, 90, 40)).save(path)
    assert window.canvas_toolbar.load_source_file(str(path))


# ----------------------------------------------------------------------------------------- size


def test_the_window_with_its_history_docked_fits_1280x720(qtbot, docked: MainWindow, tmp_path):
    window = docked
    dock = window.findChild(QDockWidget, "history_dock")
    assert dock is not None and dock.isVisible() and window.history_panel is not None
    for size in (window.minimumSizeHint(), window.minimumSize()):
        assert size.width() <= SCREEN_W and size.height() <= SCREEN_H, size
    load_source(window, tmp_path)
    window.resize(SCREEN_W, SCREEN_H)
    qtbot.waitUntil(lambda: (window.width(), window.height()) == (SCREEN_W, SCREEN_H), timeout=TIMEOUT_MS)
    inside = window.rect()
    generate = window.findChild(QPushButton, "generate_button")
    toolbar = window.canvas_toolbar
    for mode, _ in MODES:
        toolbar.set_mode(mode)
        qtbot.waitUntil(lambda: toolbar.height() >= toolbar.heightForWidth(toolbar.width()), timeout=TIMEOUT_MS)
        assert (window.width(), window.height()) == (SCREEN_W, SCREEN_H), mode
        assert inside.contains(rect_in(window, generate)), mode
        assert inside.contains(rect_in(window, dock)), mode
        # Every control the mode shows lies inside the toolbar (wrapped, not cut off), and the canvas
        # keeps room to paint on.
        for row in toolbar.rows.values():
            if row.isVisibleTo(toolbar):
                assert toolbar.rect().contains(QRect(row.mapTo(toolbar, row.rect().topLeft()), row.size())), mode
                for child in row.findChildren(QWidget):
                    if child.isVisibleTo(row):
                        assert row.rect().contains(QRect(child.mapTo(row, child.rect().topLeft()), child.size()))
        assert window.canvas.height() >= 200 and window.canvas.width() >= 256, mode
    # The history panel's own rows wrap too: nothing of it is cut off or scrolled sideways in its dock.
    history_scroll = window.findChild(QScrollArea, "history_scroll")
    qtbot.waitUntil(lambda: history_scroll.widget().height() >= history_scroll.widget().minimumSizeHint().height(),
                    timeout=TIMEOUT_MS)
    assert history_scroll.horizontalScrollBar().maximum() == 0, window.history_panel.minimumSizeHint()


# The child builds the window under QT_SCALE_FACTOR and reports sizes in logical pixels.
_CHILD = """
import json, sys, tempfile
from pathlib import Path
from PySide6.QtWidgets import QApplication, QDockWidget, QPushButton
app = QApplication([])
from desktop.app import build_main_window
from desktop.engine.history import HistoryStore
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.runner import JobRunner
from tests.support.fake_backend import FakeBackend
paths = AppPaths.for_root(Path(sys.argv[1])).ensure()
store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
runner = lambda: JobRunner(FakeBackend(steps=2), ImageWriter(paths.outputs), "0", store)
window, controller = build_main_window(paths, runner, history=store)
window.show()
window.resize(1280, 720)
for _ in range(20):
    app.processEvents()
button = window.findChild(QPushButton, "generate_button")
corner = button.mapTo(window, button.rect().topLeft())
hint, minimum = window.minimumSizeHint(), window.minimumSize()
print(json.dumps({
    "ratio": window.devicePixelRatioF(),
    "docked": window.findChild(QDockWidget, "history_dock").isVisible(),
    "minimum_hint": [hint.width(), hint.height()],
    "minimum": [minimum.width(), minimum.height()],
    "size": [window.width(), window.height()],
    "generate": [corner.x(), corner.y(), button.width(), button.height()],
}))
controller.shutdown()
window.wait_for_background()
window.history_panel.model.wait_for_background()
store.close_all()
"""


@pytest.mark.parametrize("scale", ["1", "1.5", "2"])
def test_the_window_fits_1280x720_logical_pixels_at_every_scale(tmp_path, scale):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_SCALE_FACTOR=scale, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "home")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ratio"] == pytest.approx(float(scale)) and report["docked"]
    for key in ("minimum_hint", "minimum"):
        width, height = report[key]
        assert width <= SCREEN_W and height <= SCREEN_H, (key, report)
    assert report["size"] == [SCREEN_W, SCREEN_H], report
    x, y, width, height = report["generate"]
    assert x >= 0 and y >= 0 and x + width <= SCREEN_W and y + height <= SCREEN_H, report


# ----------------------------------------------------------------------------------------- modes


def mode_controls(window: MainWindow) -> dict[str, list[QWidget]]:
    toolbar = window.canvas_toolbar
    return {
        "source": [toolbar.use_source_button, toolbar.source_label],
        "strength": [toolbar.strength_slider, toolbar.resize_combo],
        "tools": [*toolbar.tool_buttons.values(), toolbar.size_spin, toolbar.hardness_slider, toolbar.invert_button],
        "mask": [toolbar.blur_spin, toolbar.area_combo, toolbar.padding_spin, toolbar.load_mask_button],
        "outpaint": [*toolbar.outpaint_spins.values(), toolbar.outpaint_button],
    }


EXPECTED_CONTROLS = {
    "txt2img": set(),
    "img2img": {"source", "strength"},
    "inpaint": {"source", "strength", "tools", "mask"},
    "outpaint": {"source", "outpaint"},
}


@pytest.mark.parametrize("mode", list(EXPECTED_CONTROLS))
def test_each_mode_shows_exactly_its_controls(qtbot, docked: MainWindow, tmp_path, mode):
    load_source(docked, tmp_path)
    toolbar = docked.canvas_toolbar
    for other in EXPECTED_CONTROLS:  # arriving from every other mode leaves nothing behind
        toolbar.set_mode(other)
        toolbar.set_mode(mode)
        assert toolbar.mode == mode
        for group, widgets in mode_controls(docked).items():
            shown = [widget.isVisibleTo(docked) for widget in widgets]
            assert shown == [group in EXPECTED_CONTROLS[mode]] * len(widgets), (other, mode, group)


def test_outpaint_mode_extends_then_inpaints_the_new_area(qtbot, docked: MainWindow, tmp_path):
    load_source(docked, tmp_path)
    toolbar = docked.canvas_toolbar
    toolbar.set_mode("outpaint")
    request = GenerationRequest(prompt="a fox", model="fake-model")
    with pytest.raises(InvalidRequest, match="press Extend"):
        toolbar.edit_request(request, tmp_path / "inputs")
    toolbar.outpaint_spins["right"].setValue(64)
    toolbar.outpaint_button.click()
    assert toolbar.mode == "inpaint" and toolbar.source is not None and toolbar.source.width() == 160 + 64
    assert toolbar.blur_spin.isVisibleTo(docked) and not toolbar.outpaint_button.isVisibleTo(docked)
    assert toolbar.edit_request(request, tmp_path / "inputs").mask is not None


# ------------------------------------------------------------------------------------------ hint


def test_the_hint_says_what_the_canvas_does_in_each_mode_and_tool(qtbot, docked: MainWindow, tmp_path):
    toolbar, canvas = docked.canvas_toolbar, docked.canvas
    assert toolbar.hint_label.isVisibleTo(docked)
    assert toolbar.hint.startswith("Text to image: the canvas shows")
    toolbar.set_mode("img2img")
    assert "Use as source" in toolbar.hint  # no source yet: the hint says how to get one
    load_source(docked, tmp_path)
    assert toolbar.hint.startswith("Image to image") and "0.75" in toolbar.hint
    toolbar.strength_slider.setValue(40)
    assert "0.40" in toolbar.hint
    toolbar.set_mode("inpaint")
    assert canvas.tool == "pan" and "Brush" in toolbar.hint and "moves the view" in toolbar.hint
    toolbar.tool_buttons["brush"].click()
    assert toolbar.hint == "Drag to paint the area to repaint (brush 32 px)."
    toolbar.size_spin.setValue(48)
    assert toolbar.hint == "Drag to paint the area to repaint (brush 48 px)."
    toolbar.tool_buttons["eraser"].click()
    assert toolbar.hint == "Drag to erase from the area to repaint (eraser 48 px)."
    toolbar.set_mode("outpaint")
    # Leaving inpainting puts the brush down: a drag moves the view again, as the hint says.
    assert canvas.tool == "pan" and toolbar.tool_buttons["pan"].isChecked()
    assert toolbar.hint.startswith("Outpaint") and "Extend" in toolbar.hint
    toolbar.set_mode("txt2img")
    assert toolbar.hint.startswith("Text to image")


def test_a_long_source_name_is_shortened_not_widening_the_window(qtbot, docked: MainWindow, tmp_path):
    window = docked
    window.resize(SCREEN_W, SCREEN_H)
    qtbot.waitUntil(lambda: window.width() == SCREEN_W, timeout=TIMEOUT_MS)
    name = "a very long file name " * 8 + ".png"
    path = tmp_path / name
    Image.new("RGB", (64, 48), (10, 200, 30)).save(path)
    assert window.canvas_toolbar.load_source_file(str(path))
    label = window.canvas_toolbar.source_label
    assert window.minimumSizeHint().width() <= SCREEN_W and window.width() == SCREEN_W
    assert name in label.text() and label.toolTip() == label.text()
    shown = label.elided_text()
    assert "…" in shown and label.fontMetrics().horizontalAdvance(shown) <= label.contentsRect().width()
