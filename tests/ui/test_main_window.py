"""The main window through the real controller, worker thread, runner and image writer.

Only the backend is scripted (tests/support/fake_backend.py); the end-to-end window test through the
real diffusers backend lives in tests/e2e. Every wait has an explicit timeout; nothing sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, QSize, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from desktop.__main__ import is_cli_invocation
from desktop.engine.errors import ModelError, OutOfMemory
from desktop.engine.request import GenerationRequest
from desktop.ui.canvas.picture_view import CanvasView
from tests.support.fake_backend import colour_for

if TYPE_CHECKING:
    # Type hints only: pytest imports conftest.py itself; importing it again would make a second copy.
    from conftest import Studio

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    # The offscreen platform plugin says this whenever a window has size constraints; not our bug.
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 10_000


def type_prompt(qtbot, studio: Studio, text: str) -> None:
    editor = studio.window.prompt_editor.prompt_edit
    editor.setFocus()
    qtbot.keyClicks(editor, text)


def click_generate_and_wait(qtbot, studio: Studio, signal_name: str = "job_finished") -> object:
    with qtbot.waitSignal(getattr(studio.controller, signal_name), timeout=TIMEOUT_MS) as blocker:
        qtbot.mouseClick(studio.window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    return blocker.args[0]


def wait_idle(qtbot, studio: Studio) -> None:
    qtbot.waitUntil(lambda: not studio.controller.busy, timeout=TIMEOUT_MS)


# --------------------------------------------------------------------------------------- happy paths


def test_generate_button_saves_png_and_shows_it(qtbot, studio: Studio) -> None:
    window, panel = studio.window, studio.window.parameter_panel
    previews: list[object] = []
    studio.controller.preview_ready.connect(previews.append)
    type_prompt(qtbot, studio, "a marble cat, soft light")
    panel.height_spin.setValue(768)

    finished = click_generate_and_wait(qtbot, studio)

    assert len(finished.paths) == 1
    png = Path(finished.paths[0])
    assert png.is_file() and png.is_relative_to(studio.paths.outputs)
    with Image.open(png) as image:
        assert image.size == (512, 768)
        assert image.text["parameters"].startswith("a marble cat, soft light\n")
    # The generation ran on the worker thread, never on the GUI thread.
    assert threading.get_ident() not in studio.backend.thread_ids
    assert len(previews) == studio.backend.steps
    assert window.previews_shown == studio.backend.steps
    canvas = window.canvas
    assert not canvas.is_preview
    assert canvas.current_image is not None and canvas.current_image.size() == QSize(512, 768)
    bar = window.queue_panel.progress_bar
    assert bar.maximum() == studio.backend.steps and bar.value() == bar.maximum()
    assert window.result_paths() == [str(png)]
    assert window.queue_panel.status_label.text().startswith("Done: 1 image")
    assert not window.message_bar.isVisible()


def test_ctrl_enter_in_prompt_runs_a_batch_and_thumbnails_switch_the_canvas(qtbot, studio: Studio) -> None:
    window, panel = studio.window, studio.window.parameter_panel
    type_prompt(qtbot, studio, "two by two")
    panel.batch_count_spin.setValue(2)
    panel.batch_size_spin.setValue(2)
    panel.width_spin.setValue(256)
    panel.height_spin.setValue(256)
    panel.seed_spin.setValue(1000)

    with qtbot.waitSignal(studio.controller.job_finished, timeout=TIMEOUT_MS) as blocker:
        qtbot.keyClick(
            window.prompt_editor.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier
        )
    finished = blocker.args[0]

    # The shortcut took the key: no newline went into the prompt.
    assert window.prompt_editor.prompt() == "two by two"
    assert finished.seeds == (1000, 1001, 1002, 1003)
    assert all(Path(path).is_file() for path in finished.paths)
    bar = window.queue_panel.progress_bar
    assert bar.maximum() == 2 * studio.backend.steps and bar.value() == bar.maximum()
    strip = window.result_strip
    assert strip.count() == 4 and strip.isVisible()
    assert window.canvas.current_image.pixelColor(5, 5).getRgb()[:3] == colour_for(1003)

    first = strip.item(0)
    with qtbot.waitSignal(window.result_shown, timeout=TIMEOUT_MS) as shown:
        qtbot.mouseClick(
            strip.viewport(), Qt.MouseButton.LeftButton, pos=strip.visualItemRect(first).center()
        )
    assert shown.args == [finished.paths[0]]
    assert window.canvas.current_image.pixelColor(5, 5).getRgb()[:3] == colour_for(1000)
    # Thumbnails load on the thread pool and arrive as icons.
    window.wait_for_background()
    qtbot.waitUntil(lambda: all(not strip.item(row).icon().isNull() for row in range(4)), timeout=TIMEOUT_MS)


def test_seed_buttons_reuse_the_last_seed_and_go_back_to_random(qtbot, studio: Studio) -> None:
    panel = studio.window.parameter_panel
    assert not panel.reuse_seed_button.isEnabled()
    finished = click_generate_and_wait(qtbot, studio)

    qtbot.mouseClick(panel.reuse_seed_button, Qt.MouseButton.LeftButton)
    assert panel.model.request("", "").seed == finished.seeds[0]
    qtbot.mouseClick(panel.random_seed_button, Qt.MouseButton.LeftButton)
    assert panel.model.request("", "").seed == -1


def test_panel_round_trips_a_request(qtbot, studio: Studio) -> None:
    request = GenerationRequest(
        prompt="p",
        negative_prompt="n",
        model=studio.model_name,
        steps=12,
        cfg_scale=4.5,
        seed=4_000_000_000,
        sampler="DPM++ 2M Karras",
        width=832,
        height=1216,
        batch_count=3,
        batch_size=2,
        device="cpu",
        precision="fp32",
        memory_mode="tiled",
        fast_mode=True,
        clip_skip=2,
        emphasis="No norm",
    )
    panel = studio.window.parameter_panel
    panel.model.set_from_request(request)
    assert (panel.clip_skip_spin.value(), panel.emphasis_combo.currentText()) == (2, "No norm")  # shown
    assert panel.model.request("p", "n") == request


# --------------------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("how", ["button", "escape"])
def test_cancel_mid_run_writes_nothing_and_the_next_job_runs(qtbot, studio: Studio, how: str) -> None:
    window, backend = studio.window, studio.backend
    backend.block_at_step = 2
    type_prompt(qtbot, studio, "never finished")
    with qtbot.waitSignal(studio.controller.busy_changed, timeout=TIMEOUT_MS):
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(backend.blocked.is_set, timeout=TIMEOUT_MS)
    assert window.queue_panel.cancel_button.isEnabled()
    assert window.window_actions.cancel.isEnabled() and window.window_actions.cancel_all.isEnabled()

    with qtbot.waitSignal(studio.controller.job_cancelled, timeout=TIMEOUT_MS):
        if how == "button":
            qtbot.mouseClick(window.queue_panel.cancel_button, Qt.MouseButton.LeftButton)
        else:
            qtbot.keyClick(window.prompt_editor.prompt_edit, Qt.Key.Key_Escape)
    wait_idle(qtbot, studio)

    assert studio.output_files() == []
    assert window.result_strip.count() == 0 and not window.result_strip.isVisible()
    assert not window.queue_panel.cancel_button.isEnabled()
    assert not window.window_actions.cancel.isEnabled() and not window.window_actions.cancel_all.isEnabled()
    assert window.queue_panel.generate_button.isEnabled()
    assert window.queue_panel.status_label.text() == "Cancelled"
    assert not window.message_bar.isVisible()

    backend.block_at_step = None
    finished = click_generate_and_wait(qtbot, studio)
    assert [Path(path) for path in finished.paths] == studio.output_files()


# --------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("fail_at", "error"),
    [
        ("load", ModelError("fake-model is not a Stable Diffusion checkpoint. Pick another model.")),
        ("generate", OutOfMemory("The GPU ran out of memory. Try a smaller size or batch.")),
    ],
)
def test_failed_job_shows_its_message_and_the_next_job_runs(
    qtbot, studio: Studio, fail_at: str, error: Exception
) -> None:
    window, backend = studio.window, studio.backend
    backend.fail_with, backend.fail_at, backend.fail_at_step = error, fail_at, 2

    failed = click_generate_and_wait(qtbot, studio, "job_failed")
    wait_idle(qtbot, studio)

    assert failed.message == str(error)
    assert window.message_bar.isVisible()
    assert window.message_bar.level == "error"
    assert window.message_bar.text() == str(error)
    assert window.queue_panel.status_label.text() == "Failed"
    assert studio.output_files() == []

    backend.fail_with = None
    finished = click_generate_and_wait(qtbot, studio)
    assert Path(finished.paths[0]).is_file()
    # A new job clears the old error: a message on screen always belongs to what the user sees now.
    assert not window.message_bar.isVisible()


def test_request_without_a_model_is_refused_with_a_clear_message(qtbot, studio: Studio) -> None:
    window, panel = studio.window, studio.window.parameter_panel
    (studio.paths.models / f"{studio.model_name}.safetensors").unlink()
    with qtbot.waitSignal(window.models_listed, timeout=TIMEOUT_MS) as listed:
        qtbot.mouseClick(panel.refresh_models_button, Qt.MouseButton.LeftButton)
    assert listed.args == [[]]
    assert not panel.model_combo.isEnabled()
    assert panel.models_hint.isVisible()
    assert str(studio.paths.models) in panel.models_hint_label.text()

    with qtbot.assertNotEmitted(window.job_submitted), qtbot.assertNotEmitted(studio.controller.busy_changed):
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    assert window.message_bar.isVisible()
    assert window.message_bar.level == "error"
    assert "No model is selected" in window.message_bar.text()
    assert not studio.controller.busy


def test_warnings_are_shown_without_stopping_the_job(qtbot, studio: Studio) -> None:
    studio.backend.load_notes = ("Attention slicing is on to fit the GPU's memory.",)
    studio.backend.generate_notes = ("The prompt was cut to 77 tokens.",)
    finished = click_generate_and_wait(qtbot, studio)
    assert Path(finished.paths[0]).is_file()
    bar = studio.window.message_bar
    assert bar.isVisible() and bar.level == "warning"
    assert bar.text() == "Attention slicing is on to fit the GPU's memory.\nThe prompt was cut to 77 tokens."


def test_html_in_prompts_and_messages_stays_plain_text(qtbot, studio: Studio) -> None:
    window = studio.window
    prompt = "<b>html</b> & <img src=x>"
    type_prompt(qtbot, studio, prompt)
    studio.backend.generate_notes = (f"Could not use {prompt}",)

    finished = click_generate_and_wait(qtbot, studio)

    assert window.prompt_editor.prompt() == prompt
    label = window.message_bar.message_label
    assert label.textFormat() == Qt.TextFormat.PlainText
    assert label.text() == f"Could not use {prompt}"
    for other in (window.queue_panel.status_label, window.parameter_panel.models_hint_label):
        assert other.textFormat() == Qt.TextFormat.PlainText
    with Image.open(finished.paths[0]) as image:
        assert image.text["parameters"].startswith(prompt)


# --------------------------------------------------------------------------------------- canvas


def test_canvas_preview_owns_its_pixels_and_zooms(qtbot) -> None:
    canvas = CanvasView()
    qtbot.addWidget(canvas)
    canvas.resize(400, 300)
    canvas.show()
    qtbot.waitExposed(canvas)
    array = np.zeros((8, 12, 3), dtype=np.uint8)
    array[...] = (10, 200, 30)
    canvas.show_preview(array[:, ::-1], display_size=(96, 64))  # a non-contiguous view on purpose
    array[...] = 0
    del array
    image = canvas.current_image
    assert canvas.is_preview and image.size() == QSize(12, 8)
    assert image.pixelColor(3, 3).getRgb()[:3] == (10, 200, 30)
    # Fitted: the 96x64 display area fills the 400x300 view, keeping its aspect.
    assert canvas.fits_window and canvas.zoom == pytest.approx(400 / 96, rel=0.1)

    fitted = canvas.zoom
    centre = QPointF(canvas.viewport().rect().center())
    wheel = QWheelEvent(
        centre,
        canvas.viewport().mapToGlobal(centre),
        QPoint(0, 0),
        QPoint(0, 120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(canvas.viewport(), wheel)
    assert canvas.zoom > fitted and not canvas.fits_window
    canvas.fit_to_window()
    assert canvas.zoom == pytest.approx(fitted)

    with pytest.raises(ValueError):
        canvas.show_preview(np.zeros((4, 4), dtype=np.float32))


# --------------------------------------------------------------------------------------- processes


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    env.pop("MARBLE_HOME", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_window_builds_and_shows_without_importing_torch(tmp_path: Path) -> None:
    code = f"""
        import sys
        from PySide6.QtWidgets import QApplication
        app = QApplication([])
        from desktop.app import build_main_window
        from desktop.engine.paths import AppPaths

        def runner_factory():
            raise AssertionError("no job runs in this test")

        paths = AppPaths.for_root({str(tmp_path / "home")!r}).ensure()
        window, controller = build_main_window(paths, runner_factory)
        window.show()
        app.processEvents()
        window.wait_for_background()
        app.processEvents()
        heavy = [name for name in ("torch", "diffusers", "transformers", "accelerate", "fastapi", "uvicorn")
                 if name in sys.modules]
        controller.shutdown()
        print("HEAVY", heavy)
    """
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_main_opens_the_window_and_joins_the_thread_on_quit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code = f"""
        import sys
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication
        app = QApplication([])
        import desktop.app

        seen = {{}}

        def inspect_and_quit():
            windows = [w for w in QApplication.topLevelWidgets() if w.isVisible()]
            seen["titles"] = [w.windowTitle() for w in windows]
            seen["torch"] = "torch" in sys.modules
            QApplication.quit()

        QTimer.singleShot(0, inspect_and_quit)
        code = desktop.app.main(["--home", {str(home)!r}])
        print("RESULT", code, seen, app.applicationName(), app.organizationName())
    """
    result = _run_python(code, tmp_path)
    # A generation thread still running at exit would abort the interpreter (non-zero exit code).
    assert result.returncode == 0, result.stderr
    assert "RESULT 0 {'titles': ['Marble Studio'], 'torch': False} Marble Studio Marble" in result.stdout
    assert (home / "models").is_dir() and (home / "outputs").is_dir()


def test_python_m_desktop_routes_subcommands_to_the_cli(tmp_path: Path) -> None:
    assert is_cli_invocation(["generate", "--prompt", "x"])
    assert is_cli_invocation(["models", "list"])
    assert not is_cli_invocation([])
    assert not is_cli_invocation(["--home", "somewhere"])
    assert not is_cli_invocation(["--home=somewhere", "-platform", "offscreen"])
    assert is_cli_invocation(["--home", "somewhere", "generate", "--prompt", "x"])
    assert is_cli_invocation(["--home=somewhere", "models", "list"])
    code = """
        import sys
        from desktop.__main__ import main
        code = main(["samplers"])
        print("QT", "PySide6" in sys.modules, "CODE", code)
    """
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Euler a" in result.stdout
    assert "QT False CODE 0" in result.stdout


def test_choosing_a_model_brings_its_native_size_unless_the_kind_stays_the_same(qtbot) -> None:
    from desktop.ui.parameter_model import ParameterModel
    from desktop.ui.parameter_panel import ParameterPanel

    panel = ParameterPanel(ParameterModel())
    qtbot.addWidget(panel)
    sizes = {"marble-demo": 128, "sd15-a": 512, "sd15-b": 512, "sdxl": 1024}
    panel.set_models(["marble-demo", "sd15-a", "sd15-b", "sdxl", "unknown"], "/models", sizes)
    # First fill: the first model is chosen and the size follows it.
    assert panel.selected_model() == "marble-demo"
    assert (panel.width_spin.value(), panel.height_spin.value()) == (128, 128)
    panel.model_combo.setCurrentIndex(panel.model_combo.findData("sd15-a"))
    assert (panel.width_spin.value(), panel.height_spin.value()) == (512, 512)
    panel.width_spin.setValue(768)  # the user's own choice survives a switch to a model of the same kind
    panel.model_combo.setCurrentIndex(panel.model_combo.findData("sd15-b"))
    assert panel.width_spin.value() == 768
    panel.model_combo.setCurrentIndex(panel.model_combo.findData("unknown"))
    assert panel.width_spin.value() == 768
    panel.model_combo.setCurrentIndex(panel.model_combo.findData("sdxl"))
    assert (panel.width_spin.value(), panel.height_spin.value()) == (1024, 1024)
    # A rescan keeps the choice and the size.
    panel.height_spin.setValue(832)
    panel.set_models(["marble-demo", "sd15-a", "sdxl"], "/models", sizes)
    assert panel.selected_model() == "sdxl" and panel.height_spin.value() == 832
