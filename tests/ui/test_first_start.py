"""A new user's first start: empty data folder, the README's run command, type a prompt, press Generate.

The real window, the real worker and the shipped demo model: the library gets the demo model, the panel
selects it at its native 128x128, and the first picture has the background the prompt asks for.
"""

from __future__ import annotations

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from desktop.app import install_demo
from desktop.engine.library.demo import DEMO_MODEL_NAME
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from installer.demo_model.checker import measure
from tests.support.real_window import real_window

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

TIMEOUT_MS = 180_000  # the first job imports torch on the worker thread


def test_first_generate_on_a_fresh_install_follows_the_prompt(qtbot, tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    install_demo(paths, Resources.default())
    with real_window(qtbot, paths, steps=20, seed=3, model=DEMO_MODEL_NAME, size=None) as (window, controller):
        panel = window.parameter_panel
        assert (panel.width_spin.value(), panel.height_spin.value()) == (128, 128)
        editor = window.prompt_editor.prompt_edit
        editor.setFocus()
        qtbot.keyClicks(editor, "a large red square in the centre on a blue background")
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as finished:
            qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
        (path,) = finished.args[0].paths
        with Image.open(path) as image:
            assert image.size == (128, 128)
            seen = measure(image)
        # The shipped model gets backgrounds right (100% in the quality gate at CFG 7) but not yet positions
        # or shape kinds, and shape colours 84% of the time: see installer/demo_model/README.md.
        assert seen.background == "blue", seen
        assert read_image_metadata(path).settings["Model"] == DEMO_MODEL_NAME
