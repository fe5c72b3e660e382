"""The parameter panel's "Text encoders" row: what a transformer-only model file (Flux, Flux.2, SD3, Chroma,
Qwen-Image, Z-Image, Lumina Image 2.0) takes its text encoders from -- the window's form of the command line's
`--text-encoders`. Either a diffusers folder of the same family (typed, pasted or chosen with the folder
button) or text-encoder files from the library (`marble encoders import`: CLIP and T5, Qwen, Flux.2 dev's
Mistral), ticked in the Library button's menu, which offers only the encoders the chosen model's family
reads; the VAE then comes from the VAE row. The panel shows the row only for models that need it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QMenu, QToolButton, QWidget

from desktop.engine.library.encoder import encoder_names, fits_model


class TextEncoderRow(QWidget):
    """A folder path to type or paste, a button that picks one, and a menu of the library's text encoders."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit(objectName="text_encoders_edit")
        self.edit.setClearButtonEnabled(True)
        self.edit.setPlaceholderText(self.tr("A diffusers folder of the same family, or library encoders"))
        self.edit.setToolTip(self.tr(
            "This model file holds the transformer only: its text encoders and VAE come from a diffusers "
            "folder of the same family (for Chroma, a Chroma or Flux.1 folder), or from text encoders in the "
            "library (CLIP and T5 files for Flux, SD3 and Chroma, the T5 file alone for PixArt; a Qwen file for "
            "Qwen-Image, LongCat-Image, "
            "Z-Image, Ovis-Image and Flux.2 Klein; a Qwen3-VL 4B file for Krea 2 and FLUX.3, Qwen3-VL 8B (with its "
            "vision tower) for Qwen-Image 2.1, whose VAE is its folder's vae file; ComfyUI's Mistral file for "
            "Flux.2 dev and its Ministral 3 3B file for ERNIE-Image; a Gemma-2 file for Lumina Image 2.0 and Sana "
            "(with Sana's DC-AE in the VAE row), the "
            "Long-CLIP L and G, T5 and Llama 3.1 files for HiDream-I1 and a Pile-T5-XL file for AuraFlow and Pony "
            "V7, whose tokenizers come from the Tokenizer folder setting: pick them with Library, "
            "and the VAE in the VAE row). "
            "For Qwen-Image 2.1 a folder is its diffusers folder, or one holding text_encoder/, processor/ and vae/"
        ))  # fmt: skip
        self.browse_button = QToolButton(objectName="text_encoders_button", text="…")
        self.browse_button.setToolTip(self.tr("Choose the folder"))
        self.browse_button.clicked.connect(self.choose_folder)
        self.library_menu = QMenu(self, objectName="text_encoders_library_menu")
        self.library_menu.aboutToShow.connect(self._show_chosen)
        self.library_button = QToolButton(objectName="text_encoders_library_button", text=self.tr("Library"))
        self.library_button.setToolTip(self.tr("Text encoders from the library (marble encoders import FILE)"))
        self.library_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.library_button.setMenu(self.library_menu)
        self.library_button.setEnabled(False)
        self._families: dict[str, str | None] = {}
        self._model_family: str | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.library_button)
        layout.addWidget(self.browse_button)

    def set_names(self, names: Sequence[str], families: Mapping[str, str | None] | None = None) -> None:
        """The library's text encoders, offered as ticks in the Library menu; `families`: each one's encoder
        family ("clip-l", "qwen3", "mistral3", ...; None when unread), which show_for filters by."""
        self.library_menu.clear()
        self._families = dict(families or {})
        for name in names:
            # "&" would be taken for a mnemonic: the name is shown doubled, and kept as the action's data.
            action = self.library_menu.addAction(name.replace("&", "&&"))
            action.setData(name)
            action.setCheckable(True)
            action.toggled.connect(self._write_chosen)
        self.show_for(self._model_family)

    def show_for(self, model_family: str | None) -> None:
        """Offer only the encoders a model of `model_family` reads (CLIP and T5 for Flux and SD3, a Qwen3 for
        Z-Image and Flux.2 Klein, a Mistral for Flux.2 dev, ...); every one when the family is unknown."""
        self._model_family = model_family
        for action in self.library_menu.actions():
            action.setVisible(fits_model(self._families.get(action.data()), model_family))
        self.library_button.setEnabled(any(action.isVisible() for action in self.library_menu.actions()))

    def chosen_names(self) -> list[str]:
        # A hidden tick (another family's encoder, chosen for the model before) does not travel.
        return [action.data() for action in self.library_menu.actions() if action.isChecked() and action.isVisible()]

    @Slot()
    def _show_chosen(self) -> None:
        chosen = {name.casefold() for name in encoder_names(self.edit.text())}
        for action in self.library_menu.actions():
            action.blockSignals(True)
            action.setChecked(action.data().casefold() in chosen)
            action.blockSignals(False)

    @Slot()
    def _write_chosen(self) -> None:
        # A folder in the field is replaced: library encoders and a folder are two ways of choosing, not one.
        self.edit.setText(",".join(self.chosen_names()))

    @Slot()
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("Text encoders and VAE folder"), self.edit.text())
        if folder:
            self.edit.setText(folder)
