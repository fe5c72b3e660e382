"""The settings dialog, built from the settings' declarations: one editor per setting, by its kind.

A new declaration in `desktop.engine.settings.SETTINGS` appears here with no change to this file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractButton,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.settings import BOOLEAN, CHOICE, FOLDER, INTEGER, Setting


class _FolderField(QWidget):
    """A path field with a Browse… button."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.line_edit = QLineEdit()
        self.line_edit.setPlaceholderText("(the app's own folder)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse(title))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.line_edit, 1)
        layout.addWidget(browse)

    def _browse(self, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, self.line_edit.text())
        if folder:
            self.line_edit.setText(folder)


class SettingsDialog(QDialog):
    """Edits a copy of the settings; `values()` is what the user chose (read it after OK). No signals."""

    def __init__(
        self, declarations: Sequence[Setting], values: Mapping[str, Any], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setObjectName("settings_dialog")
        self._declarations = tuple(declarations)
        self.editors: dict[str, QWidget] = {}
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        for setting in self._declarations:
            editor = self._editor_for(setting)
            editor.setObjectName(f"setting_{setting.key}")
            editor.setToolTip(setting.help)
            editor.setWhatsThis(setting.help)
            self.editors[setting.key] = editor
            help_label = QLabel(setting.help)
            # Help text is ours, but plain text keeps any path or bracket in it literal.
            help_label.setTextFormat(Qt.TextFormat.PlainText)
            help_label.setWordWrap(True)
            help_label.setEnabled(False)
            column = QVBoxLayout()
            column.setSpacing(2)
            column.addWidget(editor)
            column.addWidget(help_label)
            label = QLabel(f"{setting.title}:")
            label.setBuddy(editor)
            form.addRow(label, column)
        self.set_values(values)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Cancel
            | QDialogButtonBox.StandardButton.RestoreDefaults
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.buttons.clicked.connect(self._on_clicked)
        # Actions beside the settings ("Create signing key"): added by whoever opens the dialog.
        self._actions = QVBoxLayout()
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(self._actions)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(520)

    def add_action(self, name: str, text: str, run: Callable[[], str]) -> QPushButton:
        """A button that runs `run` at once (not at OK); the sentence it returns is shown under it."""
        button = QPushButton(text, objectName=name)
        result = QLabel(objectName=f"{name}_result")
        result.setTextFormat(Qt.TextFormat.PlainText)
        result.setWordWrap(True)
        button.clicked.connect(lambda: result.setText(run()))
        row = QHBoxLayout()
        row.addWidget(button)
        row.addWidget(result, 1)
        self._actions.addLayout(row)
        return button

    @staticmethod
    def _editor_for(setting: Setting) -> QWidget:
        if setting.kind == CHOICE:
            combo = QComboBox()
            for value, label in setting.choices:
                combo.addItem(label, value)
            return combo
        if setting.kind == INTEGER:
            spin = QSpinBox()
            spin.setRange(setting.minimum, setting.maximum)
            spin.setSpecialValueText(setting.minimum_label)
            return spin
        if setting.kind == BOOLEAN:
            return QCheckBox()
        if setting.kind == FOLDER:
            return _FolderField(setting.title)
        raise ValueError(f"no editor for settings of kind {setting.kind!r}")

    def set_values(self, values: Mapping[str, Any]) -> None:
        for setting in self._declarations:
            if setting.key not in values:
                continue
            editor, value = self.editors[setting.key], values[setting.key]
            if isinstance(editor, QComboBox):
                index = editor.findData(value)
                editor.setCurrentIndex(max(index, 0))
            elif isinstance(editor, QSpinBox):
                editor.setValue(int(value))
            elif isinstance(editor, QCheckBox):
                editor.setChecked(bool(value))
            elif isinstance(editor, _FolderField):
                editor.line_edit.setText(str(value))

    def values(self) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for key, editor in self.editors.items():
            if isinstance(editor, QComboBox):
                chosen[key] = editor.currentData()
            elif isinstance(editor, QSpinBox):
                chosen[key] = editor.value()
            elif isinstance(editor, QCheckBox):
                chosen[key] = editor.isChecked()
            elif isinstance(editor, _FolderField):
                chosen[key] = editor.line_edit.text().strip()
        return chosen

    def restore_defaults(self) -> None:
        self.set_values({setting.key: setting.default for setting in self._declarations})

    def _on_clicked(self, button: QAbstractButton) -> None:
        if self.buttons.buttonRole(button) == QDialogButtonBox.ButtonRole.ResetRole:
            self.restore_defaults()
