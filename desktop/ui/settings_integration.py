"""The settings in the window: Edit > Settings…, Help > Open log folder, the theme, and saving the
settings when they change and when the window closes.

Everything lives here so the main window needs no settings code: the menus are added to its menu bar
and its close is seen through an event filter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QEvent, QObject, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import QComboBox, QDialog, QMainWindow, QMenu, QSplitter

from desktop.engine.errors import MarbleError, StorageError
from desktop.engine.provenance import create_signing_key, key_exists
from desktop.engine.settings import SettingsStore
from desktop.ui.dialogs.settings_dialog import SettingsDialog
from desktop.ui.theme import ThemeManager

log = logging.getLogger(__name__)

# Linux and Windows have no standard key for Preferences; Ctrl+, is what most apps there use.
_FALLBACK_PREFERENCES_KEY = "Ctrl+,"
_SPLITTER_PREFIX = "splitter."


class SettingsIntegration(QObject):
    """Owns the settings' menu entries and applies the settings to the window and the app.

    Signals:
        settings_changed(list): these setting keys got a new value from the dialog (already saved).
        signing_key_created(): the dialog's "Create signing key" made a new C2PA key.
    """

    settings_changed = Signal(list)
    signing_key_created = Signal()

    def __init__(
        self,
        window: QMainWindow,
        store: SettingsStore,
        theme: ThemeManager,
        log_folder: Path | None = None,
        signing_key_folder: Path | None = None,
    ) -> None:
        super().__init__(window)
        self._window = window
        self._signing_key_folder = signing_key_folder
        self._store = store
        self._theme = theme
        self._log_folder = log_folder
        self.settings_action = QAction(self.tr("&Settings…"), window)
        self.settings_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        keys = QKeySequence.keyBindings(QKeySequence.StandardKey.Preferences) or [
            QKeySequence(_FALLBACK_PREFERENCES_KEY)
        ]
        self.settings_action.setShortcuts(keys)
        self.settings_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.settings_action.triggered.connect(self.open_settings)
        window.addAction(self.settings_action)
        self.open_log_folder_action = QAction(self.tr("Open &log folder"), window)
        self.open_log_folder_action.triggered.connect(self.open_log_folder)
        self.open_log_folder_action.setEnabled(log_folder is not None)

        bar = window.menuBar()
        self.edit_menu = QMenu(self.tr("&Edit"), window)
        self.edit_menu.addAction(self.settings_action)
        view_menu = getattr(window, "view_menu", None)
        if isinstance(view_menu, QMenu):
            bar.insertMenu(view_menu.menuAction(), self.edit_menu)
        else:
            bar.addMenu(self.edit_menu)
        self.help_menu = bar.addMenu(self.tr("&Help"))
        self.help_menu.addAction(self.open_log_folder_action)
        window.installEventFilter(self)

    @property
    def store(self) -> SettingsStore:
        return self._store

    def apply_at_start(self) -> None:
        """Theme, job defaults, and what was wrong with the settings file (in the message bar)."""
        self._theme.apply(self._store.get("theme"))
        self._apply_job_defaults()
        message_bar = getattr(self._window, "message_bar", None)
        for problem in self._store.problems:
            if message_bar is not None:
                # The store's problems are engine sentences (English, shared with the CLI and the log).
                message_bar.show_message(problem, "warning", append=True)

    def open_settings(self) -> bool:
        """Show the dialog; True when the user pressed OK (the settings are then applied and saved)."""
        dialog = SettingsDialog(self._store.declarations, self._store.values(), self._window)
        if self._signing_key_folder is not None:
            exists = key_exists(self._signing_key_folder)
            text = self.tr("Replace signing key") if exists else self.tr("Create signing key")
            dialog.add_action("create_signing_key", text, lambda: self._create_signing_key(dialog))
        try:
            if dialog.exec() != QDialog.DialogCode.Accepted:
                return False
            self.apply_values(dialog.values())
            return True
        finally:
            dialog.deleteLater()

    def apply_values(self, values: dict[str, Any]) -> list[str]:
        """Store, save and apply new values; the keys that changed."""
        changed = self._store.update(values)
        if not changed:
            return []
        self.save()
        if "theme" in changed:
            self._theme.apply(self._store.get("theme"))
        if {"device", "memory_mode"} & set(changed):
            self._apply_job_defaults()
        log.info("settings changed: %s", ", ".join(f"{key}={self._store.get(key)!r}" for key in changed))
        self.settings_changed.emit(changed)
        return changed

    def save(self) -> bool:
        try:
            self._store.save()
        except StorageError as error:
            log.warning("%s", error)
            message_bar = getattr(self._window, "message_bar", None)
            if message_bar is not None:
                message_bar.show_message(str(error), "error")
            return False
        return True

    def open_log_folder(self) -> None:
        if self._log_folder is not None:
            self._log_folder.mkdir(parents=True, exist_ok=True)
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._log_folder)))

    def _create_signing_key(self, dialog: SettingsDialog) -> str:
        assert self._signing_key_folder is not None
        try:
            create_signing_key(self._signing_key_folder)
        except MarbleError as error:
            return str(error)
        # Made on purpose to sign with: signing is ticked (the user can still untick it, or Cancel).
        dialog.set_values({"c2pa": True})
        self.signing_key_created.emit()
        return self.tr("A new signing key is in {folder}. Images are signed with it once C2PA signing is on "
                       "(press OK).").format(folder=self._signing_key_folder)

    # ------------------------------------------------------------------------------ window state

    def remember_window(self) -> None:
        """Keep the window's geometry, toolbar/dock layout and splitter positions in the store (saved
        with it). Splitters are kept by object name: QMainWindow's own state does not hold them."""
        state = {"geometry": self._window.saveGeometry().data(), "state": self._window.saveState().data()}
        for splitter in self._window.findChildren(QSplitter):
            if splitter.objectName():
                state[f"{_SPLITTER_PREFIX}{splitter.objectName()}"] = splitter.saveState().data()
        self._store.save_window_state(state)

    def restore_window(self) -> bool:
        """Put the window back as `remember_window` kept it; False when nothing (usable) was kept."""
        state = self._store.window_state()
        restored = False
        if "geometry" in state:
            restored = self._window.restoreGeometry(QByteArray(state["geometry"]))
        if "state" in state:
            restored = self._window.restoreState(QByteArray(state["state"])) and restored
        for splitter in self._window.findChildren(QSplitter):
            blob = state.get(f"{_SPLITTER_PREFIX}{splitter.objectName()}")
            if splitter.objectName() and blob is not None:
                splitter.restoreState(QByteArray(blob))
        return restored

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if watched is self._window and event.type() == QEvent.Type.Close:
            self.remember_window()
            self.save()
        return False

    # ---------------------------------------------------------------------------------- private

    def _apply_job_defaults(self) -> None:
        # The parameter panel keeps per-job choices; the settings are what new jobs start with.
        panel = getattr(self._window, "parameter_panel", None)
        for key, combo_name in (("device", "device_combo"), ("memory_mode", "memory_combo")):
            combo = getattr(panel, combo_name, None)
            if isinstance(combo, QComboBox):
                index = combo.findData(self._store.get(key))
                if index >= 0:
                    combo.setCurrentIndex(index)
