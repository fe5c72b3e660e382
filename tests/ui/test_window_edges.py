"""Edge cases a creator meets in the window, each said in plain words: the mask over a result, a source
too small to edit, the steps an edit really runs, and what the demo model can draw.

The jobs run through the real diffusers backend on a tiny real model, driven as a user drives the window.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from desktop.app import build_main_window
from desktop.engine.library.demo import DEMO_MODEL_DRAWS, DEMO_MODEL_NAME, install_demo_model
from desktop.engine.library.index import Library
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from desktop.ui.main_window import MainWindow
from desktop.ui.prompt_editor import PROMPT_PLACEHOLDER
from installer.demo_model import scenes
from tests.support.fake_backend import FakeBackend
from tests.support.real_window import real_window

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

# The first job imports torch and diffusers on the worker thread: seconds on a loaded CI machine.
TIMEOUT_MS = 180_000


def noise_png(path, width: int, height: int):
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def real_studio(qtbot, tmp_path, tiny_sd15_dir) -> Iterator[tuple]:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    shutil.copytree(tiny_sd15_dir, paths.models / "tiny-sd15")
    with real_window(qtbot, paths, steps=3, seed=11) as (window, controller):
        yield window, controller, paths


def test_a_result_shows_without_the_mask_which_comes_back_with_the_source(qtbot, real_studio, tmp_path):
    window, controller, _ = real_studio
    toolbar, canvas = window.canvas_toolbar, window.canvas
    source = str(noise_png(tmp_path / "photo.png", 96, 72))
    assert toolbar.load_source_file(source)
    toolbar.fill_button.click()  # mask everything
    toolbar.set_mode("inpaint")
    layer = canvas.mask_layer
    assert layer is not None and layer.isVisible()
    painted = layer.values().copy()
    toolbar.tool_buttons["brush"].click()
    window.prompt_editor.prompt_edit.setPlainText("a blue square")
    overlay_under_previews = []
    window.job_status.preview_shown.connect(lambda: overlay_under_previews.append(layer.isVisible()))
    with qtbot.waitSignal(window.result_shown, timeout=TIMEOUT_MS) as shown:
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    # The new pixels are seen as they are: no overlay over the previews or the result, and no brush
    # left armed to paint on a mask nobody sees.
    assert canvas.shown_file == shown.args[0] and not canvas.is_preview
    assert overlay_under_previews and not any(overlay_under_previews)
    assert not layer.isVisible() and not toolbar.showing_source
    assert canvas.tool == "pan" and toolbar.tool_buttons["pan"].isChecked()
    # The mask is kept for the next job: Generate again repaints the same area of the same source.
    assert canvas.mask_layer is layer and np.array_equal(layer.values(), painted)
    assert toolbar.edit_request(window.parameters.request("again"), tmp_path / "inputs").mask is not None
    # Picking a mask tool goes back to editing: the source, its mask and its overlay.
    toolbar.tool_buttons["brush"].click()
    assert canvas.shown_file == source and toolbar.showing_source
    assert layer.isVisible() and canvas.tool == "brush" and toolbar.tool_buttons["brush"].isChecked()
    assert np.array_equal(layer.values(), painted)


def test_an_image_to_image_job_counts_the_steps_it_runs_and_says_why(qtbot, real_studio, tmp_path):
    window, controller, _ = real_studio
    panel, toolbar = window.parameter_panel, window.canvas_toolbar
    panel.steps_spin.setValue(8)
    panel.sampler_combo.setCurrentIndex(panel.sampler_combo.findData("DDIM"))  # no warm-up step
    assert toolbar.load_source_file(str(noise_png(tmp_path / "photo.png", 64, 64)))
    toolbar.strength_slider.setValue(50)
    window.prompt_editor.prompt_edit.setPlainText("a red circle")
    steps = []
    controller.step_progressed.connect(lambda event: steps.append(window.queue_panel.progress_bar.format()))
    with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    # int(8 * 0.5) = 4 steps run: the bar counts those 4, and says they are 8 at strength 0.5.
    assert steps[-1] == "4 of 4 steps: 8 at strength 0.5"
    assert steps[0] == "1 of 4 steps: 8 at strength 0.5"
    assert window.queue_panel.progress_bar.value() == window.queue_panel.progress_bar.maximum()


def test_a_source_too_small_to_edit_is_refused_in_the_message_bar(qtbot, studio, tmp_path):
    window = studio.window
    Image.new("RGB", (1, 1), (200, 0, 0)).save(tmp_path / "dot.png")
    assert window.canvas_toolbar.load_source_file(str(tmp_path / "dot.png"))
    window.prompt_editor.prompt_edit.setPlainText("a red circle")
    submitted = []
    window.job_submitted.connect(submitted.append)
    qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    assert not submitted and window.message_bar.level == "error"
    assert window.message_bar.text() == (
        "The source image is 1x1 pixels, too small to edit: image to image and inpainting need at least 64 "
        "pixels on each side. Scale it up first, or use text to image."
    )
    assert not (studio.paths.cache / "inputs").exists()  # nothing written for a refused job


@contextmanager
def demo_window(qtbot, tmp_path, *other_models: str) -> Iterator[MainWindow]:
    """The window as a first start makes it: the demo model installed, and these (never run) beside it."""
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    install_demo_model(Library(paths), Resources.default().demo_model, paths.config)
    for name in other_models:
        (paths.models / f"{name}.safetensors").write_bytes(b"")
    window, controller = build_main_window(paths, lambda: JobRunner(FakeBackend(), ImageWriter(paths.outputs), "t"))
    try:
        qtbot.addWidget(window)
        qtbot.waitUntil(lambda: window.parameter_panel.model_combo.count() == 1 + len(other_models), timeout=10_000)
        yield window
    finally:
        controller.shutdown()
        window.wait_for_background()


def test_a_first_start_with_the_demo_model_says_what_it_draws(qtbot, tmp_path):
    with demo_window(qtbot, tmp_path) as window:
        assert window.parameter_panel.selected_model() == DEMO_MODEL_NAME
        field = window.prompt_editor.prompt_edit
        qtbot.waitUntil(lambda: field.placeholderText() == DEMO_MODEL_DRAWS, timeout=10_000)


def test_the_prompt_hint_follows_the_selected_model(qtbot, tmp_path):
    with demo_window(qtbot, tmp_path, "fake-model") as window:
        panel, field = window.parameter_panel, window.prompt_editor.prompt_edit
        assert panel.selected_model() == "fake-model" and field.placeholderText() == PROMPT_PLACEHOLDER
        panel.model_combo.setCurrentIndex(panel.model_combo.findData(DEMO_MODEL_NAME))
        qtbot.waitUntil(lambda: field.placeholderText() == DEMO_MODEL_DRAWS, timeout=10_000)
        panel.model_combo.setCurrentIndex(panel.model_combo.findData("fake-model"))
        assert field.placeholderText() == PROMPT_PLACEHOLDER


def test_the_demo_model_hint_names_everything_it_was_trained_to_draw():
    # The training scenes are the truth: a shape, colour, size or position added there is said here.
    words = DEMO_MODEL_DRAWS.lower()
    for word in (*scenes.SHAPES, *scenes.COLOURS, *scenes.SIZES, *scenes.POSITIONS):
        assert word in words, word
