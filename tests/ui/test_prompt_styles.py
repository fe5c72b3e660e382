"""The window's style picker: saved styles offered beside the prompt, applied when a job is submitted."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from desktop.app import _offer_styles
from desktop.engine.styles import Style, StyleStore

if TYPE_CHECKING:
    from conftest import Studio

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

TIMEOUT_MS = 10_000
STYLES = [Style("Framed", "photo of {prompt}, framed", "lowres"), Style("Sharp", "sharp focus", "")]


def test_checked_styles_shape_the_generated_prompt_but_not_the_fields(qtbot, studio: Studio) -> None:
    editor = studio.window.prompt_editor
    editor.set_styles(STYLES)
    editor.set_prompts("a marble cat", "blurry")
    assert not editor.styles_button.text().endswith(")")
    editor.set_checked_styles(["Framed", "Sharp"])
    assert editor.styles_button.text() == "Styles (2)"

    with qtbot.waitSignal(studio.controller.job_finished, timeout=TIMEOUT_MS) as blocker:
        qtbot.mouseClick(studio.window.queue_panel.generate_button, Qt.MouseButton.LeftButton)

    with Image.open(Path(blocker.args[0].paths[0])) as image:
        lines = image.text["parameters"].splitlines()
    assert lines[0] == "photo of a marble cat, framed, sharp focus"
    assert lines[1] == "Negative prompt: blurry, lowres"
    # As in A1111 the fields keep what was typed, so a second run does not apply the styles twice.
    assert (editor.prompt(), editor.negative_prompt()) == ("a marble cat", "blurry")


def test_the_window_offers_the_saved_styles_and_survives_a_damaged_file(qtbot, studio: Studio) -> None:
    editor = studio.window.prompt_editor
    assert not editor.styles_button.isEnabled()  # nothing saved yet
    StyleStore(studio.paths.styles_file).save(STYLES)
    _offer_styles(studio.window, studio.paths)
    assert [action.text() for action in editor.styles_button.menu().actions()] == ["Framed", "Sharp"]
    assert editor.styles_button.isEnabled()
    editor.set_checked_styles(["Sharp"])
    editor.set_styles(STYLES[1:])  # offered again (after an import): the check stays
    assert editor.checked_styles() == ["Sharp"]

    studio.paths.styles_file.write_text("{damaged", encoding="utf-8")
    _offer_styles(studio.window, studio.paths)  # logged, not raised
    assert editor.checked_styles() == ["Sharp"]


def test_a_new_window_offers_the_styles_saved_in_the_data_folder(qtbot, tmp_path, fake_backend) -> None:
    import desktop
    from desktop.app import build_main_window
    from desktop.engine.outputs import ImageWriter
    from desktop.engine.paths import AppPaths
    from desktop.engine.runner import JobRunner

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    StyleStore(paths.styles_file).save(STYLES)
    writer = ImageWriter(paths.outputs)
    window, controller = build_main_window(paths, lambda: JobRunner(fake_backend, writer, desktop.__version__))
    try:
        qtbot.addWidget(window)
        assert [action.text() for action in window.prompt_editor.styles_button.menu().actions()] == ["Framed", "Sharp"]
    finally:
        controller.shutdown()
        window.wait_for_background()
