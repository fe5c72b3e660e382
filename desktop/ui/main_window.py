"""The main window: prompt and settings on the left, the canvas in the middle, progress at the bottom.

The window only turns widgets into a request and events into pixels and text. Generation runs on the
controller's thread; folder scans and thumbnails run on a small thread pool; the GUI thread never
waits for either, and never imports torch.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, QSize, Qt, QThreadPool, QUrl, Signal, Slot
from PySide6.QtGui import (
    QAction,
    QDesktopServices,
    QIcon,
    QImage,
    QImageReader,
    QKeySequence,
    QPixmap,
)
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop.bridge.controller import GenerationController
from desktop.engine.errors import InvalidRequest, MarbleError
from desktop.engine.events import (
    ImageSaved,
    ImageUnsaved,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobStarted,
    JobWarning,
    ModelLoaded,
    ModelLoading,
    PreviewReady,
    StepProgress,
)
from desktop.engine.jobs import Job
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.embedding_vectors import vector_counts
from desktop.engine.library.native_size import native_size
from desktop.engine.request import GenerationRequest
from desktop.engine.token_count import TokenCounter
from desktop.ui.canvas import CanvasToolbar, MaskCanvas
from desktop.ui.canvas.picture_view import MAX_IMAGE_PIXELS
from desktop.ui.history_panel import HistoryPanel
from desktop.ui.parameter_panel import ParameterPanel
from desktop.ui.prompt_editor import PromptEditor
from desktop.ui.queue_panel import QueuePanel

WINDOW_TITLE = "Marble Studio"
THUMBNAIL_SIZE = 96
PATH_ROLE = Qt.ItemDataRole.UserRole

log = logging.getLogger(__name__)

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


class _Relay(QObject):
    """Carries results of thread-pool tasks back to the GUI thread (emitted there, queued here).

    Signals:
        models_listed(object, object, str): model names found (a list), their native sizes (a dict of
            name -> side in pixels, for the models that tell) and an error text ("" when none).
        thumbnail_loaded(str, QImage): a scaled image for a result path (null when unreadable).
        token_counter_loaded(object): a `TokenCounter`, or None when its merges file is unreadable.
        embedding_vectors_read(object): the library's embeddings, a dict of name -> vectors.
    """

    models_listed = Signal(object, object, str)
    thumbnail_loaded = Signal(str, QImage)
    token_counter_loaded = Signal(object)
    embedding_vectors_read = Signal(object)


class MainWindow(QMainWindow):
    """The whole studio in one window.

    Signals:
        models_listed(list): the model list was refreshed with these names.
        job_submitted(object): the user's request became this queued `Job`.
        result_shown(str): the canvas now shows this finished image file.
    """

    models_listed = Signal(list)
    job_submitted = Signal(object)
    result_shown = Signal(str)

    def __init__(
        self,
        controller: GenerationController,
        catalog: ModelCatalog,
        outputs_folder: Path | None = None,
        parent: QWidget | None = None,
        inputs_folder: Path | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(WINDOW_TITLE)
        self.setObjectName("main_window")
        self._controller = controller
        self._catalog = catalog
        self._outputs_folder = outputs_folder
        # Where the canvas's source image and mask are saved for a job (the app's cache/inputs).
        self._inputs_folder = inputs_folder or Path(tempfile.gettempdir()) / "marble-inputs"
        # Created before the relay, so it is destroyed first: its destructor waits for running tasks,
        # which may still emit on the relay.
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(2)
        self._relay = _Relay(self)
        self._relay.models_listed.connect(self._on_models_listed)
        self._relay.thumbnail_loaded.connect(self._on_thumbnail_loaded)
        self._relay.token_counter_loaded.connect(self._on_token_counter_loaded)
        self._relay.embedding_vectors_read.connect(self._on_embedding_vectors_read)
        self._embeddings_folder: Path | None = None

        self._job_id: str | None = None
        self._display_size: tuple[int, int] | None = None
        self._images_total = 0
        self._previews_shown = 0
        self._state_text = "Ready"
        self._shown_path: str | None = None

        self.prompt_editor = PromptEditor()
        self.parameter_panel = ParameterPanel()
        self.canvas = MaskCanvas()
        self.canvas_toolbar = CanvasToolbar(self.canvas)
        self.canvas_toolbar.problem.connect(lambda text: self.message_bar.show_message(text, "error"))
        self.result_strip = _result_strip()
        self.queue_panel = QueuePanel()
        self.message_bar = self.queue_panel.message_bar
        self._build_layout()
        self._build_actions()
        self.setStyleSheet(_WINDOW_STYLE)

        self.parameter_panel.models_refresh_requested.connect(self.refresh_models)
        self.parameter_panel.open_models_folder_requested.connect(self.open_models_folder)
        self.parameter_panel.emphasis_changed.connect(self.prompt_editor.set_emphasis)
        self.queue_panel.generate_requested.connect(self.generate)
        self.queue_panel.cancel_requested.connect(self.cancel)
        # Clicks, and arrow keys moving the current item; `_show_result` skips what is already shown.
        self.result_strip.itemClicked.connect(self._on_result_clicked)
        self.result_strip.currentItemChanged.connect(self._on_result_clicked)

        controller.busy_changed.connect(self._on_busy_changed)
        controller.queue_changed.connect(self._update_status)
        controller.job_started.connect(self._on_job_started)
        controller.model_loading.connect(self._on_model_loading)
        controller.model_loaded.connect(self._on_model_loaded)
        controller.step_progressed.connect(self._on_step_progressed)
        controller.preview_ready.connect(self._on_preview_ready)
        controller.job_warning.connect(self._on_job_warning)
        controller.image_saved.connect(self._on_image_saved)
        controller.job_finished.connect(self._on_job_finished)
        controller.job_failed.connect(self._on_job_failed)
        controller.job_cancelled.connect(self._on_job_cancelled)
        controller.image_unsaved.connect(self._on_image_unsaved)
        controller.pending_images_changed.connect(lambda count: self.save_unsaved_action.setEnabled(count > 0))
        self.history_panel: HistoryPanel | None = None

        self.resize(1280, 820)
        self.refresh_models()

    # ----------------------------------------------------------------------------------- layout

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
        scroll.setMinimumWidth(340)

        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(0, 0, 0, 0)
        centre_layout.setSpacing(0)
        centre_layout.addWidget(self.canvas_toolbar)
        centre_layout.addWidget(self.canvas, 1)
        centre_layout.addWidget(self.result_strip)

        splitter = QSplitter(Qt.Orientation.Horizontal)
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

    def _build_actions(self) -> None:
        self.generate_action = self._action(
            "&Generate", self.generate, [QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")]
        )
        self.cancel_action = self._action("&Cancel", self.cancel, [QKeySequence(Qt.Key.Key_Escape)])
        self.cancel_all_action = self._action("Cancel &all", self.cancel_all, [QKeySequence("Shift+Escape")])
        self.cancel_action.setEnabled(False)
        self.cancel_all_action.setEnabled(False)
        self.refresh_models_action = self._action(
            "&Refresh models", self.refresh_models, [QKeySequence(QKeySequence.StandardKey.Refresh)]
        )
        open_models = self._action("Open &models folder", self.open_models_folder, [])
        open_outputs = self._action("Open &outputs folder", self.open_outputs_folder, [])
        quit_action = self._action("&Quit", self.close, [QKeySequence(QKeySequence.StandardKey.Quit)])
        fit = self._action("&Fit to window", self.canvas.fit_to_window, [QKeySequence("Ctrl+0")])
        actual = self._action("&Actual size", self.canvas.show_actual_size, [QKeySequence("Ctrl+1")])
        open_outputs.setEnabled(self._outputs_folder is not None)
        self.save_unsaved_action = self._action("Save &unsaved images…", self.save_unsaved_images, [])
        self.open_image_action = self._action(
            "&Open image as source…", self.open_source_image, [QKeySequence(QKeySequence.StandardKey.Open)]
        )
        self.paste_image_action = self._action(
            "&Paste image as source", self.paste_source_image, [QKeySequence(QKeySequence.StandardKey.Paste)]
        )
        self.save_unsaved_action.setEnabled(False)

        self.file_menu = file_menu = self.menuBar().addMenu("&File")
        file_menu.addActions([self.open_image_action, self.paste_image_action])
        file_menu.addSeparator()
        file_menu.addActions([open_models, open_outputs, self.refresh_models_action, self.save_unsaved_action])
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        job_menu = self.menuBar().addMenu("&Generate")
        job_menu.addActions([self.generate_action, self.cancel_action, self.cancel_all_action])
        self.view_menu = view_menu = self.menuBar().addMenu("&View")
        view_menu.addActions([fit, actual])

    def _action(self, text: str, slot: object, shortcuts: Sequence[QKeySequence]) -> QAction:
        action = QAction(text, self)
        action.setShortcuts(list(shortcuts))
        # Window-wide, so Ctrl+Enter works while typing in the prompt and Esc while anywhere.
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    # ----------------------------------------------------------------------------------- public

    @property
    def controller(self) -> GenerationController:
        return self._controller

    @property
    def previews_shown(self) -> int:
        """Previews the canvas showed for the current (or last) job."""
        return self._previews_shown

    def result_paths(self) -> list[str]:
        return [self.result_strip.item(row).data(PATH_ROLE) for row in range(self.result_strip.count())]

    def wait_for_background(self, msecs: int = 5000) -> bool:
        """Wait for folder scans and thumbnails (tests and shutdown; never call it mid-session)."""
        return self._pool.waitForDone(msecs)

    @Slot()
    def generate(self) -> Job | None:
        """Queue a job from the current prompt and settings; a rejected request shows why."""
        request = self.parameter_panel.request(
            self.prompt_editor.prompt(), self.prompt_editor.negative_prompt()
        )
        self.message_bar.clear()
        try:
            request = self.canvas_toolbar.edit_request(request, self._inputs_folder)
            job = self._controller.submit(request)
        except (InvalidRequest, OSError) as error:  # OSError: the cache folder for the source is not writable
            self.message_bar.show_message(str(error), "error")
            return None
        self.job_submitted.emit(job)
        self._update_status()
        return job

    @Slot()
    def cancel(self) -> None:
        if self._controller.busy:
            self._controller.cancel()
            self._set_state("Cancelling…")

    @Slot()
    def cancel_all(self) -> None:
        if self._controller.busy or self._controller.pending_jobs():
            self._controller.cancel_all()
            self._set_state("Cancelling…")

    @Slot()
    def refresh_models(self) -> None:
        """Scan the models folder off the GUI thread; the list updates when the scan is done."""
        catalog, relay = self._catalog, self._relay

        def scan() -> None:
            sizes: dict[str, int] = {}
            try:
                entries, error = catalog.entries(), ""
                for entry in entries:
                    side = native_size(entry.path)
                    if side is not None:
                        sizes[entry.name] = side
            except OSError as exc:
                entries, error = [], f"Cannot read the models folder {catalog.folder}: {exc.strerror or exc}."
            relay.models_listed.emit([entry.name for entry in entries], sizes, error)

        self._pool.start(scan)

    def load_token_counter(self, merges_file: Path, embeddings_folder: Path | None = None) -> None:
        """Read the tokenizer's merges off the GUI thread (~60 ms of Python); the prompt fields show
        their token counts once it is read. Without it (an unreadable file) they show none. With the
        library's embeddings folder, an embedding's name counts as its vectors (headers only)."""
        relay = self._relay
        self._embeddings_folder = embeddings_folder

        def load() -> None:
            try:
                counter: TokenCounter | None = TokenCounter.from_merges_file(merges_file)
            except (OSError, ValueError, UnicodeDecodeError):
                log.warning("No token counts: cannot read %s", merges_file, exc_info=True)
                counter = None
            if counter is not None and embeddings_folder is not None:
                counter.set_embeddings(_embedding_vectors(embeddings_folder))
            relay.token_counter_loaded.emit(counter)

        self._pool.start(load)

    def refresh_embedding_counts(self) -> None:
        """Read the embeddings' vector counts again (the library changed) off the GUI thread."""
        folder, relay = self._embeddings_folder, self._relay
        if folder is not None:
            self._pool.start(lambda: relay.embedding_vectors_read.emit(_embedding_vectors(folder)))

    @Slot(object)
    def _on_token_counter_loaded(self, counter: TokenCounter | None) -> None:
        if counter is not None:
            self.prompt_editor.set_token_counter(counter)

    @Slot(object)
    def _on_embedding_vectors_read(self, vectors: dict[str, int]) -> None:
        self.prompt_editor.set_embeddings(vectors)

    def add_history_panel(self, panel: HistoryPanel) -> None:
        """Dock the history on the right and wire its actions to the editor, settings and canvas."""
        self.history_panel = panel
        dock = QDockWidget("History", self, objectName="history_dock")
        dock.setWidget(panel)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetClosable
        )
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.view_menu.addAction(dock.toggleViewAction())
        panel.reuse_requested.connect(self._reuse_request)
        panel.seed_reuse_requested.connect(lambda seed: self.parameter_panel.seed_spin.setValue(seed))
        # A history image on the canvas is the source for image-to-image and inpainting.
        panel.send_to_canvas_requested.connect(self.canvas_toolbar.load_source_file)
        panel.message.connect(lambda text, level: self.message_bar.show_message(text, level))

    @Slot()
    def open_source_image(self, path: str | None = None) -> bool:
        """Pick an image file (PNG, JPEG, WebP) and make it the image-to-image / inpainting source."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Open image as source", str(self._outputs_folder or ""), "Images (*.png *.jpg *.jpeg *.webp)"
            )
        return bool(path) and self.canvas_toolbar.load_source_file(path)

    @Slot()
    def paste_source_image(self) -> bool:
        # Text fields keep Ctrl+V for text: the window shortcut fires only when no editor takes the key.
        return self.canvas_toolbar.paste_source(QApplication.clipboard().image())

    @Slot(object)
    def _reuse_request(self, request: GenerationRequest) -> None:
        self.prompt_editor.set_prompts(request.prompt, request.negative_prompt)
        self.parameter_panel.set_from_request(request)

    @Slot()
    def save_unsaved_images(self, folder: str | None = None) -> list[Path]:
        """Write the images a failed save kept in memory into a folder the user picks."""
        if not self._controller.pending_images:
            return []
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Save unsaved images in")
            if not folder:
                return []
        try:
            saved = self._controller.save_pending_images(folder)
        except MarbleError as error:
            self.message_bar.show_message(f"{error} The images are still kept: try another folder.", "error")
            return []
        self.message_bar.show_message(f"Saved {len(saved)} image(s) in {folder}.", "info")
        return saved

    @Slot()
    def open_models_folder(self) -> None:
        _open_folder(self._catalog.folder)

    @Slot()
    def open_outputs_folder(self) -> None:
        if self._outputs_folder is not None:
            _open_folder(self._outputs_folder)

    # --------------------------------------------------------------------- controller events

    @Slot(bool)
    def _on_busy_changed(self, busy: bool) -> None:
        self.queue_panel.set_busy(busy)
        self.cancel_action.setEnabled(busy)
        self.cancel_all_action.setEnabled(busy)
        if not busy:
            self._update_status()

    @Slot(object)
    def _on_job_started(self, event: JobStarted) -> None:
        request = event.request
        self._job_id = event.job_id
        self._display_size = (request.width, request.height)
        self._images_total = request.images_total
        self._previews_shown = 0
        self.parameter_panel.set_last_seed(request.seed)
        self.queue_panel.reset_progress("Starting…")
        self._set_state(f"Running, seed {request.seed}")

    @Slot(object)
    def _on_model_loading(self, event: ModelLoading) -> None:
        self.queue_panel.show_waiting(f"Loading {event.model}…")

    @Slot(object)
    def _on_model_loaded(self, event: ModelLoaded) -> None:
        self.queue_panel.reset_progress("Model ready")
        if not event.reused:
            self._set_state(f"Loaded {event.model} in {event.seconds:.1f} s")

    @Slot(object)
    def _on_step_progressed(self, event: StepProgress) -> None:
        if event.job_id == self._job_id:
            self.queue_panel.show_progress(event.step, event.total, event.batch_index, event.batch_count)

    @Slot(object)
    def _on_preview_ready(self, event: PreviewReady) -> None:
        if event.job_id != self._job_id:
            return
        self._shown_path = None
        try:
            self.canvas.show_preview(event.image, self._display_size)
        except ValueError:
            return  # a malformed preview is not worth interrupting the job for
        self._previews_shown += 1

    @Slot(object)
    def _on_job_warning(self, event: JobWarning) -> None:
        self.message_bar.show_message(event.message, "warning", append=True)

    @Slot(object)
    def _on_image_saved(self, event: ImageSaved) -> None:
        self._set_state(f"Saved {event.index + 1}/{self._images_total}")

    @Slot(object)
    def _on_image_unsaved(self, event: ImageUnsaved) -> None:
        count = len(self._controller.pending_images)
        self.message_bar.show_message(
            f"{event.message} {count} image{'s are' if count != 1 else ' is'} kept in memory: use "
            "File > Save unsaved images… to put them in another folder.",
            "error",
        )

    @Slot(object)
    def _on_job_finished(self, event: JobFinished) -> None:
        self._set_results(event.paths, event.seeds)
        count = len(event.paths)
        self._set_state(f"Done: {count} image{'s' if count != 1 else ''} in {event.seconds:.1f} s")

    @Slot(object)
    def _on_job_failed(self, event: JobFailed) -> None:
        self.message_bar.show_message(event.message, "error", append=True)
        if event.job_id == self._job_id:
            self.queue_panel.reset_progress("Failed")
        self._set_state("Failed")

    @Slot(object)
    def _on_job_cancelled(self, event: JobCancelled) -> None:
        if event.job_id == self._job_id:
            self.queue_panel.reset_progress("Cancelled")
            self._set_state("Cancelled")
        else:
            self._update_status()

    # --------------------------------------------------------------------------- results strip

    def _set_results(self, paths: Sequence[str], seeds: Sequence[int]) -> None:
        self.result_strip.blockSignals(True)
        self.result_strip.clear()
        for path, seed in zip(paths, seeds, strict=False):
            item = QListWidgetItem(str(seed))
            item.setData(PATH_ROLE, path)
            item.setToolTip(f"Seed {seed}\n{path}")
            item.setSizeHint(QSize(THUMBNAIL_SIZE + 12, THUMBNAIL_SIZE + 28))
            self.result_strip.addItem(item)
            self._load_thumbnail(path)
        self.result_strip.blockSignals(False)
        if paths:
            self.result_strip.setCurrentRow(len(paths) - 1)
            self._show_result(paths[-1])

    def _load_thumbnail(self, path: str) -> None:
        relay = self._relay

        def load() -> None:
            reader = QImageReader(path)
            reader.setAutoTransform(True)
            size = reader.size()
            image = QImage()
            if not size.isValid() or size.width() * size.height() <= MAX_IMAGE_PIXELS:
                image = reader.read()
            if not image.isNull():
                image = image.scaled(
                    THUMBNAIL_SIZE,
                    THUMBNAIL_SIZE,
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            relay.thumbnail_loaded.emit(path, image)

        self._pool.start(load)

    @Slot(str, QImage)
    def _on_thumbnail_loaded(self, path: str, image: QImage) -> None:
        if image.isNull():
            return
        icon = QIcon(QPixmap.fromImage(image))
        for row in range(self.result_strip.count()):
            item = self.result_strip.item(row)
            if item.data(PATH_ROLE) == path:
                item.setIcon(icon)

    @Slot(QListWidgetItem)
    def _on_result_clicked(self, item: QListWidgetItem | None) -> None:
        if item is not None:
            self._show_result(item.data(PATH_ROLE))

    def _show_result(self, path: str) -> None:
        if path == self._shown_path:
            return
        if self.canvas.show_image(path):
            self._shown_path = path
            self.result_shown.emit(path)
        else:
            self.message_bar.show_message(
                f"Cannot open {path}: the file is missing or not an image.", "error"
            )

    # ---------------------------------------------------------------------------------- status

    @Slot(object, object, str)
    def _on_models_listed(self, names: list[str], sizes: dict[str, int], error: str) -> None:
        self.parameter_panel.set_models(names, str(self._catalog.folder), sizes)
        if error:
            self.message_bar.show_message(error, "error")
        self.models_listed.emit(list(names))

    def _set_state(self, text: str) -> None:
        self._state_text = text
        self._update_status()

    @Slot()
    def _update_status(self) -> None:
        queued = len(self._controller.pending_jobs())
        suffix = f" · {queued} queued" if queued else ""
        self.queue_panel.set_status(f"{self._state_text}{suffix}")


def _result_strip() -> QListWidget:
    strip = QListWidget(objectName="result_strip")
    strip.setViewMode(QListWidget.ViewMode.IconMode)
    strip.setFlow(QListWidget.Flow.LeftToRight)
    strip.setWrapping(False)
    strip.setMovement(QListWidget.Movement.Static)
    strip.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    strip.setFixedHeight(THUMBNAIL_SIZE + 44)
    strip.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    strip.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return strip


def _open_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))


def _embedding_vectors(folder: Path) -> dict[str, int]:
    """The embeddings' vector counts; none when the folder cannot be read (names then count as words)."""
    try:
        return vector_counts(folder)
    except OSError:
        log.warning("Embedding names count as words: cannot read %s", folder, exc_info=True)
        return {}
