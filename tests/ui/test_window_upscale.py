"""Upscale from the window: the history's Upscale... and the canvas's, through the dialog, the queue
and the real diffusers backend on the tiny model; the result lands in the history and on the canvas."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from desktop.bridge.history_model import RecordRole
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from tests.support.real_window import real_window

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
    pytest.mark.slow,
]

TIMEOUT_MS = 180_000


def canvas_size(window) -> tuple[int, int]:
    image = window.canvas.current_image
    return (image.width(), image.height())


def test_upscale_a_history_image_and_the_canvas_image(qtbot, tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    shutil.copytree(tiny_sd15_dir, paths.models / "tiny-sd15")
    with real_window(qtbot, paths, steps=4, seed=4242, history=True) as (window, controller):
        window.prompt_editor.prompt_edit.setPlainText("a red circle")
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as first:
            qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
        source = first.args[0].paths[0]
        panel = window.history_panel
        qtbot.waitUntil(lambda: panel.model.rowCount() == 1, timeout=TIMEOUT_MS)
        panel.select_rows([0])

        # History > Upscale...: SD upscale over 2 x 2 tiles, queued like any job, with its progress shown.
        panel.upscale_action.trigger()
        dialog = window.upscale_integration.dialog
        assert dialog.isVisible()
        dialog.upscaler_combo.setCurrentText("Lanczos")
        dialog.scale_spin.setValue(1.5)
        dialog.sd_group.setChecked(True)
        dialog.denoise_spin.setValue(0.5)
        dialog.sd_tile_spin.setValue(64)
        dialog.overlap_spin.setValue(32)
        steps = []
        controller.step_progressed.connect(steps.append)
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as done:
            dialog.accept()
        result = done.args[0].paths[0]
        assert Image.open(result).size == (96, 96)
        assert steps and steps[-1].step == steps[-1].total
        assert window.queue_panel.progress_bar.value() == window.queue_panel.progress_bar.maximum()
        metadata = read_image_metadata(result)
        assert metadata.prompt == "a red circle" and metadata.settings["Seed"] == "4242"  # the source's recipe
        assert metadata.settings["Postprocess upscale by"] == "1.5"
        assert metadata.settings["Postprocess upscaler"] == "Lanczos"
        assert metadata.settings["SD upscale overlap"] == "32"
        qtbot.waitUntil(lambda: canvas_size(window) == (96, 96), timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: panel.model.rowCount() == 2, timeout=TIMEOUT_MS)
        assert panel.model.data(panel.model.index(0), RecordRole).path == result

        # Generate > Upscale canvas image...: a plain Lanczos upscale of what the canvas shows.
        window.upscale_integration.canvas_action.trigger()
        assert dialog.isVisible()
        dialog.sd_group.setChecked(False)
        dialog.scale_spin.setValue(2.0)
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as plain:
            dialog.accept()
        made = plain.args[0].paths[0]
        expected = Image.open(result).convert("RGB").resize((192, 192), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(Image.open(made).convert("RGB")), np.asarray(expected))
        assert read_image_metadata(made).settings["Postprocess upscale by"] == "2"
        qtbot.waitUntil(lambda: canvas_size(window) == (192, 192), timeout=TIMEOUT_MS)
        assert source != made
