"""The mask canvas, driven with simulated mouse and keyboard input, and an inpaint job from the window."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtWidgets import QVBoxLayout, QWidget

from desktop.engine.imaging import Margins, blur_mask
from desktop.engine.metadata import parse_parameters, read_text_chunks
from desktop.engine.paths import AppPaths
from desktop.ui.canvas import CanvasToolbar, MaskCanvas
from desktop.ui.canvas import toolbar as toolbar_module
from desktop.ui.canvas.picture_view import array_to_qimage, png_bytes
from tests.support.real_window import real_window as open_real_window

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

SIZE = 256
REAL_TIMEOUT_MS = 180_000


def noise_png(path, width: int, height: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def editor(qtbot, tmp_path) -> Iterator[tuple[MaskCanvas, CanvasToolbar]]:
    host = QWidget()
    canvas = MaskCanvas()
    toolbar = CanvasToolbar(canvas)
    layout = QVBoxLayout(host)
    layout.addWidget(toolbar)
    layout.addWidget(canvas, 1)
    qtbot.addWidget(host)
    host.resize(900, 700)
    host.show()
    qtbot.waitExposed(host)
    host.activateWindow()
    qtbot.waitUntil(host.isActiveWindow, timeout=5000)
    assert toolbar.load_source_file(str(noise_png(tmp_path / "source.png", SIZE, SIZE)))
    yield canvas, toolbar


def at_zoom(canvas: MaskCanvas, zoom: float) -> None:
    canvas.show_actual_size()
    canvas.zoom_by(zoom)
    canvas.centerOn(QPointF(SIZE / 2, SIZE / 2))
    assert canvas.zoom == pytest.approx(zoom)


def view_pos(canvas: MaskCanvas, x: float, y: float) -> QPoint:
    """Where image pixel (x, y)'s centre is on the screen."""
    return canvas.mapFromScene(QPointF(x + 0.5, y + 0.5))


def stroke(qtbot, canvas: MaskCanvas, points: list[tuple[float, float]]) -> None:
    viewport = canvas.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=view_pos(canvas, *points[0]))
    for point in points[1:]:
        qtbot.mouseMove(viewport, view_pos(canvas, *point))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=view_pos(canvas, *points[-1]))


def mask(canvas: MaskCanvas) -> np.ndarray:
    assert canvas.mask_layer is not None
    return canvas.mask_layer.values()


def pick_brush(toolbar: CanvasToolbar, size: int = 10, hardness: int = 100, tool: str = "brush") -> None:
    toolbar.size_spin.setValue(size)
    toolbar.hardness_slider.setValue(hardness)
    toolbar.tool_buttons[tool].click()


@pytest.mark.parametrize("zoom", [0.5, 1.0, 2.0])
def test_a_stroke_lands_where_the_pointer_went(qtbot, editor, zoom):
    canvas, toolbar = editor
    at_zoom(canvas, zoom)
    pick_brush(toolbar, size=10)
    assert canvas.tool == "brush" and toolbar.mode == "inpaint"
    stroke(qtbot, canvas, [(100, 120), (125, 120), (150, 120)])
    values = mask(canvas)
    # One screen pixel is 1/zoom image pixels: that is how precisely a pointer can aim.
    slack = 1 + 1 / zoom
    ys, xs = np.nonzero(values > 127)
    assert abs(xs.min() - (100 - 5)) <= slack and abs(xs.max() - (150 + 5)) <= slack
    assert abs(ys.min() - (120 - 5)) <= slack and abs(ys.max() - (120 + 5)) <= slack
    assert (values[120, 100:151] == 255).all()  # no gaps along the path
    assert values[:100].max() == 0 and values[140:].max() == 0


def test_undo_and_redo_every_stroke_with_the_keyboard(qtbot, editor):
    canvas, toolbar = editor
    at_zoom(canvas, 1.0)
    pick_brush(toolbar, size=12)
    stroke(qtbot, canvas, [(60, 60), (90, 60)])
    first = mask(canvas)
    stroke(qtbot, canvas, [(60, 180), (90, 180)])
    both = mask(canvas)
    assert first[180, 75] == 0 and both[180, 75] == 255 and both[60, 75] == 255
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(mask(canvas), first)
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not mask(canvas).any()
    shift_ctrl = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(canvas, Qt.Key.Key_Z, shift_ctrl)
    qtbot.keyClick(canvas, Qt.Key.Key_Z, shift_ctrl)
    assert np.array_equal(mask(canvas), both)


def test_eraser_soft_brush_invert_clear_and_fill(qtbot, editor):
    canvas, toolbar = editor
    at_zoom(canvas, 1.0)
    qtbot.mouseClick(toolbar.fill_button, Qt.MouseButton.LeftButton)
    assert (mask(canvas) == 255).all()
    pick_brush(toolbar, size=20, tool="eraser")
    stroke(qtbot, canvas, [(128, 128)])
    assert mask(canvas)[128, 128] == 0 and mask(canvas)[128, 150] == 255
    painted = mask(canvas)
    qtbot.mouseClick(toolbar.invert_button, Qt.MouseButton.LeftButton)
    assert np.array_equal(mask(canvas), 255 - painted)
    qtbot.mouseClick(toolbar.clear_button, Qt.MouseButton.LeftButton)
    assert not mask(canvas).any()
    canvas.undo_stack.undo()
    assert np.array_equal(mask(canvas), 255 - painted)
    canvas.undo_stack.undo()
    assert np.array_equal(mask(canvas), painted)
    # A soft brush fades towards its edge instead of stopping hard.
    qtbot.mouseClick(toolbar.clear_button, Qt.MouseButton.LeftButton)
    pick_brush(toolbar, size=40, hardness=0)
    stroke(qtbot, canvas, [(128, 128)])
    row = mask(canvas)[128]
    assert row[128] > row[138] > row[145] > 0 and row[150] == 0


def test_mask_overlay_opacity_and_visibility(qtbot, editor):
    canvas, toolbar = editor
    assert toolbar.mode == "img2img" and not canvas.mask_layer.isVisible()
    toolbar.set_mode("inpaint")
    assert canvas.mask_layer.isVisible()
    toolbar.opacity_slider.setValue(30)
    assert canvas.mask_layer.overlay_opacity() == pytest.approx(0.3)
    toolbar.overlay_check.setChecked(False)
    assert not canvas.mask_layer.isVisible()
    toolbar.overlay_check.setChecked(True)
    assert canvas.mask_layer.isVisible()


def test_mask_saves_to_and_loads_from_png(qtbot, editor, tmp_path):
    canvas, toolbar = editor
    at_zoom(canvas, 1.0)
    pick_brush(toolbar, size=16)
    stroke(qtbot, canvas, [(40, 40), (200, 200)])
    painted = mask(canvas)
    toolbar.save_mask(tmp_path / "mask.png")
    saved = np.asarray(Image.open(tmp_path / "mask.png"))
    assert saved.ndim == 2 and np.array_equal(saved, painted)  # white = repaint, grayscale
    qtbot.mouseClick(toolbar.clear_button, Qt.MouseButton.LeftButton)
    toolbar.load_mask(tmp_path / "mask.png")
    assert np.array_equal(mask(canvas), painted)


def test_outpaint_grows_the_canvas_and_masks_the_new_area(qtbot, editor, tmp_path):
    canvas, toolbar = editor
    before = np.asarray(Image.open(tmp_path / "source.png"))
    toolbar.outpaint(Margins(32, 0, 0, 16))
    assert (toolbar.source.width(), toolbar.source.height()) == (SIZE + 32, SIZE + 16)
    values = mask(canvas)
    assert values.shape == (SIZE + 16, SIZE + 32)
    assert (values[:, :32] == 255).all() and (values[SIZE:, :] == 255).all()
    assert values[:200, 64:].max() == 0
    request = toolbar.edit_request(_plain_request(), tmp_path / "inputs")
    grown = np.asarray(Image.open(request.init_image).convert("RGB"))
    assert np.array_equal(grown[:SIZE, 32:], before)
    assert toolbar.mode == "inpaint" and request.mask is not None


def _plain_request():
    from desktop.engine.request import GenerationRequest

    return GenerationRequest(prompt="p", model="m", width=64, height=64)


@pytest.fixture
def real_window(qtbot, tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    shutil.copytree(tiny_sd15_dir, paths.models / "tiny-sd15")
    with open_real_window(qtbot, paths, steps=3, seed=7) as (window, controller):
        yield window, controller, paths

def test_an_inpaint_job_from_the_canvas_changes_only_the_masked_pixels(qtbot, real_window, tmp_path):
    window, controller, paths = real_window
    source = noise_png(tmp_path / "photo.png", 90, 70)  # not a multiple of 8
    toolbar, canvas = window.canvas_toolbar, window.canvas
    assert toolbar.load_source_file(str(source))
    canvas.show_actual_size()
    canvas.centerOn(QPointF(45, 35))
    pick_brush(toolbar, size=14)
    stroke(qtbot, canvas, [(30, 30), (60, 40)])
    toolbar.strength_slider.setValue(100)
    toolbar.blur_spin.setValue(2)
    toolbar.area_combo.setCurrentIndex(toolbar.area_combo.findData("masked"))
    window.prompt_editor.prompt_edit.setPlainText("a blue square")
    with qtbot.waitSignal(controller.job_finished, timeout=REAL_TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    path = finished.args[0].paths[0]
    result = np.asarray(Image.open(path).convert("RGB"))
    before = np.asarray(Image.open(source).convert("RGB"))
    assert result.shape == before.shape
    alpha = np.asarray(blur_mask(Image.fromarray(mask(canvas), "L"), 2))
    assert np.array_equal(result[alpha == 0], before[alpha == 0])
    assert not np.array_equal(result[alpha == 255], before[alpha == 255])
    settings = parse_parameters(read_text_chunks(path)["parameters"]).settings
    assert settings["Denoising strength"] == "1" and settings["Inpaint area"] == "Only masked"
    # The source and mask the job read are content-named files in the app's cache.
    inputs = sorted(p.name for p in (paths.cache / "inputs").iterdir())
    assert len(inputs) == 2 and all(name.endswith(".png") for name in inputs)


def test_undo_restores_exactly_across_tiles_of_a_large_mask(qtbot):
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QUndoStack

    from desktop.ui.canvas import Brush, MaskLayer

    stack = QUndoStack()
    layer = MaskLayer(QSize(1000, 700), stack)
    layer.begin_stroke(QPointF(10, 10), Brush(60, 0.3))
    layer.continue_stroke(QPointF(990, 690))
    layer.end_stroke()
    first = layer.values()
    layer.begin_stroke(QPointF(990, 10), Brush(90, 1.0, erase=True))
    layer.continue_stroke(QPointF(10, 690))
    layer.end_stroke()
    assert not np.array_equal(layer.values(), first)
    stack.undo()
    assert np.array_equal(layer.values(), first)
    stack.undo()
    assert not layer.values().any()
    stack.redo()
    stack.redo()
    assert layer.values()[350, 500] == 0 and layer.values()[72, 100] > 200


def test_dropping_an_image_file_makes_it_the_source(qtbot, editor, tmp_path):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    canvas, toolbar = editor
    dropped = noise_png(tmp_path / "dropped.webp.png", 120, 90, seed=9)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(dropped))])
    enter = QDragEnterEvent(
        QPoint(20, 20), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    canvas.dragEnterEvent(enter)
    assert enter.isAccepted()
    with qtbot.waitSignal(toolbar.source_changed, timeout=5000):
        canvas.dropEvent(
            QDropEvent(
                QPointF(20, 20),
                Qt.DropAction.CopyAction,
                mime,
                Qt.MouseButton.LeftButton,
                Qt.KeyboardModifier.NoModifier,
            )
        )
    assert (toolbar.source.width(), toolbar.source.height()) == (120, 90)
    assert canvas.mask_layer.size.width() == 120 and canvas.shown_file == str(dropped)
    request = toolbar.edit_request(_plain_request(), tmp_path / "inputs")
    assert request.mode == "img2img" and (request.width, request.height) == (120, 88)
    assert Path(request.init_image).read_bytes() == dropped.read_bytes()


def test_a_source_without_a_file_is_encoded_off_the_gui_thread(qtbot, editor, tmp_path, monkeypatch):
    """Pasted and outpainted sources have no file: their PNG encoding (seconds at 2048x2048) must not
    run on the GUI thread when Generate is pressed."""
    canvas, toolbar = editor
    encoded: list[tuple[str, bytes]] = []

    def recording_png_bytes(image, quality=-1):
        # Uncompressed: bytes no default-quality encode would give, so the stored file must be these.
        data = png_bytes(image, 100)
        encoded.append((threading.current_thread().name, data))
        return data

    monkeypatch.setattr(toolbar_module, "png_bytes", recording_png_bytes)
    pixels = np.random.default_rng(5).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    assert toolbar.paste_source(array_to_qimage(pixels))
    request = toolbar.edit_request(_plain_request(), tmp_path / "inputs")
    assert [name.startswith("marble-source-png") for name, _ in encoded] == [True]
    assert Path(request.init_image).read_bytes() == encoded[0][1]
    assert np.array_equal(np.asarray(Image.open(request.init_image).convert("RGB")), pixels)
