"""Edit > Settings > Create signing key: the key is made at once, C2PA signing is ticked, and from OK on
the writer signs the images the window saves (and stops when signing is turned off)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import c2pa
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QDialog, QLabel, QPushButton

import desktop
from desktop.app import build_main_window, follow_signing_setting
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.provenance import KEY_FILE, C2paSigner, ImageOrigin
from desktop.engine.runner import JobRunner
from desktop.engine.settings import SettingsStore
from desktop.ui.dialogs.settings_dialog import SettingsDialog
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import TIMEOUT_MS


def test_create_signing_key_in_the_settings_then_images_are_signed(qtbot, tmp_path: Path, monkeypatch) -> None:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    store = SettingsStore.open(paths.settings_file)
    writer = ImageWriter(paths.outputs, dated=False)
    backend = FakeBackend(steps=1)
    window, controller = build_main_window(paths, lambda: JobRunner(backend, writer, desktop.__version__),
                                           settings=store)
    qtbot.addWidget(window)
    follow_signing_setting(window, writer, paths.config, store)
    integration = window.settings_integration
    try:
        seen: dict[str, str] = {}

        def create_key_then_ok(dialog: SettingsDialog) -> int:
            button = dialog.findChild(QPushButton, "create_signing_key")
            seen["button"] = button.text()
            checkbox = dialog.editors["c2pa"]
            assert isinstance(checkbox, QCheckBox) and not checkbox.isChecked()
            qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
            seen["result"] = dialog.findChild(QLabel, "create_signing_key_result").text()
            assert checkbox.isChecked()
            return QDialog.DialogCode.Accepted

        monkeypatch.setattr(SettingsDialog, "exec", create_key_then_ok)
        with qtbot.waitSignal(integration.settings_changed, timeout=TIMEOUT_MS) as changed:
            integration.settings_action.trigger()
        assert changed.args[0] == ["c2pa"] and store.get("c2pa") is True
        assert seen["button"] == "Create signing key" and str(paths.config) in seen["result"]
        if os.name == "posix":
            assert stat.S_IMODE((paths.config / KEY_FILE).stat().st_mode) == 0o600
        assert isinstance(writer.signer, C2paSigner)
        saved = writer.save(Image.new("RGB", (64, 64), "red"), {"parameters": "red"}, 1, ImageOrigin("1", "m", "h"))
        with c2pa.Reader("image/png", io.BytesIO(saved.read_bytes())) as reader:
            assert reader.get_active_manifest()["claim_generator_info"][0]["name"] == "Marble Studio"

        def turn_off(dialog: SettingsDialog) -> int:
            seen["button"] = dialog.findChild(QPushButton, "create_signing_key").text()
            dialog.editors["c2pa"].setChecked(False)
            return QDialog.DialogCode.Accepted

        monkeypatch.setattr(SettingsDialog, "exec", turn_off)
        integration.settings_action.trigger()
        assert seen["button"] == "Replace signing key"
        assert writer.signer is None
    finally:
        window.close()
        controller.shutdown()
        window.wait_for_background()
