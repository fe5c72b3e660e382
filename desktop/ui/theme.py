"""The app's look: Fusion with a dark or a light palette, or whichever the desktop uses.

Dark is the default: neutral around the images, which should carry the colour. "system" follows the
desktop's colour scheme, also when it changes while the app runs.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

DARK, LIGHT, SYSTEM = "dark", "light", "system"


def _palette(window: QColor, base: QColor, text: QColor, placeholder: QColor, disabled: QColor) -> QPalette:
    palette = QPalette()
    accent = QColor(74, 132, 214)
    palette.setColor(QPalette.ColorRole.Window, window)
    palette.setColor(QPalette.ColorRole.WindowText, text)
    palette.setColor(QPalette.ColorRole.Base, base)
    palette.setColor(QPalette.ColorRole.AlternateBase, window)
    palette.setColor(QPalette.ColorRole.ToolTipBase, window)
    palette.setColor(QPalette.ColorRole.ToolTipText, text)
    palette.setColor(QPalette.ColorRole.PlaceholderText, placeholder)
    palette.setColor(QPalette.ColorRole.Text, text)
    palette.setColor(QPalette.ColorRole.Button, window)
    palette.setColor(QPalette.ColorRole.ButtonText, text)
    palette.setColor(QPalette.ColorRole.BrightText, QColor(255, 90, 90))
    palette.setColor(QPalette.ColorRole.Highlight, accent)
    palette.setColor(QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))
    palette.setColor(QPalette.ColorRole.Link, accent)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return palette


def dark_palette() -> QPalette:
    return _palette(QColor(43, 43, 46), QColor(30, 30, 32), QColor(225, 225, 228), QColor(130, 130, 136),
                    QColor(120, 120, 124))


def light_palette() -> QPalette:
    return _palette(QColor(239, 239, 241), QColor(255, 255, 255), QColor(28, 28, 30), QColor(120, 120, 126),
                    QColor(150, 150, 154))


def system_is_dark(app: QApplication) -> bool:
    return app.styleHints().colorScheme() == Qt.ColorScheme.Dark


def apply_theme(app: QApplication, theme: str = DARK) -> None:
    """Fusion with the palette for `theme` (dark, light, or system: the desktop's scheme)."""
    app.setStyle(QStyleFactory.create("Fusion"))
    dark = theme == DARK or (theme == SYSTEM and system_is_dark(app))
    app.setPalette(dark_palette() if dark else light_palette())


class ThemeManager(QObject):
    """Keeps the app's palette on the chosen theme, re-applying it when the desktop's scheme changes
    while the theme follows the system (no signals)."""

    def __init__(self, app: QApplication, theme: str = DARK, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._app = app
        self._theme = theme
        app.styleHints().colorSchemeChanged.connect(self._on_scheme_changed)

    @property
    def theme(self) -> str:
        return self._theme

    def apply(self, theme: str) -> None:
        self._theme = theme
        apply_theme(self._app, theme)

    @Slot()
    def _on_scheme_changed(self) -> None:
        if self._theme == SYSTEM:
            apply_theme(self._app, SYSTEM)
