"""Generate > X/Y/Z plot...: the window's `marble plot`.

`PlotDialog` is the form: up to three axes, each a parameter and its values as `marble plot` reads them
(desktop/engine/plot.py parses both), with the cell count or the first problem shown as the user types.
`PlotIntegration` runs a plot: each cell is an ordinary job through the window's controller (so it is
in the queue, in the history, and Cancel all stops it); when the last cell is done the labelled grid is
drawn, saved in the outputs' grids/ folder through an ImageWriter (so it carries the provenance marks)
and shown. A cancelled or failed cell stops the rest of its plot, and no grid is made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.errors import InvalidRequest, MarbleError
from desktop.engine.events import JobCancelled, JobFailed, JobFinished
from desktop.engine.outputs import ImageWriter
from desktop.engine.plot import PARAM_NAMES, Axis, PlotCell, assemble_grid, parse_axis, plan_plot
from desktop.engine.provenance import ImageOrigin
from desktop.engine.request import GenerationRequest

if TYPE_CHECKING:
    from desktop.ui.main_window import MainWindow

AXIS_NAMES = ("X", "Y", "Z")
Axes = tuple[Axis, Axis | None, Axis | None]


class PlotDialog(QDialog):
    """The plot's axes. Not modal: the prompt and the settings stay editable while it is open.

    Signals:
        queue_requested(object): the user asked to queue a plot over these axes (an `Axes` tuple).
    """

    queue_requested = Signal(object)

    def __init__(
        self,
        base_request: Callable[[], GenerationRequest],
        lora_names: Callable[[], Sequence[str]],
        parent: QWidget | None = None,
    ) -> None:
        """`base_request` is the window's next request (checked against the cells as they are typed);
        `lora_names` the LoRAs chosen in the panel, each offered as a weight axis."""
        super().__init__(parent)
        self.setObjectName("plot_dialog")
        self.setWindowTitle(self.tr("X/Y/Z plot"))
        self._base_request = base_request
        self._lora_names = lora_names
        self.param_combos: list[QComboBox] = []
        self.value_edits: list[QLineEdit] = []
        grid = QGridLayout()
        for row, name in enumerate(AXIS_NAMES):
            combo = QComboBox(objectName=f"plot_param_{name.lower()}")
            edit = QLineEdit(objectName=f"plot_values_{name.lower()}")
            edit.setPlaceholderText(self.tr("1,2,3 or 10-30 (+10) or 1-2 [5]"))
            edit.setToolTip(self.tr("Comma-separated values, or ranges. For Prompt S/R, the first value is the "
                                    "text replaced in the prompt."))
            combo.currentIndexChanged.connect(self.refresh)
            edit.textChanged.connect(self.refresh)
            grid.addWidget(QLabel(self.tr("{axis} axis").format(axis=name)), row, 0)
            grid.addWidget(combo, row, 1)
            grid.addWidget(edit, row, 2)
            self.param_combos.append(combo)
            self.value_edits.append(edit)
        grid.setColumnStretch(2, 1)
        self.count_label = QLabel(objectName="plot_count")
        self.error_label = QLabel(objectName="plot_error", wordWrap=True)
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)  # values and prompts are data, not HTML
        self.queue_button = QPushButton(self.tr("Queue"), objectName="plot_queue_button")
        self.queue_button.setToolTip(self.tr("Queue one job per cell; the grid is made when the last is done"))
        self.queue_button.clicked.connect(self._queue)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.addButton(self.queue_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.count_label)
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)
        self.reload_parameters()
        self.resize(560, self.sizeHint().height())

    def _param_labels(self) -> dict[str, str]:
        # Literal self.tr calls, so lupdate finds them; keyed by the names plot.py reads.
        return {
            "seed": self.tr("Seed"), "steps": self.tr("Steps"), "cfg": self.tr("CFG scale"),
            "sampler": self.tr("Sampler"), "model": self.tr("Model"), "width": self.tr("Width"),
            "height": self.tr("Height"), "size": self.tr("Size (WxH)"), "clip_skip": self.tr("Clip skip"),
            "strength": self.tr("Denoising strength"), "prompt": self.tr("Prompt S/R"),
            "distilled_cfg": self.tr("Distilled CFG scale"), "subseed": self.tr("Variation seed"),
            "subseed_strength": self.tr("Variation strength"),
        }

    def reload_parameters(self) -> None:
        """Offer the parameters again (the panel's LoRAs may have changed), keeping each axis's choice."""
        labels = self._param_labels()
        params = [(labels.get(name, name), name) for name in PARAM_NAMES if name != "lora:NAME"]
        params += [(self.tr("LoRA weight: {name}").format(name=lora), f"lora:{lora}") for lora in self._lora_names()]
        for row, combo in enumerate(self.param_combos):
            chosen = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            if row > 0:
                combo.addItem(self.tr("(none)"), None)
            for label, name in params:
                combo.addItem(label, name)
            index = combo.findData(chosen)
            combo.setCurrentIndex(max(index, 0))
            combo.blockSignals(False)
        self.refresh()

    def set_axis(self, row: int, param: str | None, values: str) -> None:
        """Choose an axis's parameter and values (a reused plot, tests)."""
        combo = self.param_combos[row]
        index = combo.findData(param)
        if index < 0:
            raise ValueError(f"Not a plot parameter here: {param!r}")
        combo.setCurrentIndex(index)
        self.value_edits[row].setText(values)

    def axes(self) -> Axes:
        """The axes as typed; raises InvalidRequest naming the axis at fault."""
        parsed: list[Axis | None] = []
        for name, combo, edit in zip(AXIS_NAMES, self.param_combos, self.value_edits, strict=True):
            param, values = combo.currentData(), edit.text().strip()
            if param is None:
                parsed.append(None)
                continue
            if not values:
                if name == "X":
                    raise InvalidRequest(self.tr("X axis: type the values to try."))
                parsed.append(None)  # a Y or Z parameter without values: that axis is unused
                continue
            try:
                parsed.append(parse_axis(f"{param}={values}"))
            except InvalidRequest as error:
                raise InvalidRequest(self.tr("{axis} axis: {problem}").format(axis=name, problem=error)) from None
        x, y, z = parsed
        assert x is not None
        if y is None and z is not None:  # a Z without a Y is a Y: the grid fills rows before panels
            y, z = z, None
        return x, y, z

    @Slot()
    def refresh(self) -> None:
        try:
            axes = self.axes()
            cells = plan_plot(self._base_request(), *axes)
        except InvalidRequest as error:
            self.count_label.setText("")
            self.error_label.setText(str(error))
            self.queue_button.setEnabled(False)
            return
        shape = " × ".join(str(len(axis.values)) for axis in axes if axis is not None)
        text = self.tr("1 cell") if len(cells) == 1 else self.tr("{count} cells ({shape})")
        self.count_label.setText(text.format(count=len(cells), shape=shape))
        self.error_label.setText("")
        self.queue_button.setEnabled(True)

    def show_problem(self, text: str) -> None:
        self.error_label.setText(text)

    @Slot()
    def _queue(self) -> None:
        try:
            axes = self.axes()
        except InvalidRequest as error:
            self.show_problem(str(error))
            return
        self.queue_requested.emit(axes)


@dataclass
class PlotRun:
    """One queued plot: its axes, the cell of each job, and what the cells have made so far."""

    axes: Axes
    seed: int
    model: str
    cells: dict[str, PlotCell]  # job id -> cell
    images: dict[tuple[int, int, int], str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    stopped: str = ""  # why the plot stopped early ("" while it runs)

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.cells)


class PlotIntegration(QObject):
    """Generate > X/Y/Z plot...: the dialog, the plot's jobs and its grid.

    Signals:
        plot_queued(object): a plot's jobs were queued (a list of `Job`, in cell order).
        grid_saved(str): a plot's grid was saved in this file (and shown).
        plot_stopped(str): a plot ended without a grid, for this reason.
    """

    plot_queued = Signal(object)
    grid_saved = Signal(str)
    plot_stopped = Signal(str)

    def __init__(self, window: MainWindow, grids_folder: Path, app_version: str) -> None:
        super().__init__(window)
        self._window = window
        self._controller = window.controller
        self._grids_folder = grids_folder
        self._app_version = app_version
        self._runs: dict[str, PlotRun] = {}  # job id -> its plot
        self.dialog = PlotDialog(self._base_request, self._lora_names, window)
        self.dialog.queue_requested.connect(self.queue)
        self.action = QAction(self.tr("X/Y/Z &plot…"), window, objectName="plot_action")
        self.action.triggered.connect(self.open_dialog)
        window.addAction(self.action)
        window.window_actions.job_menu.addSeparator()
        window.window_actions.job_menu.addAction(self.action)
        # The cells are checked against the window's prompt and settings: a change there is checked too.
        window.parameters.field_changed.connect(self._window_changed)
        window.prompt_editor.prompt_edit.textChanged.connect(self._window_changed)
        window.prompt_editor.negative_edit.textChanged.connect(self._window_changed)
        self._controller.job_finished.connect(self._on_finished)
        self._controller.job_cancelled.connect(self._on_ended)
        self._controller.job_failed.connect(self._on_ended)

    def _base_request(self) -> GenerationRequest:
        # Without the canvas's edit: checking the cells as the user types must not save the source image.
        return self._window.parameters.request(*self._window.prompt_editor.styled_prompts())

    def _lora_names(self) -> list[str]:
        return [ref.name for ref in self._window.parameters.value("loras")]

    @Slot()
    def _window_changed(self) -> None:
        if self.dialog.isVisible():
            self.dialog.refresh()

    @Slot()
    def open_dialog(self) -> None:
        self.dialog.reload_parameters()
        if self.dialog.isVisible():
            self.dialog.activateWindow()
        else:
            self.dialog.show()

    @Slot(object)
    def queue(self, axes: Axes) -> list[str]:
        """Queue one job per cell from the window's prompt, settings and canvas; the job ids, or [] when
        the plot cannot be made (the dialog and the message bar say why)."""
        try:
            base = self._window.current_request().with_seed()
            cells = plan_plot(base, *axes)
        except (InvalidRequest, OSError) as error:
            self._problem(str(error))
            return []
        run = PlotRun(axes, base.seed, base.model, {})
        jobs = []
        try:
            for cell in cells:
                job = self._controller.submit(cell.request)
                run.cells[job.id] = cell
                self._runs[job.id] = run
                jobs.append(job)
        except InvalidRequest as error:  # plan_plot validated every cell: not expected, but never half a plot
            self._stop(run, str(error))
            self._problem(str(error))
            return []
        self.dialog.show_problem("")
        self._window.message_bar.show_message(
            self.tr("Plot queued: {count} jobs; the grid follows the last one.").format(count=len(jobs)), "info"
        )
        self.plot_queued.emit(jobs)
        return [job.id for job in jobs]

    def _problem(self, text: str) -> None:
        self.dialog.show_problem(text)
        self._window.message_bar.show_message(text, "error")

    @Slot(object)
    def _on_finished(self, event: JobFinished) -> None:
        run = self._runs.get(event.job_id)
        if run is None:
            return
        run.done.add(event.job_id)
        if event.paths:
            run.images[run.cells[event.job_id].index] = event.paths[0]
        elif not run.stopped:
            self._stop(run, self.tr("a cell's image could not be saved"))
        self._end_if_finished(run)

    @Slot(object)
    def _on_ended(self, event: JobCancelled | JobFailed) -> None:
        run = self._runs.get(event.job_id)
        if run is None:
            return
        run.done.add(event.job_id)
        if not run.stopped:
            reason = self.tr("cancelled") if isinstance(event, JobCancelled) else event.message
            self._stop(run, reason)
        self._end_if_finished(run)

    def _stop(self, run: PlotRun, reason: str) -> None:
        """A plot missing a cell has no grid: its other cells are cancelled rather than made for nothing."""
        run.stopped = reason
        for job_id in list(run.cells):
            if job_id not in run.done:
                self._controller.cancel(job_id)  # may end the job at once (a queued one), re-entering here
        text = self.tr("The plot stopped ({reason}): no grid was made.").format(reason=reason)
        self._window.message_bar.show_message(text, "warning")
        self.plot_stopped.emit(text)

    def _end_if_finished(self, run: PlotRun) -> None:
        if not run.finished:
            return
        for job_id in run.cells:
            self._runs.pop(job_id, None)
        if not run.stopped:
            self._make_grid(run)

    def _make_grid(self, run: PlotRun) -> None:
        try:
            path = self._save_grid(run)
        except (OSError, MarbleError, Image.DecompressionBombError) as error:
            text = self.tr("The plot's images are saved, but not its grid: {reason}").format(reason=error)
            self._window.message_bar.show_message(text, "error")
            self.plot_stopped.emit(text)
            return
        # The cells in the strip and the grid chosen: each cell is one click away.
        cells = [run.images[cell.index] for cell in run.cells.values()]
        seeds = [cell.request.seed for cell in run.cells.values()]
        self._window.result_strip.set_results([*cells, str(path)], [*seeds, run.seed])
        self._window.message_bar.show_message(self.tr("Plot grid saved: {path}").format(path=path), "info")
        self.grid_saved.emit(str(path))

    def _save_grid(self, run: PlotRun) -> Path:
        images = {}
        try:
            for index, file in run.images.items():
                with Image.open(file) as image:
                    images[index] = image.convert("RGB")
        except OSError as error:
            raise MarbleError(f"cannot read a cell's image: {error}") from None
        grid = assemble_grid(images, *run.axes)
        axes_text = "; ".join(f"{name}: {axis.param}={','.join(map(str, axis.values))}"
                              for name, axis in zip(AXIS_NAMES, run.axes, strict=True) if axis is not None)
        writer = ImageWriter(self._grids_folder, dated=False)
        return writer.save(grid, {"marble-plot": axes_text}, run.seed, ImageOrigin(self._app_version, run.model))
