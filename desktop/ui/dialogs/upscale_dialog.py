"""Upscale an image from the history or the canvas: a small dialog, then an upscale job in the queue.

The job is a GenerationRequest with `upscale_by` set (desktop.engine.upscale_job): it runs on the
generation thread like any job, reports its progress the same way, lands in the history with the
source's recipe and A1111's Postprocess keys, and is shown on the canvas when it is saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.backends.hires import PIXEL_RESAMPLERS
from desktop.engine.errors import MarbleError
from desktop.engine.jobs import Job
from desktop.engine.library.index import Library
from desktop.engine.metadata import read_image_metadata
from desktop.engine.recipe import read_recipe
from desktop.engine.request import MAX_SIDE, MAX_UPSCALE, MIN_SIDE
from desktop.engine.upscale_job import UpscaleSettings, upscale_request

if TYPE_CHECKING:
    from desktop.ui.main_window import MainWindow


class UpscaleDialog(QDialog):
    """Upscaler, scale and tile; SD upscale's denoising strength, tile and overlap below, off by default."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, objectName="upscale_dialog")
        self.setWindowTitle(self.tr("Upscale"))
        defaults = UpscaleSettings()
        self.upscaler_combo = QComboBox(objectName="upscale_upscaler")
        self.scale_spin = QDoubleSpinBox(objectName="upscale_scale", minimum=1.0, maximum=MAX_UPSCALE,
                                         singleStep=0.5, value=defaults.scale, decimals=2)
        self.tile_spin = QSpinBox(objectName="upscale_tile", minimum=0, maximum=MAX_SIDE, singleStep=64,
                                  value=defaults.tile, specialValueText=self.tr("Whole image"))
        self.tile_spin.setToolTip(self.tr("An upscaler model runs in tiles of this many source pixels, so big "
                                          "images fit in memory."))
        form = QFormLayout()
        form.addRow(self.tr("Upscaler"), self.upscaler_combo)
        form.addRow(self.tr("Scale"), self.scale_spin)
        form.addRow(self.tr("Upscaler tile"), self.tile_spin)

        self.sd_group = QGroupBox(self.tr("SD upscale: denoise the result again, tile by tile"),
                                  objectName="upscale_sd_group", checkable=True, checked=False)
        self.sd_group.setToolTip(self.tr("Image-to-image over overlapping tiles with the image's own prompt, seed "
                                         "and model (else the current ones), blended so no seam shows."))
        self.denoise_spin = QDoubleSpinBox(objectName="upscale_denoise", minimum=0.01, maximum=1.0, singleStep=0.05,
                                           value=defaults.denoise, decimals=2)
        self.sd_tile_spin = QSpinBox(objectName="upscale_sd_tile", minimum=MIN_SIDE, maximum=MAX_SIDE, singleStep=64,
                                     value=defaults.sd_tile)
        self.overlap_spin = QSpinBox(objectName="upscale_overlap", minimum=0, maximum=MAX_SIDE // 2, singleStep=8,
                                     value=defaults.sd_overlap)
        sd_form = QFormLayout(self.sd_group)
        sd_form.addRow(self.tr("Denoising strength"), self.denoise_spin)
        sd_form.addRow(self.tr("Tile size"), self.sd_tile_spin)
        sd_form.addRow(self.tr("Tile overlap"), self.overlap_spin)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText(self.tr("Upscale"))
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.sd_group)
        layout.addWidget(buttons)
        self.set_upscalers([])

    def set_upscalers(self, names: list[str]) -> None:
        """Lanczos and Nearest, then the library's upscaler models; the choice is kept when it still exists."""
        current = self.upscaler_combo.currentText()
        self.upscaler_combo.clear()
        self.upscaler_combo.addItems([*PIXEL_RESAMPLERS, *names])
        if (index := self.upscaler_combo.findText(current)) >= 0:
            self.upscaler_combo.setCurrentIndex(index)

    def settings(self) -> UpscaleSettings:
        return UpscaleSettings(
            upscaler=self.upscaler_combo.currentText(),
            scale=self.scale_spin.value(),
            tile=self.tile_spin.value(),
            sd_upscale=self.sd_group.isChecked(),
            sd_tile=self.sd_tile_spin.value() // 8 * 8,
            sd_overlap=self.overlap_spin.value(),
            denoise=self.denoise_spin.value(),
        )


class UpscaleIntegration(QObject):
    """History > Upscale... and Generate > Upscale canvas image...: the dialog, then the queued job.

    Signals: none; the job's events come from the controller like any job's."""

    def __init__(self, window: MainWindow, library: Library) -> None:
        super().__init__(window)
        self._window = window
        self._library = library
        self._source: str | None = None
        self.dialog = UpscaleDialog(window)
        self.dialog.accepted.connect(self._submit)
        self.canvas_action = QAction(self.tr("&Upscale canvas image…"), window, objectName="upscale_canvas_action")
        self.canvas_action.triggered.connect(lambda: self.upscale_canvas())
        window.window_actions.job_menu.addAction(self.canvas_action)
        if window.history_panel is not None:
            window.history_panel.upscale_requested.connect(self.ask)

    @Slot(str)
    def ask(self, path: str) -> None:
        """Open the dialog for the image file `path`; OK queues the job."""
        self._source = path
        self.dialog.set_upscalers([record.name for record in self._records("upscaler")])
        self.dialog.open()

    @Slot()
    def upscale_canvas(self) -> None:
        try:
            path = self._window.canvas_picture_file()
        except OSError as error:
            self._window.message_bar.show_message(str(error), "error")
            return
        if path is None:
            self._window.message_bar.show_message(self.tr("The canvas has no image to upscale."), "warning")
            return
        self.ask(path)

    def upscale(self, path: str, settings: UpscaleSettings) -> Job | None:
        """Queue an upscale of `path`: its recipe where it has one, else the current prompt and settings."""
        window = self._window
        parameters = window.parameters
        current: dict[str, Any] = {"prompt": window.prompt_editor.prompt(),
                                   "negative_prompt": window.prompt_editor.negative_prompt()}
        current |= {name: parameters.value(name) for name in ("model", "steps", "cfg_scale", "sampler", "seed")}
        try:
            metadata = read_image_metadata(path)
            recipe = read_recipe(metadata, self._records("model"), self._records("lora"), self._records("vae"))
            fields = {**current, **recipe.fields}
        except (MarbleError, OSError):
            fields = current  # a picture without a recipe (a photo) is upscaled with the current settings
        devices = {name: parameters.value(name) for name in ("device", "precision", "memory_mode")}
        request = upscale_request(path, fields, settings, **devices)
        return window.submit(request)

    @Slot()
    def _submit(self) -> None:
        if self._source is not None:
            self.upscale(self._source, self.dialog.settings())

    def _records(self, kind: str) -> list[Any]:
        try:
            return list(self._library.records(kind, read_headers=False))  # names and hashes: no header reads
        except (MarbleError, OSError):
            return []

