"""The main window's actions, shortcuts and menus, built in one place."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMenu

from desktop.ui.translation import translate

if TYPE_CHECKING:
    from desktop.ui.main_window import MainWindow


@dataclass(frozen=True)
class WindowActions:
    """The actions other code enables, triggers or extends, and the menus others add to."""

    generate: QAction
    cancel: QAction
    cancel_all: QAction
    refresh_models: QAction
    save_unsaved: QAction
    open_image: QAction
    paste_image: QAction
    file_menu: QMenu
    job_menu: QMenu
    view_menu: QMenu

    def set_busy(self, busy: bool) -> None:
        self.cancel.setEnabled(busy)
        self.cancel_all.setEnabled(busy)

    def set_pending_images(self, count: int) -> None:
        self.save_unsaved.setEnabled(count > 0)


def build_window_actions(window: MainWindow) -> WindowActions:
    """Create the window's actions (window-wide shortcuts) and its File, Generate and View menus."""

    def action(text: str, slot: Callable[..., object], *keys: QKeySequence | QKeySequence.StandardKey) -> QAction:
        return _action(window, text, slot, [QKeySequence(key) for key in keys])

    generate = action(translate("WindowActions", "&Generate"), window.generate, QKeySequence("Ctrl+Return"),
                      QKeySequence("Ctrl+Enter"))
    cancel = action(translate("WindowActions", "&Cancel"), window.cancel, QKeySequence(Qt.Key.Key_Escape))
    cancel_all = action(translate("WindowActions", "Cancel &all"), window.cancel_all, QKeySequence("Shift+Escape"))
    refresh_models = action(translate("WindowActions", "&Refresh models"), window.refresh_models,
                            QKeySequence.StandardKey.Refresh)
    open_models = action(translate("WindowActions", "Open &models folder"), window.open_models_folder)
    open_outputs = action(translate("WindowActions", "Open &outputs folder"), window.open_outputs_folder)
    open_outputs.setEnabled(window.outputs_folder is not None)
    save_unsaved = action(translate("WindowActions", "Save &unsaved images…"), window.save_unsaved_images)
    save_unsaved.setEnabled(False)
    # Ctrl+O belongs to File > Open image... (PNG info), added by the recipe integration.
    open_image = action(translate("WindowActions", "Open image as &source…"), window.open_source_image)
    # A pasted picture becomes the source; one that carries a recipe opens PNG info first.
    paste_image = action(translate("WindowActions", "&Paste image"), window.paste_image, QKeySequence.StandardKey.Paste)
    quit_action = action(translate("WindowActions", "&Quit"), window.close, QKeySequence.StandardKey.Quit)
    fit = action(translate("WindowActions", "&Fit to window"), window.canvas.fit_to_window, QKeySequence("Ctrl+0"))
    actual = action(translate("WindowActions", "&Actual size"), window.canvas.show_actual_size, QKeySequence("Ctrl+1"))

    menu_bar = window.menuBar()
    file_menu = menu_bar.addMenu(translate("WindowActions", "&File"))
    file_menu.addActions([open_image, paste_image])
    file_menu.addSeparator()
    file_menu.addActions([open_models, open_outputs, refresh_models, save_unsaved])
    file_menu.addSeparator()
    file_menu.addAction(quit_action)
    job_menu = menu_bar.addMenu(translate("WindowActions", "&Generate"))
    job_menu.addActions([generate, cancel, cancel_all])
    view_menu = menu_bar.addMenu(translate("WindowActions", "&View"))
    view_menu.addActions([fit, actual])
    actions = WindowActions(
        generate, cancel, cancel_all, refresh_models, save_unsaved, open_image, paste_image, file_menu, job_menu,
        view_menu,
    )
    actions.set_busy(False)
    return actions


def _action(window: MainWindow, text: str, slot: Callable[..., object], shortcuts: Sequence[QKeySequence]) -> QAction:
    action = QAction(text, window)
    action.setShortcuts(list(shortcuts))
    # Window-wide, so Ctrl+Enter works while typing in the prompt and Esc while anywhere.
    action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    action.triggered.connect(slot)
    window.addAction(action)
    return action
