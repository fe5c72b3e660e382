"""Control images drawn and touched up by hand on the canvas, through the window as the app builds it:
strokes made with simulated mouse input land in the unit's image file where the pointer went, and an
edited edge map reaches the request as it is (preprocessor "none")."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt

from desktop.engine.control_preprocess import preprocess, to_preview
from desktop.engine.imaging import load_source
from desktop.engine.metadata import parse_parameters, read_text_chunks
from desktop.engine.paths import AppPaths
from desktop.ui.canvas.view import MaskCanvas
from tests.support.fake_backend import FakeBackend
from tests.support.real_window import real_window as open_real_window
from tests.ui.conftest import TIMEOUT_MS
from tests.ui.test_settings_and_logs import close_window, open_window
from tests.ui.test_window_controls import control_file, square_image  # noqa: F401 - a fixture, found by name

ZOOM = 2.0
REAL_TIMEOUT_MS = 120_000


@pytest.fixture
def home(tmp_path: Path, control_file: Path) -> Path:  # noqa: F811 - the imported fixture, used here
    home = tmp_path / "home"
    controls = AppPaths.for_root(home).ensure().controls
    controls.mkdir(parents=True, exist_ok=True)
    shutil.copy(control_file, controls / "edges.safetensors")
    return home


@pytest.fixture
def window(qtbot, home: Path) -> Iterator:
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        qtbot.waitUntil(lambda: window.parameter_panel.control_list.names() == ["edges"], timeout=TIMEOUT_MS)
        yield window
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)


def view_pos(canvas: MaskCanvas, x: float, y: float) -> QPoint:
    """Where image pixel (x, y)'s centre is on the screen."""
    return canvas.mapFromScene(QPointF(x + 0.5, y + 0.5))


def stroke(qtbot, canvas: MaskCanvas, points: list[tuple[float, float]]) -> None:
    viewport = canvas.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=view_pos(canvas, *points[0]))
    for point in points[1:]:
        qtbot.mouseMove(viewport, view_pos(canvas, *point))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=view_pos(canvas, *points[-1]))


def zoom_in(canvas: MaskCanvas, centre: tuple[float, float]) -> None:
    canvas.show_actual_size()
    canvas.zoom_by(ZOOM)
    canvas.centerOn(QPointF(*centre))


def distance_to_segments(shape: tuple[int, int], segments: list[tuple[tuple[float, float], tuple[float, float]]]):
    """Each pixel's distance (in pixels, centre to centre) to the nearest of `segments`."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    nearest = np.full(shape, np.inf)
    for (x0, y0), (x1, y1) in segments:
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        nearest = np.minimum(nearest, np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)))
    return nearest


def gray(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def test_strokes_drawn_on_a_blank_canvas_become_the_units_control_image(qtbot, window, home):
    panel, canvas = window.parameter_panel, window.canvas
    panel.width_spin.setValue(96)
    panel.height_spin.setValue(64)
    controls = panel.control_list
    controls.add_button.click()
    row = controls.row(0)
    row.preprocessor_combo.setCurrentIndex(row.preprocessor_combo.findData("canny"))
    row.draw_button.click()
    # No picture on the canvas: the drawing is made on black at the job's size.
    bar = window.control_bar
    assert canvas.tool == "control_brush" and bar.isVisible()
    assert (canvas.current_image.width(), canvas.current_image.height()) == (96, 64)
    assert canvas.control_layer is not None and canvas.control_layer.isVisible()
    bar.size_spin.setValue(8)
    zoom_in(canvas, (48, 32))
    segments = [((10.0, 20.0), (60.0, 20.0)), ((80.0, 8.0), (80.0, 50.0))]
    for start, end in segments:
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        stroke(qtbot, canvas, [start, middle, end])

    request = window.current_request()
    (unit,) = request.controls
    # The drawing is used as it is: a scribble, white on black, in the app's cache.
    assert unit.preprocessor == "none"
    assert Path(unit.image).parent == AppPaths.for_root(home).cache / "inputs"
    assert row.image_label.text() == "Canvas drawing"
    values = gray(unit.image)
    assert values.shape == (64, 96)
    distance = distance_to_segments(values.shape, segments)
    radius = 4.0
    # One screen pixel is 1/ZOOM image pixels: that is how precisely the pointer aims.
    slack = 1.0 + 1.0 / ZOOM
    assert (values[distance <= radius - slack] == 255).all()
    assert (values[distance >= radius + slack] == 0).all()

    # The queued job reads that same file.
    job = window.generate()
    assert job is not None and job.request.controls[0].image == unit.image
    # Done puts the tools away; the unit keeps the drawing.
    bar.done_button.click()
    assert canvas.tool == "pan" and not bar.isVisible() and not canvas.control_layer.isVisible()
    assert window.current_request().controls[0].image == unit.image


def test_a_file_chosen_after_drawing_ends_the_link(qtbot, window, tmp_path):
    controls = window.parameter_panel.control_list
    controls.add_button.click()
    row = controls.row(0)
    row.draw_button.click()
    window.control_bar.size_spin.setValue(6)
    zoom_in(window.canvas, (32, 32))
    stroke(qtbot, window.canvas, [(10, 10), (40, 10)])
    image = square_image(tmp_path / "chosen.png")
    controls._set_image(row, str(image))
    stroke(qtbot, window.canvas, [(10, 30), (40, 30)])
    (unit,) = window.current_request().controls
    assert unit.image == str(image)


def test_an_edited_edge_map_reaches_the_request_without_the_erased_edges(qtbot, window, tmp_path):
    source = square_image(tmp_path / "square.png")  # a white square at 16..47 on black, 64 x 64
    controls = window.parameter_panel.control_list
    row = controls.add_unit_with_image(str(source))
    row.preprocessor_combo.setCurrentIndex(row.preprocessor_combo.findData("canny"))
    edges = np.asarray(to_preview(preprocess("canny", load_source(source))).convert("L"))
    assert edges[15, 20:44].all() and edges[47, 20:44].all()  # the square's top and bottom edges (canny)

    row.edit_button.click()
    canvas, bar = window.canvas, window.control_bar
    # The unit's edge map is on the layer, over the picture it came from; the unit now reads it as it is.
    assert np.array_equal(canvas.control_layer.values(), edges)
    assert canvas.shown_file == str(source)
    assert row.preprocessor_combo.currentData() == "none"
    bar.tool_buttons["control_eraser"].click()
    assert canvas.tool == "control_eraser"
    bar.size_spin.setValue(12)
    zoom_in(canvas, (32, 32))
    segment = ((8.0, 15.0), (56.0, 15.0))
    stroke(qtbot, canvas, [segment[0], (32.0, 15.0), segment[1]])

    (unit,) = window.current_request().controls
    assert unit.preprocessor == "none"
    edited = gray(unit.image)
    distance = distance_to_segments(edited.shape, [segment])
    slack = 1.0 + 1.0 / ZOOM
    assert (edited[distance <= 6.0 - slack] == 0).all()  # the top edge is gone
    far = distance >= 6.0 + slack
    assert np.array_equal(edited[far], edges[far])  # the other edges are as canny found them
    assert edited[47, 20:44].all()


@pytest.mark.parametrize("preprocessor", ["inpaint"])
def test_edit_refuses_an_image_that_is_not_an_edge_map(qtbot, window, tmp_path, preprocessor):
    controls = window.parameter_panel.control_list
    row = controls.add_unit_with_image(str(square_image(tmp_path / "s.png")))
    row.preprocessor_combo.setCurrentIndex(row.preprocessor_combo.findData(preprocessor))
    row.edit_button.click()
    assert window.canvas.tool == "pan" and window.canvas.control_layer is None
    assert "nothing to edit" in controls.problem.text()


def test_a_drawn_control_image_guides_a_real_job(qtbot, tmp_path, tiny_sd15_dir, control_file):  # noqa: F811
    """Through the real diffusers backend: the job reads the drawing, and the PNG says so as A1111 writes it."""
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    shutil.copytree(tiny_sd15_dir, paths.models / "tiny-sd15")
    paths.controls.mkdir(parents=True, exist_ok=True)
    shutil.copy(control_file, paths.controls / "edges.safetensors")
    with open_real_window(qtbot, paths, steps=2, seed=5) as (window, controller):
        controls = window.parameter_panel.control_list
        qtbot.waitUntil(lambda: controls.names() == ["edges"], timeout=TIMEOUT_MS)
        controls.add_button.click()
        controls.row(0).draw_button.click()
        window.control_bar.size_spin.setValue(6)
        zoom_in(window.canvas, (32, 32))
        stroke(qtbot, window.canvas, [(10, 32), (54, 32)])
        drawn = window.current_request().controls[0].image
        window.prompt_editor.prompt_edit.setPlainText("a line")
        ended: list = []
        controller.job_finished.connect(ended.append)
        controller.job_failed.connect(ended.append)
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(ended), timeout=REAL_TIMEOUT_MS)
    (event,) = ended
    assert hasattr(event, "paths"), event  # finished, not failed: the backend read the drawing
    chunks = read_text_chunks(event.paths[0])
    assert json.loads(chunks["marble"])["request"]["controls"][0]["image"] == drawn
    settings = parse_parameters(chunks["parameters"]).settings
    assert "Module: none" in settings["ControlNet 0"] and "Model: edges" in settings["ControlNet 0"]


def test_a_drawn_unit_keeps_its_drawing_after_a_restart(qtbot, home):
    # The layer itself is not kept (the mask is not either); the unit's saved drawing is.
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        controls = window.parameter_panel.control_list
        qtbot.waitUntil(lambda: controls.names() == ["edges"], timeout=TIMEOUT_MS)
        controls.add_button.click()
        controls.row(0).draw_button.click()
        zoom_in(window.canvas, (32, 32))
        stroke(qtbot, window.canvas, [(10, 10), (40, 40)])
        bytes_drawn = Path(window.current_request().controls[0].image).read_bytes()
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        (unit,) = window.parameters.value("controls")
        assert (unit.preprocessor, Path(unit.image).read_bytes()) == ("none", bytes_drawn)
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)
