"""The main window: prompt and settings on the left, the canvas in the middle, progress at the bottom.

The window only assembles its parts and routes between them: the settings become a request, the
controller's events reach `JobStatus`, finished images reach the `ResultStrip` and the canvas.
Generation runs on the controller's thread; folder scans and thumbnails run on a small thread pool
(`BackgroundReads`, the strip); the GUI thread never waits for either, and never imports torch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QT_TRANSLATE_NOOP, Qt, QThreadPool, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QFrame,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop.bridge.controller import GenerationController
from desktop.engine.errors import InvalidRequest, MarbleError
from desktop.engine.imaging import store_by_hash
from desktop.engine.jobs import Job
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.demo import DEMO_MODEL_DRAWS
from desktop.engine.request import GenerationRequest
from desktop.engine.token_count import TokenCounter
from desktop.ui.background_reads import BackgroundReads
from desktop.ui.canvas import CanvasToolbar, MaskCanvas
from desktop.ui.canvas.control_layer import ControlDrawBar
from desktop.ui.canvas.picture_view import png_bytes
from desktop.ui.control_drawing import ControlDrawing
from desktop.ui.history_panel import HistoryPanel
from desktop.ui.job_status import JobStatus
from desktop.ui.parameter_model import ParameterModel
from desktop.ui.parameter_panel import ParameterPanel
from desktop.ui.prompt_editor import PromptEditor
from desktop.ui.queue_panel import QueuePanel
from desktop.ui.reference_images_row import present_files
from desktop.ui.result_strip import ResultStrip
from desktop.ui.window_actions import build_window_actions

if TYPE_CHECKING:
    from desktop.ui.dialogs.png_info_dialog import RecipeIntegration

WINDOW_TITLE = QT_TRANSLATE_NOOP("MainWindow", "Marble Studio")
# The narrowest the history dock gets and its first width: with every panel open the
# window must fit a 1280 x 720 screen (a 1366 x 768 laptop, or a 2560 x 1440 panel at 200 %).
HISTORY_MIN_WIDTH = 220
HISTORY_WIDTH = 320

_WINDOW_STYLE = """
#message_bar { border-radius: 4px; background: #2d3a4a; }
#message_bar[level="error"] { background: #5c2327; }
#message_bar[level="warning"] { background: #57461c; }
#generate_button {
    font-weight: bold; color: white; background: #3d6fb5;
    border: 1px solid #2f5a96; border-radius: 4px; padding: 6px 18px;
}
#generate_button:hover { background: #4a7fc8; }
#generate_button:pressed { background: #2f5a96; }
"""


class MainWindow(QMainWindow):
    """The whole studio in one window.

    Signals:
        models_listed(list): the model list was refreshed with these names.
        families_listed(object): the models' families (name -> "sd1", "sd2", "sdxl", ...), just before
            `models_listed` for the same scan.
        job_submitted(object): the user's request became this queued `Job`.
        result_shown(str): the canvas now shows this finished image file.
    """

    models_listed = Signal(list)
    families_listed = Signal(object)
    job_submitted = Signal(object)
    result_shown = Signal(str)

    def __init__(
        self,
        controller: GenerationController,
        catalog: ModelCatalog,
        outputs_folder: Path | None = None,
        parent: QWidget | None = None,
        inputs_folder: Path | None = None,
        demo_model: Callable[[], str | None] | None = None,
        chosen_variants: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        """`demo_model` names the library's demo model, read after each models scan, so the prompt
        field can say what it draws when it is selected."""
        super().__init__(parent)
        self.setWindowTitle(self.tr(WINDOW_TITLE))
        self.setObjectName("main_window")
        self._controller = controller
        self._catalog = catalog
        self.outputs_folder = outputs_folder
        # Where the canvas's source image and mask are saved for a job (the app's cache/inputs).
        self._inputs_folder = inputs_folder or Path(tempfile.gettempdir()) / "marble-inputs"
        self._shown_path: str | None = None
        self._demo_model: str | None = None
        # Created before its users, so it is destroyed first: its destructor waits for running tasks,
        # which may still emit on their relays.
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(2)
        self._reads = BackgroundReads(self._pool, catalog, self, demo_model, chosen_variants)

        self.prompt_editor = PromptEditor()
        self.parameters = ParameterModel(parent=self)
        self.parameter_panel = ParameterPanel(self.parameters, pool=self._pool)
        self.canvas = MaskCanvas()
        self.canvas_toolbar = CanvasToolbar(self.canvas)
        self.control_bar = ControlDrawBar(self.canvas)
        self.result_strip = ResultStrip(self._pool)
        self.queue_panel = QueuePanel()
        self.message_bar = self.queue_panel.message_bar
        self.job_status = JobStatus(controller, self.queue_panel, self.canvas, self)
        self._build_layout()
        self.window_actions = build_window_actions(self)
        self.file_menu, self.view_menu = self.window_actions.file_menu, self.window_actions.view_menu
        self.setStyleSheet(_WINDOW_STYLE)
        self._connect_parts()
        self.history_panel: HistoryPanel | None = None
        # PNG info for opened, dropped and pasted images (set by RecipeIntegration; None: sources only).
        self.recipes: RecipeIntegration | None = None

        self.resize(1280, 820)
        self.refresh_models()

    def _connect_parts(self) -> None:
        self.canvas_toolbar.problem.connect(lambda text: self.message_bar.show_message(text, "error"))
        self.parameter_panel.control_list.set_image_store(self._inputs_folder, self._canvas_picture)
        self.control_drawing = ControlDrawing(
            self.canvas, self.control_bar, self.parameter_panel.control_list, self._inputs_folder,
            lambda: (self.parameters.value("width"), self.parameters.value("height")), self,
        )
        self.parameter_panel.models_refresh_requested.connect(self.refresh_models)
        self.parameter_panel.open_models_folder_requested.connect(self.open_models_folder)
        self.parameter_panel.emphasis_changed.connect(self.prompt_editor.set_emphasis)
        self.parameter_panel.family_shown.connect(self.prompt_editor.set_family)
        self.queue_panel.generate_requested.connect(self.generate)
        self.queue_panel.cancel_requested.connect(self.cancel)
        self.result_strip.result_chosen.connect(self._show_result)
        self._reads.families_listed.connect(self.families_listed)
        self._reads.families_listed.connect(self.parameter_panel.set_families)
        self._reads.component_models_listed.connect(self.parameter_panel.set_component_models)
        self._reads.reference_models_listed.connect(self.parameter_panel.set_reference_models)
        self._reads.control_input_models_listed.connect(self.parameter_panel.set_control_input_models)
        self._reads.models_listed.connect(self._on_models_listed)
        self._reads.demo_model_found.connect(self._on_demo_model_found)
        self.parameters.field_changed.connect(self._on_parameter_changed)
        self._reads.token_counter_loaded.connect(self._on_token_counter_loaded)
        self._reads.embedding_vectors_read.connect(self.prompt_editor.set_embeddings)
        self.job_status.seed_drawn.connect(self.parameter_panel.set_last_seed)
        self.job_status.results_ready.connect(self.result_strip.set_results)
        self.job_status.preview_shown.connect(self._forget_shown_result)
        self._controller.busy_changed.connect(self.window_actions.set_busy)
        self._controller.pending_images_changed.connect(self.window_actions.set_pending_images)

    def _build_layout(self) -> None:
        left = QWidget(objectName="settings_column")
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(8, 8, 8, 8)
        left_layout.addWidget(self.prompt_editor, 1)
        left_layout.addWidget(self.parameter_panel)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Wide enough for the column's fields beside a vertical scroll bar; narrower would clip them, as
        # the column only scrolls up and down.
        frame = 2 * scroll.frameWidth()
        scroll.setMinimumWidth(left.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + frame)

        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(0, 0, 0, 0)
        centre_layout.setSpacing(0)
        centre_layout.addWidget(self.canvas_toolbar)
        centre_layout.addWidget(self.control_bar)
        centre_layout.addWidget(self.canvas, 1)
        centre_layout.addWidget(self.result_strip)

        splitter = QSplitter(Qt.Orientation.Horizontal, objectName="main_splitter")
        splitter.addWidget(scroll)
        splitter.addWidget(centre)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([380, 900])
        splitter.setChildrenCollapsible(False)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.queue_panel)
        self.setCentralWidget(central)

    # ----------------------------------------------------------------------------------- public

    @property
    def controller(self) -> GenerationController:
        return self._controller

    @property
    def previews_shown(self) -> int:
        """Previews the canvas showed for the current (or last) job."""
        return self.job_status.previews_shown

    def result_paths(self) -> list[str]:
        return self.result_strip.paths()

    def wait_for_background(self, msecs: int = 5000) -> bool:
        """Wait for folder scans and thumbnails (tests and shutdown; never call it mid-session)."""
        return self._pool.waitForDone(msecs)

    @Slot()
    def generate(self) -> Job | None:
        """Queue a job from the current prompt and settings; a rejected request shows why."""
        self.message_bar.clear()
        try:
            request = self.current_request()
        except (InvalidRequest, OSError) as error:  # OSError: the cache folder for the source is not writable
            self.message_bar.show_message(str(error), "error")
            return None
        return self.submit(request)

    def submit(self, request: GenerationRequest) -> Job | None:
        """Queue `request` (the prompt's job, or one another part of the window built: an upscale)."""
        try:
            job = self._controller.submit(request)
        except InvalidRequest as error:
            self.message_bar.show_message(str(error), "error")
            return None
        self.job_submitted.emit(job)
        self.job_status.update_status()
        return job

    def canvas_picture_file(self) -> str | None:
        """A file holding the canvas's picture: the history file it shows, else its pixels saved in the
        inputs folder (by hash). None when the canvas is empty."""
        image = self.canvas.current_image
        if image is not None and not self.canvas.is_preview and self.canvas.shown_file:
            return self.canvas.shown_file
        data = self._canvas_picture()
        return None if data is None else str(store_by_hash(data, self._inputs_folder))

    def current_request(self) -> GenerationRequest:
        """The next job's request: the prompts, the settings and the canvas's edit (its source image and
        mask saved for the job). Not yet validated; raises InvalidRequest, or OSError when the source
        cannot be saved."""
        self.control_drawing.commit()  # a unit drawn on the canvas reads the drawing as it is now
        request = self.parameters.request(*self.prompt_editor.styled_prompts())
        if self.parameter_panel.ignores_references():
            request = replace(request, reference_images=())
        if self.parameter_panel.ignores_unet_settings():
            request = replace(request, tiling=False, fast_mode=False)
        if self.parameter_panel.ignores_prompt_rewriter() or not request.rewrite_prompt:
            # The boxes stay listed, hidden, for when rewriting is on again.
            request = replace(request, rewrite_prompt=False, layout_boxes=())
        if self.parameter_panel.ignores_controls():
            request = replace(request, controls=())
        return self.canvas_toolbar.edit_request(request, self._inputs_folder)

    def _canvas_picture(self) -> bytes | None:
        """The finished picture on the canvas (else the canvas's source) as file bytes, for a control unit."""
        image = self.canvas.current_image
        shown = self.canvas.shown_file
        if image is None or self.canvas.is_preview:
            image, shown = self.canvas_toolbar.source, None
        if image is None:
            return None
        if shown:
            try:
                return Path(shown).read_bytes()  # the file as it is: no re-encoding
            except OSError:
                pass
        return png_bytes(image)

    @Slot()
    def cancel(self) -> None:
        if self._controller.busy:
            self._controller.cancel()
            self.job_status.set_state(self.tr("Cancelling…"))

    @Slot()
    def cancel_all(self) -> None:
        if self._controller.busy or self._controller.pending_jobs():
            self._controller.cancel_all()
            self.job_status.set_state(self.tr("Cancelling…"))

    @Slot()
    def refresh_models(self) -> None:
        """Scan the models folder off the GUI thread; the list updates when the scan is done."""
        self._reads.scan_models()

    def load_token_counter(self, merges_file: Path, embeddings_folder: Path | None = None) -> None:
        """Read the tokenizer's merges off the GUI thread; the prompt fields show their token counts
        once it is read. Without it (an unreadable file) they show none. With the library's embeddings
        folder, an embedding's name counts as its vectors."""
        self._reads.load_token_counter(merges_file, embeddings_folder)

    def refresh_embedding_counts(self) -> None:
        """Read the embeddings' vector counts again (the library changed) off the GUI thread."""
        self._reads.refresh_embedding_counts()

    def add_history_panel(self, panel: HistoryPanel) -> None:
        """Dock the history on the right and wire its actions to the editor, settings and canvas."""
        self.history_panel = panel
        dock = QDockWidget(self.tr("History"), self, objectName="history_dock")
        # In a scroll area, so the panel's rows of filters and buttons never make the window wider than
        # a laptop screen: a narrow dock scrolls sideways instead (the dock can also be closed, View menu).
        scroll = QScrollArea(objectName="history_scroll")
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumWidth(HISTORY_MIN_WIDTH)
        dock.setWidget(scroll)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.resizeDocks([dock], [HISTORY_WIDTH], Qt.Orientation.Horizontal)
        self.view_menu.addAction(dock.toggleViewAction())
        panel.reuse_requested.connect(self._reuse_request)
        panel.seed_reuse_requested.connect(lambda seed: self.parameters.update(seed=seed))
        # A history image on the canvas is the source for image-to-image and inpainting.
        panel.send_to_canvas_requested.connect(self.canvas_toolbar.load_source_file)
        panel.message.connect(lambda text, level: self.message_bar.show_message(text, level))

    @Slot()
    def open_source_image(self, path: str | None = None) -> bool:
        """Pick an image file (PNG, JPEG, WebP) and make it the image-to-image / inpainting source."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, self.tr("Open image as source"), str(self.outputs_folder or ""),
                self.tr("Images (*.png *.jpg *.jpeg *.webp)")
            )
        return bool(path) and self.canvas_toolbar.load_source_file(path)

    @Slot()
    def paste_image(self) -> bool:
        return self.recipes.paste() if self.recipes is not None else self.paste_source_image()

    @Slot()
    def paste_source_image(self) -> bool:
        # Text fields keep Ctrl+V for text: the window shortcut fires only when no editor takes the key.
        return self.canvas_toolbar.paste_source(QApplication.clipboard().image())

    @Slot()
    def save_unsaved_images(self, folder: str | None = None) -> list[Path]:
        """Write the images a failed save kept in memory into a folder the user picks."""
        if not self._controller.pending_images:
            return []
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, self.tr("Save unsaved images in"))
            if not folder:
                return []
        try:
            saved = self._controller.save_pending_images(folder)
        except MarbleError as error:
            self.message_bar.show_message(
                self.tr("{error} The images are still kept: try another folder.").format(error=error), "error"
            )
            return []
        self.message_bar.show_message(
            self.tr("Saved {count} image(s) in {folder}.").format(count=len(saved), folder=folder), "info"
        )
        return saved

    @Slot()
    def open_models_folder(self) -> None:
        _open_folder(self._catalog.folder)

    @Slot()
    def open_outputs_folder(self) -> None:
        if self.outputs_folder is not None:
            _open_folder(self.outputs_folder)

    # ---------------------------------------------------------------------------------- routing

    @Slot(object)
    def _reuse_request(self, request: GenerationRequest) -> None:
        self.prompt_editor.set_prompts(request.prompt, request.negative_prompt)
        present, missing = present_files(request.reference_images)
        if missing:
            request = replace(request, reference_images=present)
            self.message_bar.show_message(self.tr(
                "Reference images no longer there, left out: {files}"
            ).format(files=", ".join(missing)), "warning")  # fmt: skip
        self.parameters.set_from_request(request)

    @Slot(object, object, str)
    def _on_models_listed(self, names: list[str], sizes: dict[str, int], error: str) -> None:
        self.parameter_panel.set_models(names, str(self._catalog.folder), sizes)
        if error:
            self.message_bar.show_message(error, "error")
        self.models_listed.emit(list(names))

    @Slot(object)
    def _on_demo_model_found(self, name: str | None) -> None:
        self._demo_model = name
        self._update_prompt_hint()

    @Slot(str, object)
    def _on_parameter_changed(self, name: str, _value: object) -> None:
        if name == "model":
            self._update_prompt_hint()

    def _update_prompt_hint(self) -> None:
        demo = self._demo_model is not None and self.parameters.value("model") == self._demo_model
        self.prompt_editor.set_model_hint(DEMO_MODEL_DRAWS if demo else "")

    @Slot(object)
    def _on_token_counter_loaded(self, counter: TokenCounter | None) -> None:
        if counter is not None:
            self.prompt_editor.set_token_counter(counter)

    @Slot()
    def _forget_shown_result(self) -> None:
        # A preview replaced the image on the canvas: choosing that image again must show it again.
        self._shown_path = None

    @Slot(str)
    def _show_result(self, path: str) -> None:
        if path == self._shown_path:
            return
        if self.canvas.show_image(path):
            self._shown_path = path
            self.result_shown.emit(path)
        else:
            self.message_bar.show_message(
                self.tr("Cannot open {path}: the file is missing or not an image.").format(path=path), "error"
            )


def _open_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))


