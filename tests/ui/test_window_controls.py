"""Control units in the window: a control model from the library, an image from a file, the canvas or
PNG info, its settings and preprocessed preview; the unit reaches the next job's request and survives a
restart."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from PySide6.QtWidgets import QFileDialog

from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.support import tiny_controls, tiny_models
from tests.support.fake_backend import FakeBackend
from tests.support.recipe_images import CASES
from tests.ui.conftest import TIMEOUT_MS
from tests.ui.test_png_info import drop
from tests.ui.test_settings_and_logs import close_window, open_window


@pytest.fixture(scope="module")
def control_file(tmp_path_factory) -> Path:
    controlnet = tiny_controls.build_tiny_controlnet(tiny_models.build_tiny_sd15().unet, seed=3)
    return tiny_controls.save_controlnet(controlnet, tmp_path_factory.mktemp("controls") / "edges.safetensors")


@pytest.fixture
def home(tmp_path: Path, control_file: Path) -> Path:
    home = tmp_path / "home"
    controls = AppPaths.for_root(home).ensure().controls
    controls.mkdir(parents=True, exist_ok=True)
    shutil.copy(control_file, controls / "edges.safetensors")
    return home


@pytest.fixture
def window(qtbot, home: Path) -> Iterator:
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        controls = window.parameter_panel.control_list
        qtbot.waitUntil(lambda: controls.names() == ["edges"], timeout=TIMEOUT_MS)
        yield window
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)


def square_image(path: Path) -> Path:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill="white")
    image.save(path)
    return path


def test_a_unit_added_in_the_panel_reaches_the_request(qtbot, window, tmp_path, monkeypatch):
    controls = window.parameter_panel.control_list
    assert controls.add_button.isEnabled()
    controls.add_button.click()
    row = controls.row(0)
    image = square_image(tmp_path / "square.png")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: (str(image), ""))
    row.file_button.click()
    row.preprocessor_combo.setCurrentIndex(row.preprocessor_combo.findData("canny"))
    row.mode_combo.setCurrentIndex(row.mode_combo.findData("control"))
    row.weight_spin.setValue(0.6)
    row.start_spin.setValue(0.1)
    row.end_spin.setValue(0.8)
    expected = ControlUnit("edges", str(image), 0.6, 0.1, 0.8, "control", "canny")
    assert window.current_request().controls == (expected,)
    # The preview is the canny edge map of the square: its outline is white, its inside and outside black.
    preview = row.preview.pixmap().toImage()
    assert not preview.isNull() and preview.width() <= 96
    side = preview.width()
    inside, outside = preview.pixelColor(side // 2, side // 2), preview.pixelColor(2, 2)
    assert inside.value() == 0 and outside.value() == 0
    assert any(preview.pixelColor(x, side // 2).value() == 255 for x in range(side))
    row.remove_button.click()
    assert window.current_request().controls == ()


def test_the_preview_decodes_the_file_once_and_again_only_when_it_changes(window, tmp_path, monkeypatch):
    """Trying preprocessors on a big control image does not decode it again each time on the GUI thread; a
    file written anew under the same name (the canvas drawing is saved per job) is decoded again."""
    from desktop.ui import control_list

    opened: list[str] = []
    real_open = control_list.Image.open

    def counted_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(control_list.Image, "open", counted_open)
    controls = window.parameter_panel.control_list
    controls.add_button.click()
    row = controls.row(0)
    image = square_image(tmp_path / "square.png")
    row.set_image(str(image))
    assert opened == [str(image)]
    for name in ("canny", "invert", "none", "canny"):
        row.preprocessor_combo.setCurrentIndex(row.preprocessor_combo.findData(name))
    assert opened == [str(image)]
    before = row.preview.pixmap().toImage()
    Image.new("RGB", (80, 64), "white").save(image)  # another picture, same name
    row.update_preview()
    assert opened == [str(image)] * 2
    assert row.preview.pixmap().toImage() != before


def test_the_canvas_picture_becomes_a_control_image_in_the_inputs_folder(qtbot, window, home, tmp_path):
    image = square_image(tmp_path / "canvas.png")
    assert window.canvas_toolbar.load_source_file(str(image))
    controls = window.parameter_panel.control_list
    controls.add_button.click()
    controls.row(0).canvas_button.click()
    (unit,) = window.current_request().controls
    stored = Path(unit.image)
    assert stored.parent == AppPaths.for_root(home).cache / "inputs"
    assert stored.read_bytes() == image.read_bytes()


def test_use_as_control_image_adds_a_unit_with_that_image(qtbot, window, tmp_path):
    path = CASES[0].write(tmp_path)
    assert drop(window.canvas.viewport(), path)
    dialog = window.recipes.dialog
    qtbot.waitUntil(dialog.isVisible, timeout=TIMEOUT_MS)
    assert dialog.use_control_button.isEnabled()
    dialog.use_control_button.click()
    assert not dialog.isVisible()
    (unit,) = window.current_request().controls
    assert (unit.model, unit.image) == ("edges", str(path))


def test_control_units_are_there_after_a_restart(qtbot, home, tmp_path):
    image = square_image(tmp_path / "kept.png")
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        controls = window.parameter_panel.control_list
        qtbot.waitUntil(lambda: controls.names() == ["edges"], timeout=TIMEOUT_MS)
        row = controls.add_unit_with_image(str(image))
        row.weight_spin.setValue(0.45)
        expected = window.parameters.value("controls")
        assert expected == (ControlUnit("edges", str(image), 0.45),)
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        assert window.parameters.value("controls") == expected
        assert window.parameter_panel.control_list.row(0).weight_spin.value() == 0.45
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)
