"""The window says "compiling" while fast mode compiles (issue 29), and "preparing live previews" while a Sana
model's preview colours are fitted: the progress bar shows it, busy, before the first step, instead of a step counter
that stands still."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PySide6.QtCore import Qt

if TYPE_CHECKING:
    from conftest import Studio

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

TIMEOUT_MS = 10_000


def test_the_progress_bar_says_compiling_before_the_first_step(qtbot, studio: Studio) -> None:
    studio.backend.compiles = True
    bar = studio.window.queue_panel.progress_bar
    seen: list[tuple[str, str, int]] = []
    studio.controller.model_compiling.connect(lambda _event: seen.append(("compiling", bar.format(), bar.maximum())))
    studio.controller.step_progressed.connect(lambda _event: seen.append(("step", bar.format(), bar.maximum())))
    with qtbot.waitSignal(studio.controller.job_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(studio.window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    assert seen[0] == ("compiling", "Compiling the model (first fast-mode image)…", 0)  # busy: range 0..0
    assert [kind for kind, _, _ in seen[1:]] == ["step"] * studio.backend.steps
    assert bar.value() == bar.maximum() > 0  # the steps took the bar back from busy


def test_no_compiling_without_fast_mode(qtbot, studio: Studio) -> None:
    compiling: list[object] = []
    studio.controller.model_compiling.connect(compiling.append)
    with qtbot.waitSignal(studio.controller.job_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(studio.window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    assert compiling == []


def test_the_progress_bar_says_previews_are_being_prepared_before_the_first_step(qtbot, studio: Studio) -> None:
    studio.backend.fits_previews = True
    bar = studio.window.queue_panel.progress_bar
    seen: list[tuple[str, str, int]] = []
    studio.controller.previews_fitting.connect(lambda _event: seen.append(("fitting", bar.format(), bar.maximum())))
    studio.controller.step_progressed.connect(lambda event: seen.append(("step", str(event.step), bar.maximum())))
    with qtbot.waitSignal(studio.controller.job_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(studio.window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    assert seen[0] == ("fitting", "Preparing live previews for this model (once)…", 0)  # busy: range 0..0
    # The notice is not a step: the steps count from 1, and the bar leaves busy for them.
    assert [step for _, step, _ in seen[1:]] == [str(n) for n in range(1, studio.backend.steps + 1)]
    assert bar.value() == bar.maximum() > 0


def test_the_progress_bar_says_the_prompt_is_being_rewritten_and_the_history_keeps_the_caption(
    qtbot, studio: Studio
) -> None:
    studio.backend.rewrites = True
    bar = studio.window.queue_panel.progress_bar
    seen: list[tuple[str, str, int]] = []
    studio.controller.prompt_rewriting.connect(lambda _event: seen.append(("rewriting", bar.format(), bar.maximum())))
    studio.controller.step_progressed.connect(lambda event: seen.append(("step", str(event.step), bar.maximum())))
    studio.window.prompt_editor.set_prompts("a fox", "")
    with qtbot.waitSignal(studio.controller.job_finished, timeout=TIMEOUT_MS) as finished:
        qtbot.mouseClick(studio.window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    assert seen[0] == ("rewriting", "Rewriting the prompt (FLUX.3's prompt rewriter)…", 0)  # busy: range 0..0
    assert [step for _, step, _ in seen[1:]] == [str(n) for n in range(1, studio.backend.steps + 1)]
    from desktop.engine.metadata import read_image_metadata

    (path,) = finished.args[0].paths
    recorded = read_image_metadata(path).request
    assert (recorded.prompt, recorded.rewrite_prompt) == ("a fox, rewritten", False)
