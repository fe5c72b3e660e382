"""The settings dialog, built from the settings' declarations: one editor per setting, by its kind.

A new declaration in `desktop.engine.settings.SETTINGS` appears here with no change to this file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PySide6.QtCore import QT_TRANSLATE_NOOP, Qt
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
from desktop.ui.translation import translate

# The settings' declarations are Qt-free (desktop.engine, shared with the CLI); their titles, help and
# choice labels are listed here so lupdate extracts them, and the dialog shows them through
# translate(SETTINGS_CONTEXT, ...). A test checks every declared text is in this list.
SETTINGS_CONTEXT = "Settings"
SETTING_TEXTS = (
    QT_TRANSLATE_NOOP("Settings", "Theme"),
    QT_TRANSLATE_NOOP("Settings", "Dark keeps the colours of your images the brightest thing on screen; Follow the "
                      "system uses your desktop's light or dark palette."),
    QT_TRANSLATE_NOOP("Settings", "Dark"),
    QT_TRANSLATE_NOOP("Settings", "Light"),
    QT_TRANSLATE_NOOP("Settings", "Follow the system"),
    QT_TRANSLATE_NOOP("Settings", "Live preview"),
    QT_TRANSLATE_NOOP("Settings", "Show the picture taking shape every N denoising steps (Off: no previews, a "
                      "little faster). Takes effect at the next start."),
    QT_TRANSLATE_NOOP("Settings", "Off"),
    QT_TRANSLATE_NOOP("Settings", "Memory mode"),
    QT_TRANSLATE_NOOP("Settings", "The memory mode new jobs start with: Auto picks one for your GPU; Tiled and "
                      "Offload use less graphics memory and run slower."),
    QT_TRANSLATE_NOOP("Settings", "Auto"),
    QT_TRANSLATE_NOOP("Settings", "Full"),
    QT_TRANSLATE_NOOP("Settings", "Tiled"),
    QT_TRANSLATE_NOOP("Settings", "Offload"),
    QT_TRANSLATE_NOOP("Settings", "Group"),
    QT_TRANSLATE_NOOP("Settings", "Sequential"),
    QT_TRANSLATE_NOOP("Settings", "fp8"),
    QT_TRANSLATE_NOOP("Settings", "NF4"),
    QT_TRANSLATE_NOOP("Settings", "Int8"),
    QT_TRANSLATE_NOOP("Settings", "Device"),
    QT_TRANSLATE_NOOP("Settings", "Where new jobs run: Auto uses the GPU when there is one."),
    QT_TRANSLATE_NOOP("Settings", "CPU"),
    QT_TRANSLATE_NOOP("Settings", "CUDA (NVIDIA)"),
    QT_TRANSLATE_NOOP("Settings", "Apple GPU"),
    QT_TRANSLATE_NOOP("Settings", "Output folder"),
    QT_TRANSLATE_NOOP("Settings", "Where new images are saved; empty: the app's own outputs folder. Takes effect at"
                      " the next start."),
    QT_TRANSLATE_NOOP("Settings", "Models folder"),
    QT_TRANSLATE_NOOP("Settings", "A folder of models to use instead of the app's own; empty: the app's own models "
                      "folder. Takes effect at the next start."),
    QT_TRANSLATE_NOOP("Settings", "CPU threads"),
    QT_TRANSLATE_NOOP("Settings", "Threads a job on the CPU uses. Auto: the cores other programs leave free when the "
                      "job starts (a busy machine slows a job several-fold when both compete for every core). "
                      "Takes effect at the next start."),
    QT_TRANSLATE_NOOP("Settings", "Tokenizer folder"),
    QT_TRANSLATE_NOOP("Settings", "For a Qwen-Image, Z-Image or Flux.2 file run with a text encoder from the "
                      "library: a folder holding the tokenizer to use instead of Marble's own Qwen tokenizer "
                      "(tokenizer.json and tokenizer_config.json; the model's diffusers folder serves), and for a "
                      "Flux.2 dev Mistral file that carries none, Mistral's; for a Lumina Image 2.0 file run with a "
                      "Gemma-2 file, Gemma's (it cannot ship: needed); empty: Marble's own. Takes effect at the next "
                      "start."),
    QT_TRANSLATE_NOOP("Settings", "FLUX.3 prompt rewriter"),
    QT_TRANSLATE_NOOP("Settings", "(none)"),
    QT_TRANSLATE_NOOP("Settings", "The folder of FLUX.3's prompt rewriter (flux-3-image-klein-pup: its weights, "
                      "tokenizer and system_prompts.json), which Rewrite prompt runs to expand a short prompt into the "
                      "detailed caption FLUX.3 is trained on; empty: none. Takes effect at the next start."),
    QT_TRANSLATE_NOOP("Settings", "API port"),
    QT_TRANSLATE_NOOP("Settings", "The port File ▸ Serve API listens on, on this machine only (127.0.0.1). Any "
                      "free port: one is picked each time."),
    QT_TRANSLATE_NOOP("Settings", "Any free port"),
    QT_TRANSLATE_NOOP("Settings", "C2PA signing"),
    QT_TRANSLATE_NOOP("Settings", "Sign every new image with a C2PA manifest (Content Credentials) naming Marble "
                      "and the model, with your own key (Create signing key, below)."),
)


class _FolderField(QWidget):
    """A path field with a Browse… button."""

    def __init__(self, title: str, empty_label: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.line_edit = QLineEdit()
        self.line_edit.setPlaceholderText(empty_label or self.tr("(the app's own folder)"))
        browse = QPushButton(self.tr("Browse…"))
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
        self.setWindowTitle(self.tr("Settings"))
        self.setObjectName("settings_dialog")
        self._declarations = tuple(declarations)
        self.editors: dict[str, QWidget] = {}
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        for setting in self._declarations:
            editor = self._editor_for(setting)
            editor.setObjectName(f"setting_{setting.key}")
            help_text = translate(SETTINGS_CONTEXT, setting.help)
            editor.setToolTip(help_text)
            editor.setWhatsThis(help_text)
            self.editors[setting.key] = editor
            help_label = QLabel(help_text)
            # Help text is ours, but plain text keeps any path or bracket in it literal.
            help_label.setTextFormat(Qt.TextFormat.PlainText)
            help_label.setWordWrap(True)
            help_label.setEnabled(False)
            column = QVBoxLayout()
            column.setSpacing(2)
            column.addWidget(editor)
            column.addWidget(help_label)
            label = QLabel(self.tr("{title}:").format(title=translate(SETTINGS_CONTEXT, setting.title)))
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
                combo.addItem(translate(SETTINGS_CONTEXT, label), value)
            return combo
        if setting.kind == INTEGER:
            spin = QSpinBox()
            spin.setRange(setting.minimum, setting.maximum)
            if setting.minimum_label:
                spin.setSpecialValueText(translate(SETTINGS_CONTEXT, setting.minimum_label))
            return spin
        if setting.kind == BOOLEAN:
            return QCheckBox()
        if setting.kind == FOLDER:
            empty = translate(SETTINGS_CONTEXT, setting.empty_label) if setting.empty_label else ""
            return _FolderField(translate(SETTINGS_CONTEXT, setting.title), empty)
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
