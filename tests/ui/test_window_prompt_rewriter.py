"""FLUX.3's prompt rewriter in the window as the app builds it (desktop/app.py's build_app_window): the folder set in
Settings reaches the real backend on the worker thread, whose caption, with the layout boxes set in the panel (one
new, one moving an element of the reference picture listed under References), is the prompt the picture is made
from and the image records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import Qt

from desktop.app import build_app_window
from desktop.engine.backends import prompt_rewriter
from desktop.engine.backends.layout_captions import locked_rows, split_table
from desktop.engine.backends.prompt_rewriter import PromptRewriter
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from desktop.engine.request import LayoutBox
from desktop.engine.resources import Resources
from desktop.engine.settings import SettingsStore
from tests.support.tiny_flux3 import build_tiny_flux3, save_folder
from tests.support.tiny_rewriter import save_rewriter
from tests.ui.test_session_memory import pick

TOKENS = 24
TIMEOUT_MS = 180_000  # the first job imports torch and diffusers on the worker thread
FOX = LayoutBox("a red fox sitting", 0.1, 0.2, 0.5, 0.9)
CUP = LayoutBox("the red cup", 0.55, 0.4, 0.95, 0.95, reference=1, source=(0.05, 0.6, 0.3, 0.9))


def test_the_settings_rewriter_writes_the_windows_caption(qtbot, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prompt_rewriter, "MAX_NEW_TOKENS", TOKENS)
    picture = tmp_path / "table.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(picture)
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    save_folder(build_tiny_flux3(), paths.models / "tiny-flux3")
    folder = save_rewriter(tmp_path / "flux-3-image-klein-pup")
    settings = SettingsStore.open(paths.settings_file)
    settings.set("prompt_rewriter", str(folder))
    settings.save()
    window, controller, history = build_app_window(paths, Resources.default(), SettingsStore.open(paths.settings_file))
    try:
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        panel = window.parameter_panel
        qtbot.waitUntil(lambda: panel.model_combo.findText("tiny-flux3") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "tiny-flux3")
        qtbot.waitUntil(lambda: panel.rewrite_check.isVisibleTo(panel), timeout=TIMEOUT_MS)
        panel.width_spin.setValue(64)
        panel.height_spin.setValue(64)
        panel.steps_spin.setValue(1)
        panel.device_combo.setCurrentIndex(panel.device_combo.findData("cpu"))
        panel.rewrite_check.setChecked(True)
        panel.references_row.add_images([str(picture)])
        panel.model.update(layout_boxes=(FOX, CUP))
        window.prompt_editor.prompt_edit.setPlainText("add a fox, move the cup")
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as finished:
            qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
        recorded = read_image_metadata(finished.args[0].paths[0]).request
    finally:
        controller.shutdown()
        window.wait_for_background()
        if history is not None:
            history.close_all()
    with Image.open(picture) as opened:
        reference = opened.convert("RGB")
    caption = PromptRewriter(max_new_tokens=TOKENS).rewrite(folder, "add a fox, move the cup", 64, 64, "cpu",
                                                            torch.float32, references=[reference], boxes=[FOX, CUP])
    assert (recorded.prompt, recorded.rewrite_prompt, recorded.layout_boxes) == (caption, False, ())
    assert recorded.reference_images == (str(picture),)
    assert split_table(recorded.prompt)[1][:2] == locked_rows([FOX, CUP], edit=True)
    assert locked_rows([FOX, CUP], edit=True)[1]["from"] == "ref_image_0"


pytestmark = [pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints")]
