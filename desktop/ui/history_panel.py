"""The history panel: every image made so far, as a virtualised thumbnail grid with search and filters.

The grid is a QListView in icon mode over the lazy `HistoryModel`: uniform item sizes and batched
layout keep 20,000 rows cheap, and only rows the view shows are fetched or get thumbnails. Details
are plain text (prompts from downloaded files are never rendered as HTML).
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QAction, QDesktopServices, QImageReader, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFileDialog,
    QMenu,
    QPlainTextEdit,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.bridge.controller import GenerationController
from desktop.bridge.history_model import ICON_SIZE, HistoryModel
from desktop.engine.errors import MarbleError
from desktop.engine.history import ImageRecord, ReconcileReport, export_image
from desktop.engine.request import GenerationRequest
from desktop.ui.flow_layout import flow_row
from desktop.ui.history_detail import HistoryDetailView
from desktop.ui.history_filters import HistoryFilters
from desktop.ui.history_grid import HistoryGrid
from desktop.ui.history_recovery import RecoveryBar
from desktop.ui.translation import translate

REFRESH_DELAY_MS = 300


class HistoryPanel(QWidget):
    """Browse, search and act on the history.

    Signals:
        reuse_requested(object): a GenerationRequest to load into the prompt editor and settings.
        seed_reuse_requested(int): a seed to put in the seed box.
        send_to_canvas_requested(str): an image file to show on the canvas (source for img2img/inpaint).
        upscale_requested(str): an image file to upscale (the window's Upscale dialog).
        message(str, str): a text and its level ("info", "warning", "error") for the message bar.
    """

    reuse_requested = Signal(object)
    seed_reuse_requested = Signal(int)
    send_to_canvas_requested = Signal(str)
    upscale_requested = Signal(str)
    message = Signal(str, str)

    def __init__(
        self,
        model: HistoryModel,
        controller: GenerationController | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("history_panel")
        self._model = model
        self._controller = controller
        self._refresh_timer = QTimer(self, singleShot=True, interval=REFRESH_DELAY_MS)
        self._refresh_timer.timeout.connect(self.refresh)

        self.recovery_bar = RecoveryBar(controller)
        self.recovery_bar.message.connect(self.message)
        # Kept as attributes of the panel: tests and the window reach the controls through it.
        self.recovery_label = self.recovery_bar.label
        self.resume_button = self.recovery_bar.resume_button
        self.dismiss_button = self.recovery_bar.dismiss_button
        self.filters = HistoryFilters()
        self.search_edit = self.filters.search_edit
        self.model_combo = self.filters.model_combo
        self.date_combo = self.filters.date_combo
        self.favourites_check = self.filters.favourites_check
        self.sort_combo = self.filters.sort_combo
        self.trash_check = self.filters.trash_check
        self.count_label = self.filters.count_label

        # Fixed-size cells drawn by its own delegate: see history_grid for why.
        self.view = HistoryGrid(ICON_SIZE)
        self.view.setModel(model)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)

        self.details = QPlainTextEdit(objectName="history_details")
        self.details.setReadOnly(True)
        self.details.setPlaceholderText(self.tr("Select an image to see how it was made."))

        self._build_actions()
        self._build_layout()

        self.filters.changed.connect(lambda: self._model.set_query(self.filters.query()))
        self.filters.trash_toggled.connect(self._on_trash_toggled)
        self.view.selectionModel().selectionChanged.connect(lambda *_: self._on_selection_changed())
        self.view.doubleClicked.connect(lambda index: self.send_to_canvas())
        self.view.open_requested.connect(lambda index: self.open_details())
        self.view.customContextMenuRequested.connect(self._show_menu)
        model.query_changed.connect(self._on_query_changed)
        model.reconciled.connect(self._on_reconciled)
        if controller is not None:
            controller.image_saved.connect(lambda _: self._refresh_timer.start())
            controller.pending_images_changed.connect(lambda _: self._refresh_timer.start())

        self.detail_view: HistoryDetailView | None = None
        self._refresh_models()
        self._on_query_changed(model.total)
        self._on_selection_changed()
        self.recovery_bar.show_unfinished_jobs()

    # ----------------------------------------------------------------------------------- layout

    def _build_actions(self) -> None:
        def action(text: str, slot: object, name: str, shortcut: str | None = None) -> QAction:
            act = QAction(text, self, objectName=name)
            act.triggered.connect(slot)
            if shortcut:
                act.setShortcut(QKeySequence(shortcut))
                act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(act)
            return act

        self.details_action = action(self.tr("Details…"), self.open_details, "history_details_open")
        self.reuse_action = action(self.tr("Reuse all parameters"), self.reuse_parameters, "history_reuse")
        self.reuse_seed_action = action(self.tr("Reuse seed"), self.reuse_seed, "history_reuse_seed")
        self.canvas_action = action(self.tr("Send to canvas"), self.send_to_canvas, "history_send_to_canvas")
        self.upscale_action = action(self.tr("Upscale…"), self.upscale, "history_upscale")
        self.open_action = action(self.tr("Open file"), self.open_file, "history_open")
        self.reveal_action = action(self.tr("Show in folder"), self.reveal_in_folder, "history_reveal")
        self.copy_action = action(self.tr("Copy image"), self.copy_image, "history_copy", "Ctrl+C")
        self.export_action = action(self.tr("Export…"), lambda: self._export_dialog(False), "history_export")
        self.export_private_action = action(
            self.tr("Export without metadata…"), lambda: self._export_dialog(True), "history_export_private"
        )
        self.favourite_action = action(self.tr("Favourite"), self.toggle_favourite, "history_favourite", "F")
        self.delete_action = action(self.tr("Move to trash"), self.delete_selected, "history_delete", "Delete")
        self.restore_action = action(self.tr("Restore"), self.restore_selected, "history_restore")
        self.empty_trash_action = action(self.tr("Empty trash…"), self.empty_trash, "history_empty_trash")

    def _build_layout(self) -> None:
        # Rows that wrap (flow rows), so the docked panel fits a narrow column of a 1280 px window.
        tool_buttons = []
        for act in (self.reuse_action, self.reuse_seed_action, self.canvas_action, self.favourite_action,
                    self.delete_action):
            button = QToolButton()
            button.setDefaultAction(act)
            tool_buttons.append(button)
        more = QToolButton(text=self.tr("More"))
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(more)
        menu.addActions([self.details_action, self.upscale_action, self.open_action, self.reveal_action,
                         self.copy_action, self.export_action, self.export_private_action, self.restore_action,
                         self.empty_trash_action])
        more.setMenu(menu)
        buttons = flow_row(*tool_buttons, more)

        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(buttons)
        lower_layout.addWidget(self.details, 1)
        splitter = QSplitter(Qt.Orientation.Vertical, objectName="history_splitter")
        splitter.addWidget(self.view)
        splitter.addWidget(lower)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.recovery_bar)
        layout.addWidget(self.filters)
        layout.addWidget(splitter, 1)

    # ----------------------------------------------------------------------------------- public

    @property
    def model(self) -> HistoryModel:
        return self._model

    @Slot()
    def apply_filters(self) -> None:
        self.filters.apply()

    @Slot()
    def refresh(self) -> None:
        """Reload the rows (new images, deletes), keeping the selected image selected."""
        current = self.current_record()
        self._model.refresh()
        self._refresh_models()
        if current is not None:
            self.select_id(current.id)

    def select_id(self, image_id: int) -> bool:
        row = self._model.row_of(image_id)
        if row < 0:
            return False
        index = self._model.index(row)
        self.view.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.view.scrollTo(index)
        return True

    def select_rows(self, rows: list[int]) -> None:
        selection = self.view.selectionModel()
        selection.clearSelection()
        for row in rows:
            selection.select(self._model.index(row), QItemSelectionModel.SelectionFlag.Select)
        if rows:
            selection.setCurrentIndex(self._model.index(rows[0]), QItemSelectionModel.SelectionFlag.NoUpdate)

    def current_record(self) -> ImageRecord | None:
        index = self.view.currentIndex()
        if index.isValid() and self.view.selectionModel().isSelected(index):
            return self._model.record_at(index.row())
        selected = self.selected_records()
        return selected[0] if selected else None

    def selected_records(self) -> list[ImageRecord]:
        rows = sorted(index.row() for index in self.view.selectionModel().selectedIndexes())
        return [record for row in rows if (record := self._model.record_at(row)) is not None]

    @Slot()
    def open_details(self) -> None:
        """The current image at full size with its recipe, in a window of its own (Enter in the grid)."""
        record = self.current_record()
        if record is None:
            return
        if self.detail_view is None:
            actions = (self.reuse_action, self.reuse_seed_action, self.canvas_action, self.upscale_action,
                       self.copy_action,
                       self.open_action, self.reveal_action, self.favourite_action, self.delete_action)
            self.detail_view = HistoryDetailView(actions, _describe, self)
            self.detail_view.step_requested.connect(self.step_selection)
        self.detail_view.show_record(record)
        self.detail_view.show()
        self.detail_view.raise_()
        self.detail_view.activateWindow()

    @Slot(int)
    def step_selection(self, step: int) -> None:
        """Select the image `step` rows away from the current one (the detail view's Left and Right)."""
        row = self.view.currentIndex().row() + step
        if row >= self._model.rowCount() and self._model.canFetchMore():
            self._model.fetchMore()
        if 0 <= row < self._model.rowCount():
            self.select_rows([row])
            self.view.scrollTo(self._model.index(row))

    @Slot()
    def reuse_parameters(self) -> None:
        record = self.current_record()
        request = record.request() if record else None
        if request is None:
            if record is not None:
                request = _request_from_columns(record)
            if request is None:
                self.message.emit(self.tr("This image does not say how it was made."), "warning")
                return
        self.reuse_requested.emit(request)

    @Slot()
    def reuse_seed(self) -> None:
        record = self.current_record()
        if record is not None and record.seed is not None:
            self.seed_reuse_requested.emit(record.seed)

    @Slot()
    def send_to_canvas(self) -> None:
        path = self._existing_path()
        if path is not None:
            self.send_to_canvas_requested.emit(path)

    @Slot()
    def upscale(self) -> None:
        path = self._existing_path()
        if path is not None:
            self.upscale_requested.emit(path)

    def _existing_path(self) -> str | None:
        """The current image's file, or None (said in the status line when the file is gone)."""
        record = self.current_record()
        if record is None:
            return None
        if record.missing or not Path(record.path).exists():
            self.message.emit(
                self.tr("{path} is missing: it was moved or deleted outside Marble.").format(path=record.path), "error"
            )
            return None
        return record.path

    @Slot()
    def open_file(self) -> None:
        record = self.current_record()
        if record is not None and Path(record.path).exists():
            QDesktopServices.openUrl(QUrl.fromLocalFile(record.path))

    @Slot()
    def reveal_in_folder(self) -> None:
        record = self.current_record()
        if record is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(record.path).parent)))

    @Slot()
    def copy_image(self) -> None:
        record = self.current_record()
        if record is None:
            return
        image = QImageReader(record.path).read()
        if image.isNull():
            self.message.emit(self.tr("Cannot read {path}.").format(path=record.path), "error")
            return
        QApplication.clipboard().setImage(image)

    def export_selected(self, target: Path | str, strip_metadata: bool = False) -> list[Path]:
        """Export the selected images: to `target` as a file (one image) or into it as a folder."""
        records = self.selected_records()
        target = Path(target)
        written = []
        try:
            for record in records:
                source = record.trash_path if record.trashed and record.trash_path else record.path
                destination = target if len(records) == 1 and not target.is_dir() else target / Path(source).name
                written.append(export_image(source, destination, strip_metadata))
        except MarbleError as error:
            self.message.emit(str(error), "error")
        return written

    @Slot()
    def toggle_favourite(self) -> None:
        records = self.selected_records()
        if not records:
            return
        favourite = not all(record.favourite for record in records)
        for record in records:
            self._model.store.set_favourite(record.id, favourite)
            self._model.update_record(record.id)
        self._on_selection_changed()
        if self.favourites_check.isChecked():
            self.refresh()

    @Slot()
    def delete_selected(self) -> None:
        if self.trash_check.isChecked():
            return
        records = self.selected_records()
        if not records:
            return
        row = min(self._model.row_of(record.id) for record in records)
        try:
            moved = self._model.store.trash(record.id for record in records)
        except MarbleError as error:
            self.message.emit(str(error), "error")
            moved = []
        self.refresh()
        # The image that took the deleted one's place is selected, so Delete can be pressed again.
        if moved and self.current_record() is None and self._model.rowCount():
            self.select_rows([min(row, self._model.rowCount() - 1)])
        if self.current_record() is None and self.detail_view is not None:
            self.detail_view.close()
        if moved:
            count = len(moved)
            text = (self.tr("Moved 1 image to the trash; tick Trash to restore.") if count == 1
                    else self.tr("Moved {count} images to the trash; tick Trash to restore.").format(count=count))
            self.message.emit(text, "info")

    @Slot()
    def restore_selected(self) -> None:
        records = [record for record in self.selected_records() if record.trashed]
        try:
            self._model.store.restore(record.id for record in records)
        except MarbleError as error:
            self.message.emit(str(error), "error")
        self.refresh()

    @Slot()
    def empty_trash(self) -> None:
        count = self._model.store.empty_trash()
        self.refresh()
        text = (self.tr("Deleted 1 image for good.") if count == 1
                else self.tr("Deleted {count} images for good.").format(count=count))
        self.message.emit(text, "info")

    # ---------------------------------------------------------------------------------- private

    def _refresh_models(self) -> None:
        self.filters.set_models(self._model.store.models() if self._model else [])

    @Slot(int)
    def _on_query_changed(self, total: int) -> None:
        self.filters.set_count(total)
        self._on_selection_changed()

    @Slot(bool)
    def _on_trash_toggled(self, trash: bool) -> None:
        self.delete_action.setVisible(not trash)
        self.restore_action.setVisible(trash)

    @Slot(object)
    def _on_reconciled(self, result: object) -> None:
        if isinstance(result, str):
            self.message.emit(result, "warning")
        elif isinstance(result, ReconcileReport):
            self._refresh_models()
            if result.marked_missing:
                text = (
                    self.tr("1 image is no longer in the image folder; its record is kept and marked missing.")
                    if result.marked_missing == 1
                    else self.tr("{count} images are no longer in the image folder; their records are kept and "
                                 "marked missing.").format(count=result.marked_missing)
                )
                self.message.emit(text, "warning")
        self.recovery_bar.show_unfinished_jobs()

    def _on_selection_changed(self) -> None:
        records = self.selected_records()
        record = self.current_record()
        for act in (self.details_action, self.reuse_action, self.reuse_seed_action, self.canvas_action,
                    self.upscale_action, self.open_action, self.reveal_action, self.copy_action):
            act.setEnabled(record is not None)
        for act in (self.export_action, self.export_private_action, self.favourite_action, self.delete_action,
                    self.restore_action):
            act.setEnabled(bool(records))
        self.details.setPlainText(_describe(record) if record is not None else "")
        # Follows the grid; a reload clears the selection for a moment, so no image is not a reason to close.
        if record is not None and self.detail_view is not None and self.detail_view.isVisible() \
                and self.detail_view.record != record:
            self.detail_view.show_record(record)

    def _show_menu(self, position) -> None:  # noqa: ANN001 - QPoint
        if not self.view.indexAt(position).isValid():
            return
        menu = QMenu(self)
        menu.addActions([self.details_action, self.reuse_action, self.reuse_seed_action, self.canvas_action,
                         self.upscale_action])
        menu.addSeparator()
        menu.addActions([self.open_action, self.reveal_action, self.copy_action, self.export_action,
                         self.export_private_action])
        menu.addSeparator()
        menu.addActions([self.favourite_action, self.restore_action if self.trash_check.isChecked()
                         else self.delete_action])
        menu.popup(self.view.viewport().mapToGlobal(position))

    def _export_dialog(self, strip_metadata: bool) -> None:
        records = self.selected_records()
        if not records:
            return
        if len(records) == 1:
            name = Path(records[0].path).name
            target, _ = QFileDialog.getSaveFileName(self, self.tr("Export image"), name, self.tr("PNG images (*.png)"))
        else:
            target = QFileDialog.getExistingDirectory(self, self.tr("Export {count} images").format(count=len(records)))
        if target:
            written = self.export_selected(target, strip_metadata)
            if written:
                self.message.emit(
                    self.tr("Exported {count} image(s) to {folder}.").format(count=len(written), folder=Path(target)),
                    "info",
                )


def _describe(record: ImageRecord) -> str:
    """Every parameter, one per line, as a user reads them (and can copy them)."""
    lines = [record.prompt]
    if record.negative:
        lines.append(translate("HistoryDescription", "Negative prompt: {negative}").format(negative=record.negative))
    lines.append("")
    # The labels are translated (history_detail.recipe_text matches the history-only ones translated too).
    pairs = [
        (translate("HistoryDescription", "Model"), record.model),
        (translate("HistoryDescription", "Model hash"), record.model_hash),
        (translate("HistoryDescription", "LoRA hashes"), record.lora_hashes),
        (translate("HistoryDescription", "Seed"), record.seed),
        (translate("HistoryDescription", "Sampler"), record.sampler),
        (translate("HistoryDescription", "Steps"), record.steps),
        (translate("HistoryDescription", "CFG scale"), None if record.cfg is None else f"{record.cfg:g}"),
        (translate("HistoryDescription", "Size"), record.size),
        (translate("HistoryDescription", "Device"), record.device),
        (translate("HistoryDescription", "Time"),
         ", ".join(f"{key.removesuffix('_s')} {value:.2f} s" for key, value in record.timings.items())),
        (translate("HistoryDescription", "Created"),
         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))),
        (translate("HistoryDescription", "File"),
         record.path + (translate("HistoryDescription", "  (missing)") if record.missing else "")),
        (translate("HistoryDescription", "In the trash"), record.trash_path if record.trashed else None),
        (translate("HistoryDescription", "Favourite"),
         translate("HistoryDescription", "yes") if record.favourite else None),
    ]
    lines += [f"{label}: {value}" for label, value in pairs if value not in (None, "")]
    return "\n".join(lines)


def _request_from_columns(record: ImageRecord) -> GenerationRequest | None:
    """Best effort for images indexed from other tools: their columns, when they hold enough."""
    if not record.prompt and not record.model:
        return None
    values: dict[str, object] = {"prompt": record.prompt, "negative_prompt": record.negative,
                                 "model": record.model or "unknown"}
    for key, value in (("seed", record.seed), ("steps", record.steps), ("cfg_scale", record.cfg),
                       ("width", record.width), ("height", record.height)):
        if value is not None:
            values[key] = value
    try:
        return GenerationRequest(**values).validate()  # type: ignore[arg-type]
    except (MarbleError, TypeError):
        return None

