"""The parameter panel's "Text encoders" row: the diffusers folder whose text encoders, tokenizers and
VAE a transformer-only model file (Flux, SD3, Chroma, Qwen-Image, Z-Image) runs with -- the window's
form of the command line's `--text-encoders FOLDER`. The panel shows it only for models that need it."""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QToolButton, QWidget


class TextEncoderRow(QWidget):
    """A folder path to type or paste, and a button that picks one."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit(objectName="text_encoders_edit")
        self.edit.setClearButtonEnabled(True)
        self.edit.setPlaceholderText(self.tr("A diffusers folder of the same family"))
        self.edit.setToolTip(self.tr(
            "This model file holds the transformer only: its text encoders and VAE come from a diffusers "
            "folder of the same family (for Chroma, a Chroma or Flux.1 folder)"
        ))  # fmt: skip
        self.browse_button = QToolButton(objectName="text_encoders_button", text="…")
        self.browse_button.setToolTip(self.tr("Choose the folder"))
        self.browse_button.clicked.connect(self.choose_folder)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.browse_button)

    @Slot()
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("Text encoders and VAE folder"), self.edit.text())
        if folder:
            self.edit.setText(folder)
