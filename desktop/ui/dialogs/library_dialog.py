"""The library dialog (models, LoRAs, embeddings) and its hooks into the main window.

All file work (hashing, copying, removing) runs in `LibraryTasks` on a thread pool; this module only
shows results. Names and header metadata are untrusted text: every label and text box is plain text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QT_TRANSLATE_NOOP, QCoreApplication, QEvent, QObject, Qt, QUrl, Slot
from PySide6.QtGui import QAction, QDesktopServices, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop.bridge.library_tasks import LibraryTasks
from desktop.engine.library.catalog import is_model_folder
from desktop.engine.library.control import CONTROL_LORA, FLUX, IP_ADAPTER, REDUX
from desktop.engine.library.few_step import KIND_NAMES, NOT_FEW_STEP
from desktop.engine.library.index import KINDS, LibraryRecord, record_variant_choices
from desktop.engine.library.ip_adapter import XLABS
from desktop.ui.dialogs.png_info_dialog import WEIGHT_SUFFIXES
from desktop.ui.translation import translate

# Translated where shown (translate("LibraryDialog", ...)).
_TAB_TITLES = {
    "model": QT_TRANSLATE_NOOP("LibraryDialog", "Models"),
    "lora": QT_TRANSLATE_NOOP("LibraryDialog", "LoRAs"),
    "embedding": QT_TRANSLATE_NOOP("LibraryDialog", "Embeddings"),
    "vae": QT_TRANSLATE_NOOP("LibraryDialog", "VAEs"),
    "control": QT_TRANSLATE_NOOP("LibraryDialog", "Controls"),
    "upscaler": QT_TRANSLATE_NOOP("LibraryDialog", "Upscalers"),
    "encoder": QT_TRANSLATE_NOOP("LibraryDialog", "Text encoders"),
}
_COLUMNS = (
    QT_TRANSLATE_NOOP("LibraryDialog", "Name"),
    QT_TRANSLATE_NOOP("LibraryDialog", "Architecture"),
    QT_TRANSLATE_NOOP("LibraryDialog", "Size"),
    QT_TRANSLATE_NOOP("LibraryDialog", "AutoV2"),
)
# What a drop may carry: weights files (the import judges the bytes) and folders. One list with the
# application-wide drop handler's (png_info_dialog), which sees a drop first: two lists drifted apart before.
_DROPPABLE_SUFFIXES = frozenset(WEIGHT_SUFFIXES)


class LibraryDialog(QDialog):
    """List, import, remove, rename and reveal library entries; shows hashes and header metadata.

    Signals: none of its own; it reacts to the LibraryTasks signals.
    """

    def __init__(self, tasks: LibraryTasks, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Library"))
        self.setObjectName("library_dialog")
        self.resize(820, 520)
        self._tasks = tasks
        self._records: dict[str, list[LibraryRecord]] = {kind: [] for kind in KINDS}
        self._last_import: tuple[str, str | None] | None = None
        self.open_url: Callable[[QUrl], object] = QDesktopServices.openUrl  # replaceable in tests

        self.tabs = QTabWidget(objectName="library_tabs")
        self.tables: dict[str, QTableWidget] = {}
        for kind in KINDS:
            table = QTableWidget(0, len(_COLUMNS), objectName=f"{kind}_table")
            table.setHorizontalHeaderLabels([translate("LibraryDialog", column) for column in _COLUMNS])
            table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
            table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
            table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
            table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
            table.verticalHeader().hide()
            table.itemSelectionChanged.connect(self._on_selection_changed)
            self.tables[kind] = table
            self.tabs.addTab(table, translate("LibraryDialog", _TAB_TITLES[kind]))
        self.tabs.currentChanged.connect(self._on_selection_changed)

        self.details = QPlainTextEdit(objectName="library_details", readOnly=True)
        self.details.setPlaceholderText(self.tr("Select an entry to see its hashes and the metadata in its header."))
        self.message = QLabel(objectName="library_message")
        self.message.setTextFormat(Qt.TextFormat.PlainText)
        self.message.setWordWrap(True)
        self.progress = QProgressBar(objectName="library_progress")
        self.progress.hide()

        self.import_button = QPushButton(self.tr("&Import…"), objectName="library_import_button")
        self.convert_button = QPushButton(self.tr("&Convert pickle and import"), objectName="library_convert_button")
        self.convert_button.setToolTip(self.tr(
            "Load only the tensors of the pickled file (weights_only) in a separate process and save them as "
            ".safetensors. A file that needs anything more is rejected."
        ))
        self.convert_button.hide()
        self.cancel_button = QPushButton(self.tr("Cancel import"), objectName="library_cancel_button")
        self.cancel_button.hide()
        self.remove_button = QPushButton(self.tr("&Remove"), objectName="library_remove_button")
        self.rename_button = QPushButton(self.tr("Re&name…"), objectName="library_rename_button")
        self.reveal_button = QPushButton(self.tr("Show in &folder"), objectName="library_reveal_button")
        self.variant_button = QPushButton(self.tr("&Variant…"), objectName="library_variant_button")
        self.variant_button.setToolTip(self.tr(
            "Say which model this file is where its tensors cannot: a Qwen-Image or LongCat-Image file that is their "
            "Edit model, a Krea 2 or ERNIE-Image file that is Turbo (ComfyUI's repackaged files do not say), an "
            "ERNIE-Image Turbo folder, a PixArt file in diffusers' names that is PixArt-α 512, or an SD 1.x / SDXL "
            "model that is a few-step one (Lightning, Turbo ...)."
        ))
        self.few_step_button = QPushButton(self.tr("&Few-step kind…"), objectName="library_few_step_button")
        self.few_step_button.setToolTip(self.tr(
            "Say which few-step LoRA this file is where its header does not (an LCM-LoRA as its makers publish it "
            "names nothing): picking it in the LoRA list then brings that kind's steps, CFG and sampler."
        ))
        close_button = QPushButton(self.tr("Close"))
        self.import_button.clicked.connect(self.choose_and_import)
        self.convert_button.clicked.connect(self.convert_last)
        self.cancel_button.clicked.connect(tasks.cancel_import)
        self.remove_button.clicked.connect(lambda: self.remove_selected())
        self.rename_button.clicked.connect(lambda: self.rename_selected())
        self.reveal_button.clicked.connect(self.reveal_selected)
        self.variant_button.clicked.connect(lambda: self.choose_variant_selected())
        self.few_step_button.clicked.connect(lambda: self.choose_few_step_selected())
        close_button.clicked.connect(self.accept)

        buttons = QHBoxLayout()
        for button in (
            self.import_button,
            self.convert_button,
            self.cancel_button,
            self.remove_button,
            self.rename_button,
            self.variant_button,
            self.few_step_button,
            self.reveal_button,
        ):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(close_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 3)
        layout.addWidget(self.details, 2)
        layout.addWidget(self.message)
        layout.addWidget(self.progress)
        layout.addLayout(buttons)

        tasks.records_listed.connect(self._on_records_listed)
        tasks.info_ready.connect(self._on_info_ready)
        tasks.import_progressed.connect(self._on_import_progressed)
        tasks.import_finished.connect(self._on_import_finished)
        tasks.import_cancelled.connect(self._on_import_cancelled)
        tasks.failed.connect(self._on_failed)
        self._update_buttons()
        tasks.list_all()

    # ----------------------------------------------------------------------------------- actions

    def current_kind(self) -> str:
        return KINDS[self.tabs.currentIndex()]

    def selected_record(self) -> LibraryRecord | None:
        kind = self.current_kind()
        rows = self.tables[kind].selectionModel().selectedRows()
        if not rows:
            return None
        row = rows[0].row()
        records = self._records[kind]
        return records[row] if 0 <= row < len(records) else None

    def select(self, kind: str, name: str) -> bool:
        self.tabs.setCurrentIndex(KINDS.index(kind))
        for row, record in enumerate(self._records[kind]):
            if record.name == name:
                self.tables[kind].selectRow(row)
                return True
        return False

    @Slot()
    def choose_and_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            self.tr("Import into {kind}").format(kind=translate("LibraryDialog", _TAB_TITLES[self.current_kind()])),
            "", self.tr("Weights (*.safetensors *.ckpt *.pt *.pth *.bin *.sft *.gguf *.onnx);;All files (*)"),
        )  # fmt: skip
        if path:
            self.import_file(path, self.current_kind())

    def import_file(self, path: str, kind: str | None = None, convert_pickle: bool = False) -> bool:
        if not self._tasks.import_path(path, kind, convert_pickle):
            self._say(self.tr("Another import is still running; wait for it or cancel it."))
            return False
        self._last_import = (path, kind)
        self.convert_button.hide()
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.show()
        self._say(self.tr("Importing {name}…").format(name=Path(path).name))
        return True

    @Slot()
    def convert_last(self) -> None:
        if self._last_import is not None:
            path, kind = self._last_import
            self.import_file(path, kind, convert_pickle=True)

    def remove_selected(self, confirm: bool = True) -> None:
        record = self.selected_record()
        if record is None:
            return
        if confirm:
            answer = QMessageBox.question(
                self, self.tr("Remove from the library"),
                self.tr("Delete {name} ({file}) from the library folder? This cannot be undone.").format(
                    name=record.name, file=record.file),
            )  # fmt: skip
            if answer != QMessageBox.StandardButton.Yes:
                return
        self._tasks.remove(record.kind, record.name)

    def rename_selected(self, new_name: str | None = None) -> None:
        record = self.selected_record()
        if record is None:
            return
        if new_name is None:
            new_name, ok = QInputDialog.getText(self, self.tr("Rename"), self.tr("New name:"), text=record.name)
            if not ok:
                return
        self._tasks.rename(record.kind, record.name, new_name)

    def choose_variant_selected(self, variant: str | None = None) -> None:
        """Mark the selected model file as one of its family's variants (Library.choose_variant); asks which when
        `variant` is None."""
        record = self.selected_record()
        choices = _variant_choices(record)
        if record is None or not choices:
            return
        if variant is None:
            variant = self._ask(self.tr("Model variant"), self.tr("Run {name} as:").format(name=record.name), choices,
                                record.chosen_variant)  # fmt: skip
            if variant is None:
                return
        self._tasks.choose_variant(record.name, variant)

    def choose_few_step_selected(self, kind: str | None = None) -> None:
        """Mark the selected LoRA as a few-step kind, not one, or as its header says (Library.choose_few_step);
        asks which when `kind` is None."""
        record = self.selected_record()
        if record is None or record.kind != "lora":
            return
        if kind is None:
            choices = _few_step_choices(record, self.tr("As its header says ({kind})"), self.tr("Not a few-step LoRA"))
            kind = self._ask(self.tr("Few-step kind"), self.tr("{name} is:").format(name=record.name), choices,
                             record.chosen_few_step)  # fmt: skip
            if kind is None:
                return
        self._tasks.choose_few_step(record.name, kind)

    def _ask(self, title: str, text: str, choices: dict[str, str], current: str) -> str | None:
        """The key of the choice the user picks by its label (`current`'s preselected), or None when cancelled."""
        keys, labels = list(choices), list(choices.values())
        preselected = keys.index(current) if current in keys else 0
        label, ok = QInputDialog.getItem(self, title, text, labels, preselected, False)
        return keys[labels.index(label)] if ok else None

    @Slot()
    def reveal_selected(self) -> None:
        folder = self._tasks.library.folder(self.current_kind())
        # File managers cannot select a file portably; opening its folder works everywhere.
        folder.mkdir(parents=True, exist_ok=True)
        self.open_url(QUrl.fromLocalFile(str(folder)))

    # ----------------------------------------------------------------------------------- results

    @Slot(str, object)
    def _on_records_listed(self, kind: str, records: list[LibraryRecord]) -> None:
        selected = self.selected_record()
        self._records[kind] = list(records)
        table = self.tables[kind]
        table.setRowCount(len(records))
        for row, record in enumerate(records):
            architecture = record.shown_architecture
            if record.kind == "lora" and record.few_step_kind:
                architecture = self.tr("{architecture}, {kind} few-step").format(
                    architecture=architecture, kind=KIND_NAMES[record.few_step_kind])
            values = (record.name, architecture, _size(record.size), record.autov2 or "")
            for column, value in enumerate(values):
                table.setItem(row, column, QTableWidgetItem(value))
        self.tabs.setTabText(KINDS.index(kind), self.tr("{kind} ({count})").format(
            kind=translate("LibraryDialog", _TAB_TITLES[kind]), count=len(records)))
        if selected is not None and selected.kind == kind:
            self.select(kind, selected.name)
        self._update_buttons()

    @Slot(object, object)
    def _on_info_ready(self, record: LibraryRecord, metadata: dict[str, str]) -> None:
        current = self.selected_record()
        if current is None or (current.kind, current.file) != (record.kind, record.file):
            return
        lines = [
            self.tr("Name: {name}").format(name=record.name), self.tr("File: {file}").format(file=record.file),
            self.tr("Architecture: {architecture}").format(architecture=record.architecture),
            self.tr("Format: {format}").format(format=record.format),
            self.tr("Size: {size}").format(size=_size(record.size)),
            self.tr("SHA-256: {hash}").format(hash=record.sha256 or "-"),
            self.tr("AutoV2: {hash}").format(hash=record.autov2 or "-"),
            self.tr("AutoV3: {hash}").format(hash=record.autov3 or "-"),
            self.tr("Source: {source}").format(source=record.source or "-"),
            self.tr("Imported: {date}").format(date=record.imported_at or "-"),
            *(f"{label.capitalize()}: {value}" for label, value in record.dit_details),
        ]  # fmt: skip
        if metadata:
            lines += ["", self.tr("Header metadata:")]
            lines += [f"  {key}: {value}" for key, value in sorted(metadata.items())]
        self.details.setPlainText("\n".join(lines))

    @Slot(int, int)
    def _on_import_progressed(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    @Slot(object)
    def _on_import_finished(self, record: LibraryRecord) -> None:
        self._end_import()
        self._say(self.tr("Imported {name} ({architecture}).").format(
            name=record.name, architecture=record.architecture))

    @Slot()
    def _on_import_cancelled(self) -> None:
        self._end_import()
        self._say(self.tr("Import cancelled; nothing was added."))

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._end_import()
        self._say(message)
        self.convert_button.setVisible("pickled" in message and self._last_import is not None)

    def _end_import(self) -> None:
        self.progress.hide()
        self.cancel_button.hide()

    def _on_selection_changed(self, *_: object) -> None:
        self._update_buttons()
        record = self.selected_record()
        self.details.clear()
        if record is not None:
            self._tasks.info(record.kind, record.name)

    def _update_buttons(self) -> None:
        record = self.selected_record()
        for button in (self.remove_button, self.rename_button):
            button.setEnabled(record is not None)
        self.variant_button.setVisible(self.current_kind() == "model")
        self.variant_button.setEnabled(bool(_variant_choices(record)))
        self.few_step_button.setVisible(self.current_kind() == "lora")
        self.few_step_button.setEnabled(record is not None and record.kind == "lora")

    def _say(self, text: str) -> None:
        self.message.setText(text)

    def done(self, result: int) -> None:  # noqa: D102 - Qt override
        self._tasks.cancel_import()
        super().done(result)


class LibraryIntegration(QObject):
    """Adds the library to a main window: File ▸ Library…, drag-and-drop import, LoRA names in the panel.

    Signals: none; it forwards LibraryTasks results to the window's widgets.
    """

    def __init__(self, window: QMainWindow, tasks: LibraryTasks, file_menu: QMenu | None = None) -> None:
        super().__init__(window)
        self._window = window
        self._tasks = tasks
        self._queue: list[str] = []
        self.dialog: LibraryDialog | None = None
        self.library_action = QAction(self.tr("&Library…"), window, objectName="library_action")
        self.library_action.triggered.connect(self.show_dialog)
        if file_menu is not None:
            first = file_menu.actions()[0] if file_menu.actions() else None
            file_menu.insertAction(first, self.library_action)
        window.setAcceptDrops(True)
        window.installEventFilter(self)
        tasks.records_listed.connect(self._on_records_listed)
        tasks.import_finished.connect(self._on_import_done)
        tasks.import_cancelled.connect(self._next_drop)
        tasks.failed.connect(self._on_failed)
        tasks.list("lora")
        tasks.list("vae")
        tasks.list("upscaler")
        tasks.list("control")
        tasks.list("encoder")
        app = QCoreApplication.instance()
        if app is not None:
            # A running import is cancelled (its partial file removed) before the app goes away.
            app.aboutToQuit.connect(tasks.shutdown)

    @property
    def tasks(self) -> LibraryTasks:
        return self._tasks

    @Slot()
    def show_dialog(self) -> LibraryDialog:
        if self.dialog is None:
            self.dialog = LibraryDialog(self._tasks, self._window)
        if self.dialog.isVisible():
            self.dialog.activateWindow()
        else:
            self.dialog.show()
        return self.dialog

    def import_dropped(self, paths: list[str]) -> None:
        self._queue.extend(paths)
        if not self._tasks.importing:
            self._next_drop()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if watched is self._window and event.type() in (QEvent.Type.DragEnter, QEvent.Type.Drop):
            paths = _droppable_paths(event)  # type: ignore[arg-type]
            if paths:
                event.acceptProposedAction()  # type: ignore[attr-defined]
                if event.type() == QEvent.Type.Drop:
                    self.import_dropped(paths)
                return True
        return super().eventFilter(watched, event)

    @Slot()
    def _next_drop(self) -> None:
        if self._queue and not self._tasks.importing:
            path = self._queue.pop(0)
            self._show(self.tr("Importing {name}…").format(name=Path(path).name), "info")
            self._tasks.import_path(path)

    @Slot(str, object)
    def _on_records_listed(self, kind: str, records: list[LibraryRecord]) -> None:
        panel = getattr(self._window, "parameter_panel", None)
        if kind == "lora" and panel is not None:
            panel.lora_list.set_names([r.name for r in records], {r.name: r.few_step_kind for r in records})
        elif kind == "vae" and panel is not None:
            panel.set_vae_names([r.name for r in records])
        elif kind == "control" and panel is not None:
            # Image encoders are picked by the backend, never by the user.
            # Preprocessors' networks (format "annotator (...)") are found by task, never picked as a unit's model.
            units = [r for r in records if not (r.format or "").startswith(("image-encoder", "annotator"))]
            ips = [r.name for r in units if (r.format or "").startswith("ip-adapter")]
            # Flux.1's image prompts (Redux, XLabs' IP-Adapter) read one picture at every step.
            redux = [r.name for r in units if r.format in (f"{IP_ADAPTER} ({REDUX})", f"{IP_ADAPTER} ({XLABS})")]
            # Flux.1 Control-LoRAs act at every step (Stability's SDXL ones take a range like any ControlNet).
            flux_loras = [r.name for r in units if (r.format or "").startswith(CONTROL_LORA) and r.family == FLUX]
            panel.control_list.set_names([r.name for r in units], ip_adapters=ips,
                                         families={r.name: r.family for r in units}, redux=redux,
                                         every_step=flux_loras)  # fmt: skip
        elif kind == "upscaler" and panel is not None:
            panel.set_upscalers([r.name for r in records])
        elif kind == "encoder" and panel is not None:
            panel.text_encoders_row.set_names([r.name for r in records], {r.name: r.family for r in records})
        elif kind in ("model", "embedding"):
            name = "refresh_models" if kind == "model" else "refresh_embedding_counts"
            refresh = getattr(self._window, name, None)
            if refresh is not None:
                refresh()

    @Slot(object)
    def _on_import_done(self, record: LibraryRecord) -> None:
        self._show(self.tr("Imported {name} into the library ({architecture}).").format(
            name=record.name, architecture=record.architecture), "info")
        self._next_drop()

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._show(message, "error")
        self._next_drop()

    def _show(self, text: str, level: str) -> None:
        bar = getattr(self._window, "message_bar", None)
        if bar is not None:
            bar.show_message(text, level)


def _few_step_choices(record: LibraryRecord, header: str, none: str) -> dict[str, str]:
    """Library.choose_few_step's choices with their labels: as the header says (first), each kind, none."""
    return {"": header.format(kind=KIND_NAMES.get(record.few_step or "", "-")), **KIND_NAMES, NOT_FEW_STEP: none}


def _variant_choices(record: LibraryRecord | None) -> dict[str, str]:
    """The variants a selected model may be marked as; {} for anything else (and with nothing selected)."""
    return {} if record is None else record_variant_choices(record)


def _droppable_paths(event: QDragEnterEvent | QDropEvent) -> list[str]:
    mime = event.mimeData()
    if mime is None or not mime.hasUrls():
        return []
    paths = []
    for url in mime.urls():
        if not url.isLocalFile():
            continue
        path = Path(url.toLocalFile())
        if is_model_folder(path) or path.suffix.lower() in _DROPPABLE_SUFFIXES:
            paths.append(str(path))
    return paths


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
