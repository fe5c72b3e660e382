"""Settings, themes and logs in the real window: what a creator changes is there at the next start,
the dialog is built from the declarations, a failed job leaves its traceback in the log, and an
uncaught exception shows a dialog instead of ending the app."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QDesktopServices, QKeySequence, QPalette
from PySide6.QtWidgets import QApplication, QCheckBox, QComboBox, QDialog, QMessageBox, QSpinBox

import desktop
from desktop.app import build_main_window
from desktop.bridge.controller import GenerationController
from desktop.engine.app_log import log_file_path, start_log_file, stop_log_file
from desktop.engine.errors import ModelError, error_kind
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.runner import JobRunner
from desktop.engine.settings import BOOLEAN, SETTINGS, Setting, SettingsStore
from desktop.ui.dialogs.settings_dialog import SettingsDialog
from desktop.ui.error_hook import ErrorHook
from desktop.ui.main_window import MainWindow
from desktop.ui.theme import ThemeManager, apply_theme
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import FAKE_MODEL, TIMEOUT_MS, Studio


@pytest.fixture(autouse=True)
def keep_app_look() -> Iterator[None]:
    # Themes change the whole application; the next test gets the look it had.
    app = QApplication.instance()
    palette, style = QPalette(app.palette()), app.style().name()
    yield
    app.setStyle(style)
    app.setPalette(palette)


def open_window(
    qtbot, home: Path, backend: FakeBackend, model: str = FAKE_MODEL
) -> tuple[MainWindow, GenerationController, SettingsStore]:
    """The window as the app builds it, with the settings file under `home` read afresh (a start),
    once `model` is selected."""
    paths = AppPaths.for_root(home).ensure()
    (paths.models / f"{FAKE_MODEL}.safetensors").write_bytes(b"")
    store = SettingsStore.open(paths.settings_file)
    writer = ImageWriter(paths.outputs)
    window, controller = build_main_window(
        paths, lambda: JobRunner(backend, writer, desktop.__version__), settings=store
    )
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: window.parameter_panel.selected_model() == model, timeout=TIMEOUT_MS)
    return window, controller, store


def close_window(window: MainWindow, controller: GenerationController) -> None:
    window.close()
    controller.shutdown()
    window.wait_for_background()


def window_lightness() -> int:
    return QApplication.instance().palette().color(QPalette.ColorRole.Window).lightness()


def test_changed_settings_are_there_after_a_restart(qtbot, tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    window, controller, store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        assert window.parameter_panel.device_combo.currentData() == "auto"
        assert window_lightness() < 100
        chosen = {}

        def choose(dialog: SettingsDialog) -> int:
            chosen["dialog"] = dialog
            dialog.editors["theme"].setCurrentIndex(dialog.editors["theme"].findData("light"))
            dialog.editors["preview_every"].setValue(4)
            dialog.editors["device"].setCurrentIndex(dialog.editors["device"].findData("cpu"))
            return QDialog.DialogCode.Accepted

        monkeypatch.setattr(SettingsDialog, "exec", choose)
        integration = window.settings_integration
        assert integration.settings_action in integration.edit_menu.actions()
        assert integration.settings_action.shortcut() == (
            QKeySequence.keyBindings(QKeySequence.StandardKey.Preferences) or [QKeySequence("Ctrl+,")]
        )[0]
        with qtbot.waitSignal(integration.settings_changed, timeout=TIMEOUT_MS) as changed:
            integration.settings_action.trigger()
        assert sorted(changed.args[0]) == ["device", "preview_every", "theme"]
        # Applied at once: the palette is light and new jobs start on the chosen device.
        assert window_lightness() > 200
        assert window.parameter_panel.device_combo.currentData() == "cpu"
        # Small: offscreen's screen is small, and a restored geometry is fitted into the screen.
        window.resize(window.minimumSizeHint().width(), 650)
        qtbot.waitUntil(lambda: window.height() == 650, timeout=TIMEOUT_MS)
        kept_size = (window.width(), window.height())
    finally:
        close_window(window, controller)

    apply_theme(QApplication.instance(), "dark")
    window, controller, store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        assert store.get("theme") == "light" and store.get("preview_every") == 4 and store.get("device") == "cpu"
        assert window_lightness() > 200
        assert window.parameter_panel.device_combo.currentData() == "cpu"
        # The close kept the window's layout, and the start put it back.
        assert set(store.window_state()) == {"geometry", "state", "splitter.main_splitter"}
        assert (window.width(), window.height()) == kept_size
    finally:
        close_window(window, controller)


def test_a_corrupt_settings_file_starts_with_defaults_and_says_so(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    AppPaths.for_root(home).ensure().settings_file.write_text('{"settings": {"theme": "lig')
    window, controller, store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        assert store.values() == store.defaults()
        assert window.message_bar.isVisible()
        assert window.message_bar.level == "warning"
        assert "settings.json is not valid JSON" in window.message_bar.text()
        assert "Using the default settings" in window.message_bar.text()
    finally:
        close_window(window, controller)
    # The close saved good settings over the damaged file.
    assert SettingsStore.open(AppPaths.for_root(home).settings_file).problems == []


def test_the_dialog_is_built_from_the_declarations(qtbot) -> None:
    extra = Setting("confirm_quit", "Confirm quit", "Ask before quitting while a job runs.", BOOLEAN, True)
    declarations = (*SETTINGS, extra)
    values = {setting.key: setting.default for setting in declarations} | {"theme": "light", "preview_every": 7}
    dialog = SettingsDialog(declarations, values)
    qtbot.addWidget(dialog)
    assert list(dialog.editors) == [setting.key for setting in declarations]
    assert isinstance(dialog.editors["confirm_quit"], QCheckBox)
    assert dialog.editors["confirm_quit"].toolTip() == extra.help
    theme = dialog.editors["theme"]
    assert isinstance(theme, QComboBox)
    assert [theme.itemText(i) for i in range(theme.count())] == ["Dark", "Light", "Follow the system"]
    spin = dialog.editors["preview_every"]
    assert isinstance(spin, QSpinBox) and (spin.minimum(), spin.maximum()) == (0, 50)
    assert spin.specialValueText() == "Off"
    # An empty folder field says what empty means: the app's own folder, or for the prompt rewriter none.
    assert dialog.editors["output_folder"].line_edit.placeholderText() == "(the app's own folder)"
    assert dialog.editors["prompt_rewriter"].line_edit.placeholderText() == "(none)"
    assert dialog.values()["theme"] == "light" and dialog.values()["preview_every"] == 7

    dialog.editors["confirm_quit"].setChecked(False)
    qtbot.mouseClick(dialog.buttons.button(dialog.buttons.StandardButton.RestoreDefaults), Qt.MouseButton.LeftButton)
    assert dialog.values() == {setting.key: setting.default for setting in declarations}


def test_theme_switch_changes_the_palette(qtbot) -> None:
    app = QApplication.instance()
    themes = ThemeManager(app)
    themes.apply("dark")
    dark_window = app.palette().color(QPalette.ColorRole.Window)
    themes.apply("light")
    light_window = app.palette().color(QPalette.ColorRole.Window)
    assert dark_window.lightness() < 100 < 200 < light_window.lightness()
    assert app.palette().color(QPalette.ColorRole.WindowText).lightness() < 100
    # The offscreen platform reports no dark scheme: following the system gives the light palette.
    themes.apply("dark")
    themes.apply("system")
    assert app.palette().color(QPalette.ColorRole.Window) == light_window
    assert app.style().name().lower() == "fusion"


@pytest.fixture
def log_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "logs"
    level = logging.getLogger("desktop").level
    handler = start_log_file(folder)
    try:
        yield folder
    finally:
        stop_log_file(handler)
        logging.getLogger("desktop").setLevel(level)


@pytest.mark.parametrize(
    ("error", "fail_at"),
    [(RuntimeError("the sampler tripped"), "generate"), (ModelError("the sampler tripped"), "load")],
)
def test_a_failed_job_writes_its_request_and_traceback_to_the_log(
    qtbot, studio: Studio, log_folder: Path, error: Exception, fail_at: str
) -> None:
    studio.backend.fail_with, studio.backend.fail_at, studio.backend.fail_at_step = error, fail_at, 2
    studio.window.prompt_editor.set_prompts("a marble owl", "")
    with qtbot.waitSignal(studio.controller.job_failed, timeout=TIMEOUT_MS) as failed:
        qtbot.mouseClick(studio.window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not studio.controller.busy, timeout=TIMEOUT_MS)
    job_id = failed.args[0].job_id
    text = log_file_path(log_folder).read_text(encoding="utf-8")
    assert f"job {job_id} started: " in text and "prompt='a marble owl'" in text
    if fail_at == "generate":
        assert f"job {job_id}: model {FAKE_MODEL} loaded in " in text
    kind = error_kind(error).value
    failure = text[text.index(f"job {job_id} failed ({kind})"):]
    assert "Traceback (most recent call last):" in failure
    assert "fake_backend.py" in failure and f"{type(error).__name__}: the sampler tripped" in failure


def test_uncaught_exceptions_show_a_dialog_log_and_the_app_keeps_running(
    qtbot, studio: Studio, log_folder: Path, monkeypatch
) -> None:
    shown: list[str] = []

    def record(box: QMessageBox) -> int:
        shown.append(box.text())
        return QMessageBox.StandardButton.Ok

    monkeypatch.setattr(QMessageBox, "exec", record)
    hook = ErrorHook(studio.window, log_file_path(log_folder))
    hook.install()
    try:
        assert sys.excepthook == hook._excepthook

        def failing_slot() -> None:
            raise ValueError("a slot went wrong")

        # A real slot raising inside the event loop: PySide hands the exception to sys.excepthook.
        QTimer.singleShot(0, failing_slot)
        qtbot.waitUntil(lambda: len(shown) == 1, timeout=TIMEOUT_MS)
        assert "ValueError: a slot went wrong" in shown[0]
        assert str(log_file_path(log_folder)) in shown[0]

        def fail_in_thread() -> None:
            raise KeyError("lost in a thread")

        thread = threading.Thread(target=fail_in_thread, name="scanner")
        thread.start()
        thread.join()
        qtbot.waitUntil(lambda: len(shown) == 2, timeout=TIMEOUT_MS)
        assert "KeyError: 'lost in a thread'" in shown[1]
    finally:
        hook.uninstall()
    assert sys.excepthook != hook._excepthook
    text = log_file_path(log_folder).read_text(encoding="utf-8")
    assert "Unexpected error in MainThread" in text and "ValueError: a slot went wrong" in text
    assert "Unexpected error in scanner" in text and "KeyError: 'lost in a thread'" in text
    assert text.count("Traceback (most recent call last):") == 2
    # Still running: the window generates as before.
    with qtbot.waitSignal(studio.controller.job_finished, timeout=TIMEOUT_MS):
        studio.window.generate()


def test_help_opens_the_log_folder(qtbot, tmp_path: Path, monkeypatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    window, controller, _ = open_window(qtbot, tmp_path / "home", FakeBackend(steps=2))
    try:
        integration = window.settings_integration
        assert integration.help_menu.title() == "&Help"
        integration.open_log_folder_action.trigger()
        assert opened == [str(AppPaths.for_root(tmp_path / "home").logs)]
    finally:
        close_window(window, controller)


def test_logging_is_not_set_up_by_importing_the_app() -> None:
    # The log file belongs to a start of the app, never to an import (tests, the CLI).
    assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("desktop").handlers)
