"""A new user's first start: empty data folder, the README's run command, type a prompt, press Generate.

The real window, the real worker and the shipped demo model: the library gets the demo model, the panel
selects it at its native 128x128, and the first picture has the background the prompt asks for.
"""

from __future__ import annotations

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from desktop.app import build_main_window, diffusers_runner_factory, install_demo
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.demo import DEMO_MODEL_NAME
from desktop.engine.metadata import read_image_metadata
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from installer.demo_model.checker import measure

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

TIMEOUT_MS = 180_000  # the first job imports torch on the worker thread


def test_first_generate_on_a_fresh_install_follows_the_prompt(qtbot, tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    install_demo(paths, Resources.default())
    catalog = ModelCatalog(paths.models)
    factory = diffusers_runner_factory(paths, Resources.default(), catalog, ImageWriter(paths.outputs))
    window, controller = build_main_window(paths, factory, catalog)
    try:
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        panel = window.parameter_panel
        qtbot.waitUntil(lambda: panel.selected_model() == DEMO_MODEL_NAME, timeout=10_000)
        assert (panel.width_spin.value(), panel.height_spin.value()) == (128, 128)
        panel.seed_spin.setValue(3)
        panel.device_combo.setCurrentText("cpu")
        editor = window.prompt_editor.prompt_edit
        editor.setFocus()
        qtbot.keyClicks(editor, "a large red square in the centre on a blue background")
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as finished:
            qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
        (path,) = finished.args[0].paths
        with Image.open(path) as image:
            assert image.size == (128, 128)
            seen = measure(image)
        # The shipped model gets backgrounds right (94% in the quality gate at CFG 7) but not yet positions
        # or, reliably, shape colours at CFG 7: see README "The demo model".
        assert seen.background == "blue", seen
        assert read_image_metadata(path).settings["Model"] == DEMO_MODEL_NAME
    finally:
        controller.shutdown()
        window.wait_for_background()
