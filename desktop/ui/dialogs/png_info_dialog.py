"""PNG info: an image's recipe as plain text, and the ways to use it.

`PngInfoDialog` shows one `Recipe` (desktop/engine/recipe.py), what using it would change, and buttons
to use all of it, its prompt only, or the image as the source. `RecipeIntegration` brings images to it
from File > Open image..., from a drop anywhere in the window and from a paste; an image without a
recipe dropped on the canvas becomes the source as before, and a dropped model, LoRA or embedding
file goes to the library import, wherever it lands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal, Slot
from PySide6.QtGui import QAction, QDragEnterEvent, QImage, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.errors import MarbleError
from desktop.engine.library.catalog import is_model_folder
from desktop.engine.library.index import Library
from desktop.engine.metadata import read_image_metadata
from desktop.engine.recipe import RECIPE_FIELDS, Recipe, changes, read_recipe, recipe_text
from desktop.ui.parameter_model import PARAMETER_FIELDS

if TYPE_CHECKING:
    from desktop.ui.main_window import MainWindow

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Weights files of any of these extensions go to the library import (which judges the bytes).
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")
_DRAG_EVENTS = (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop)


class PngInfoDialog(QDialog):
    """One image's recipe, what using it would change, and the buttons to use it.

    Signals:
        use_all_requested(object): the user chose "Use all parameters"; the fields (a dict).
        use_prompt_requested(object): the user chose "Use prompt only"; the prompt fields (a dict).
        use_source_requested(): the user chose "Use as source image".
        use_control_requested(): the user chose "Use as control image".
    """

    use_all_requested = Signal(object)
    use_prompt_requested = Signal(object)
    use_source_requested = Signal()
    use_control_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("png_info_dialog")
        self.setWindowTitle(self.tr("PNG info"))
        self.resize(620, 560)
        self._recipe: Recipe | None = None
        self.title = QLabel(objectName="png_info_title")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        # Plain text: a prompt from a file is never rendered as HTML.
        self.text = QPlainTextEdit(objectName="png_info_text", readOnly=True)
        self.changes_label = QLabel(self.tr("Using all parameters changes:"))
        self.changes_text = QPlainTextEdit(objectName="png_info_changes", readOnly=True)
        self.changes_text.setMaximumHeight(130)
        self.use_all_button = QPushButton(self.tr("Use &all parameters"), objectName="use_all_button")
        self.use_prompt_button = QPushButton(self.tr("Use &prompt only"), objectName="use_prompt_button")
        self.use_source_button = QPushButton(self.tr("Use as &source image"), objectName="use_source_button")
        self.use_control_button = QPushButton(self.tr("Use as &control image"), objectName="use_control_button")
        self.use_control_button.setToolTip(self.tr("Add a control unit with this image (Control units in the panel)"))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        for button in (self.use_all_button, self.use_prompt_button, self.use_source_button, self.use_control_button):
            buttons.addButton(button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.changes_label)
        layout.addWidget(self.changes_text)
        layout.addWidget(buttons)
        self.use_all_button.clicked.connect(lambda: self._use(dict(self._fields()), self.use_all_requested))
        self.use_prompt_button.clicked.connect(lambda: self._use(self._prompt_fields(), self.use_prompt_requested))
        self.use_source_button.clicked.connect(self._use_source)
        self.use_control_button.clicked.connect(self._use_control)

    @property
    def recipe(self) -> Recipe | None:
        return self._recipe

    def show_recipe(self, recipe: Recipe, label: str, current: dict[str, Any]) -> None:
        """Show `recipe` (of the image called `label`) against the `current` settings."""
        self._recipe = recipe
        self.title.setText(self.tr("{image}: {format}").format(image=label, format=recipe.format_name))
        # The recipe and its changes are the engine's text (English, shared with the CLI).
        self.text.setPlainText(recipe_text(recipe))
        listed = changes(recipe.fields, current)
        self.changes_text.setPlainText(
            "\n".join(str(change) for change in listed) or self.tr("Nothing: the settings match."))
        self.changes_label.setVisible(recipe.has_recipe)
        self.changes_text.setVisible(recipe.has_recipe)
        self.use_all_button.setEnabled(recipe.has_recipe)
        self.use_prompt_button.setEnabled(recipe.has_recipe)

    def _fields(self) -> dict[str, Any]:
        return dict(self._recipe.fields) if self._recipe else {}

    def _prompt_fields(self) -> dict[str, Any]:
        return self._recipe.prompt_fields() if self._recipe else {}

    def _use(self, fields: dict[str, Any], signal: Any) -> None:
        signal.emit(fields)
        self.accept()

    def _use_source(self) -> None:
        self.use_source_requested.emit()
        self.accept()

    def _use_control(self) -> None:
        self.use_control_requested.emit()
        self.accept()


class RecipeIntegration(QObject):
    """Routes opened, dropped and pasted images to PNG info, and dropped weights to the library import.

    Signals:
        recipe_applied(object): these fields (a dict) were put into the prompt and the settings.
    """

    recipe_applied = Signal(object)

    def __init__(
        self, window: MainWindow, library: Library, import_weights: Callable[[list[str]], None] | None = None
    ) -> None:
        super().__init__(window)
        self._window = window
        self._library = library
        self._import_weights = import_weights
        self._source: str | bytes | None = None  # the image the dialog shows: a file, or pasted PNG bytes
        self.dialog = PngInfoDialog(window)
        self.dialog.use_all_requested.connect(self.apply_fields)
        self.dialog.use_prompt_requested.connect(self.apply_fields)
        self.dialog.use_source_requested.connect(self._use_as_source)
        self.dialog.use_control_requested.connect(self._use_as_control)
        self.open_action = QAction(self.tr("&Open image…"), window, objectName="open_image_info_action")
        self.open_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Open))
        self.open_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.open_action.triggered.connect(lambda: self.open_image())
        window.addAction(self.open_action)
        menu = window.file_menu
        menu.insertAction(menu.actions()[0] if menu.actions() else None, self.open_action)
        window.recipes = self
        window.setAcceptDrops(True)
        app = QApplication.instance()
        if app is not None:
            # Application-wide: a drop on any widget of the window (a prompt field, the canvas) comes here
            # before that widget takes it as text or as a source.
            app.installEventFilter(self)

    # ------------------------------------------------------------------------------------- entry points

    def open_image(self, path: str | None = None) -> bool:
        """File > Open image...: show the picked image's PNG info."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self._window, self.tr("Open image"), str(self._window.outputs_folder or ""),
                self.tr("Images (*.png *.jpg *.jpeg *.webp)"),
            )
            if not path:
                return False
        return self.show_info(path)

    def paste(self) -> bool:
        """Paste: an image file or PNG with a recipe opens PNG info; a plain picture becomes the source."""
        mime = QApplication.clipboard().mimeData()
        files = [url.toLocalFile() for url in (mime.urls() if mime else []) if url.isLocalFile()]
        images = [path for path in files if path.lower().endswith(IMAGE_SUFFIXES)]
        if images:
            return self.show_info(images[0])
        data = bytes(mime.data("image/png").data()) if mime is not None and mime.hasFormat("image/png") else b""
        if data and self._recipe_of(data, quiet=True) is not None:
            return self.show_info(data)
        return self._window.paste_source_image()

    def drop_image(self, path: str, on_canvas: bool) -> bool:
        """A dropped image: on the canvas without a recipe it becomes the source, as it always did."""
        if on_canvas:
            recipe = self._recipe_of(path, quiet=True)
            if recipe is None or not recipe.has_recipe:
                return self._window.canvas_toolbar.load_source_file(path)
        return self.show_info(path)

    def show_info(self, source: str | bytes) -> bool:
        recipe = self._recipe_of(source)
        if recipe is None:
            return False
        self._source = source
        label = Path(source).name if isinstance(source, str) else self.tr("Pasted image")
        self.dialog.show_recipe(recipe, label, self._current())
        self.dialog.show()
        return True

    # ------------------------------------------------------------------------------------------ using

    @Slot(object)
    def apply_fields(self, fields: dict[str, Any]) -> None:
        window = self._window
        editor = window.prompt_editor
        if "prompt" in fields or "negative_prompt" in fields:
            editor.set_prompts(
                fields.get("prompt", editor.prompt()), fields.get("negative_prompt", editor.negative_prompt())
            )
        settings = {name: value for name, value in fields.items() if name in PARAMETER_FIELDS}
        window.parameters.update(**settings)
        self.recipe_applied.emit(dict(fields))

    @Slot()
    def _use_as_source(self) -> None:
        if isinstance(self._source, str):
            self._window.canvas_toolbar.load_source_file(self._source)
        elif isinstance(self._source, bytes):
            self._window.canvas_toolbar.paste_source(QImage.fromData(self._source))

    @Slot()
    def _use_as_control(self) -> None:
        """A new control unit with the image: a file as it is; pasted bytes saved into the inputs folder."""
        controls = self._window.parameter_panel.control_list
        if isinstance(self._source, str):
            path = self._source
        elif isinstance(self._source, bytes):
            try:
                path = controls.store_image(self._source)
            except OSError as error:
                self._window.message_bar.show_message(str(error), "error")
                return
        else:
            return
        if controls.add_unit_with_image(path) is None:
            self._window.message_bar.show_message(
                self.tr("No control unit added: import a control model first, or remove a unit."), "error")

    def _recipe_of(self, source: str | bytes, quiet: bool = False) -> Recipe | None:
        try:
            metadata = read_image_metadata(source)
            # Names and hashes are all a recipe matches: no file headers read here, on the GUI thread.
            model, lora, vae, control, upscaler = (
                self._library.records(kind, read_headers=False)
                for kind in ("model", "lora", "vae", "control", "upscaler")
            )
            return read_recipe(metadata, model, lora, vae, control, upscaler)
        except (MarbleError, OSError) as error:
            if not quiet:
                self._window.message_bar.show_message(str(error), "error")
            return None

    def _current(self) -> dict[str, Any]:
        current = {
            name: self._window.parameters.value(name)
            for name in RECIPE_FIELDS
            if name not in _PROMPTS and name in PARAMETER_FIELDS
        }
        current["prompt"] = self._window.prompt_editor.prompt()
        current["negative_prompt"] = self._window.prompt_editor.negative_prompt()
        return current

    # ------------------------------------------------------------------------------------------ drops

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if event.type() not in _DRAG_EVENTS or not isinstance(watched, QWidget):
            return False
        if watched.window() is not self._window:
            return False
        weights, images = _dropped(event)  # type: ignore[arg-type]
        if self._import_weights is None:
            weights = []
        if not weights and not images:
            return False
        event.acceptProposedAction()  # type: ignore[attr-defined]
        if event.type() == QEvent.Type.Drop:
            if weights:
                self._import_weights(weights)  # type: ignore[misc]
            if images:
                canvas = self._window.canvas
                on_canvas = watched is canvas or canvas.isAncestorOf(watched)
                self.drop_image(images[0], on_canvas)
        return True


_PROMPTS = ("prompt", "negative_prompt")


def _dropped(event: QDragEnterEvent) -> tuple[list[str], list[str]]:
    mime = event.mimeData()
    if mime is None or not mime.hasUrls():
        return [], []
    weights, images = [], []
    for url in mime.urls():
        if not url.isLocalFile():
            continue
        path = Path(url.toLocalFile())
        suffix = path.suffix.lower()
        if is_model_folder(path) or suffix in WEIGHT_SUFFIXES:
            weights.append(str(path))
        elif suffix in IMAGE_SUFFIXES:
            images.append(str(path))
    return weights, images
