"""The control units of the next job: one block per ControlNet / T2I-Adapter unit, like the LoRA rows.

Each unit picks a control model from the library, a control image (a file, or the picture on the
canvas saved into the app's inputs folder so the request holds a path), a preprocessor, weight,
start/end (fractions of the steps) and control mode, and shows a small preview of its preprocessed
image. An IP-Adapter unit takes further reference images (A1111's multi-input unit; "Add image…" / "−"),
whose embeddings the job averages. The preview runs the Qt-free preprocessor on a thumbnail, on the GUI thread:
at `PREVIEW_SIDE` px it takes milliseconds (the file is decoded once, not again for each preprocessor tried).
Learned preprocessors (depth, lineart, pose) would run a network there, so their preview is the image
unprocessed, with the tooltip "Previewed at generation".
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PySide6.QtCore import QT_TRANSLATE_NOOP, Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.control_preprocess import LEARNED, Thresholds, preprocess, to_preview
from desktop.engine.errors import MarbleError
from desktop.engine.imaging import store_by_hash
from desktop.engine.library.control import BUILT_IN, fits_model
from desktop.engine.request import (
    CONTROL_MODES,
    CONTROL_PREPROCESSORS,
    IP_ADAPTER_PREPROCESSOR,
    MAX_CONTROL_UNITS,
    MAX_CONTROL_WEIGHT,
    MAX_REFERENCE_IMAGES,
    ControlUnit,
)
from desktop.ui.canvas.picture_view import array_to_qimage
from desktop.ui.library_combo import chosen_name, fill_names, select_name
from desktop.ui.translation import translate

PREVIEW_SIDE = 96
_PREPROCESSOR_LABELS = {
    "none": QT_TRANSLATE_NOOP("ControlListWidget", "None (image as is)"),
    "canny": QT_TRANSLATE_NOOP("ControlListWidget", "Canny edges"),
    "softedge": QT_TRANSLATE_NOOP("ControlListWidget", "Soft edges"),
    "scribble": QT_TRANSLATE_NOOP("ControlListWidget", "Scribble"),
    "tile": QT_TRANSLATE_NOOP("ControlListWidget", "Tile (blur)"),
    "inpaint": QT_TRANSLATE_NOOP("ControlListWidget", "Inpaint"),
    "blur": QT_TRANSLATE_NOOP("ControlListWidget", "Blur (Gaussian)"),
    "gray": QT_TRANSLATE_NOOP("ControlListWidget", "Grayscale (luminance)"),
    IP_ADAPTER_PREPROCESSOR: QT_TRANSLATE_NOOP("ControlListWidget", "IP-Adapter (reference image)"),
    "depth": QT_TRANSLATE_NOOP("ControlListWidget", "Depth (imported model)"),
    "lineart": QT_TRANSLATE_NOOP("ControlListWidget", "Lineart (imported model)"),
    "openpose": QT_TRANSLATE_NOOP("ControlListWidget", "OpenPose (imported model)"),
    "openpose_hand": QT_TRANSLATE_NOOP("ControlListWidget", "OpenPose with hands (imported models)"),
    "openpose_face": QT_TRANSLATE_NOOP("ControlListWidget", "OpenPose with face (imported models)"),
    "openpose_full": QT_TRANSLATE_NOOP("ControlListWidget", "OpenPose full (imported models)"),
}
_MODE_LABELS = {
    "balanced": QT_TRANSLATE_NOOP("ControlListWidget", "Balanced"),
    "prompt": QT_TRANSLATE_NOOP("ControlListWidget", "Prompt is more important"),
    "control": QT_TRANSLATE_NOOP("ControlListWidget", "Control is more important"),
}

# Returns the canvas's picture as image file bytes, or None when it shows nothing usable.
CanvasPicture = Callable[[], bytes | None]


def preview_image(path: str, preprocessor: str, thresholds: Thresholds | None = None) -> Image.Image:
    """The preprocessed control image of the file at `path`, at most PREVIEW_SIDE px a side, with the
    unit's thresholds (Threshold A / B), as the job runs it."""
    return preprocessed_preview(preview_source(path), preprocessor, thresholds)


def preview_source(path: str) -> Image.Image:
    """The file at `path` decoded at most PREVIEW_SIDE px a side: what every preprocessor's preview starts from."""
    with Image.open(path) as image:
        image.draft("RGB", (PREVIEW_SIDE * 2, PREVIEW_SIDE * 2))  # JPEGs decode small; others ignore it
        small = image.convert("RGB")
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return small


def preprocessed_preview(small: Image.Image, preprocessor: str, thresholds: Thresholds | None = None) -> Image.Image:
    """`small` (preview_source's) as `preprocessor` makes it."""
    if preprocessor in LEARNED:
        return small  # a network would block the GUI thread: the window shows the image as it is
    # An IP-Adapter's reference image goes to its image encoder as it is.
    name = "none" if preprocessor == IP_ADAPTER_PREPROCESSOR else preprocessor
    return to_preview(preprocess(name, small, None, thresholds))


class _ControlRow(QFrame):
    """One unit's widgets; the thresholds it does not show are kept from the unit it was given."""

    def __init__(self, names: Sequence[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self._thresholds = (-1.0, -1.0)
        self._image = ""
        self._more: tuple[str, ...] = ()  # an IP-Adapter unit's further reference images
        # The control image decoded small, with the file's (path, mtime, size) it came from: another
        # preprocessor previews without decoding the file again (a big PNG takes a while on the GUI thread),
        # and a file written anew (the canvas drawing, saved per job) is decoded again.
        self._source: tuple[tuple[str, int, int], Image.Image] | None = None
        # The image comes from the control drawing on the canvas (saved into the inputs folder per job).
        self.drawn = False
        self.model_combo = QComboBox(objectName="control_model_combo")
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(10)
        self.model_combo.setToolTip(self.tr("The control model (ControlNet or T2I-Adapter) from the library"))
        self.remove_button = QToolButton(objectName="control_remove_button", text="✕")
        self.remove_button.setToolTip(self.tr("Remove this control unit"))
        self.image_label = QLabel(objectName="control_image_label")
        self.image_label.setTextFormat(Qt.TextFormat.PlainText)
        self.file_button = QPushButton(self.tr("File…"), objectName="control_file_button")
        self.file_button.setToolTip(self.tr("Choose the control image from a file"))
        self.canvas_button = QPushButton(self.tr("Canvas"), objectName="control_canvas_button")
        self.canvas_button.setToolTip(self.tr("Use the picture on the canvas as the control image"))
        self.draw_button = QPushButton(self.tr("Draw"), objectName="control_draw_button")
        self.draw_button.setToolTip(self.tr("Draw the control image by hand on the canvas (white on black)"))
        self.edit_button = QPushButton(self.tr("Edit"), objectName="control_edit_button")
        self.edit_button.setToolTip(
            self.tr("Touch up the preprocessed image by hand on the canvas; it is then used as it is"))
        self.preprocessor_combo = QComboBox(objectName="control_preprocessor_combo")
        for name in CONTROL_PREPROCESSORS:
            self.preprocessor_combo.addItem(translate("ControlListWidget", _PREPROCESSOR_LABELS[name]), name)
        self.preprocessor_combo.setToolTip(self.tr("How the image becomes the control image before generating"))
        self.mode_combo = QComboBox(objectName="control_mode_combo")
        for name in CONTROL_MODES:
            self.mode_combo.addItem(translate("ControlListWidget", _MODE_LABELS[name]), name)
        self.weight_spin = _spin("control_weight_spin", MAX_CONTROL_WEIGHT, 1.0)
        self.weight_spin.setToolTip(self.tr("Control weight: 0 turns it off, 1 is full strength"))
        self.start_spin = _spin("control_start_spin", 1.0, 0.0)
        self.start_spin.setToolTip(self.tr("Start: the fraction of the steps where control begins"))
        self.end_spin = _spin("control_end_spin", 1.0, 1.0)
        self.end_spin.setToolTip(self.tr("End: the fraction of the steps where control ends"))
        self.more_label = QLabel(objectName="control_more_images_label")
        self.more_label.setTextFormat(Qt.TextFormat.PlainText)
        self.add_reference_button = QPushButton(self.tr("Add image…"), objectName="control_add_reference_button")
        self.add_reference_button.setToolTip(
            self.tr("Add further reference images: the IP-Adapter averages what it reads from each"))
        self.remove_reference_button = QToolButton(objectName="control_remove_reference_button", text="−")
        self.remove_reference_button.setToolTip(self.tr("Remove the last added reference image"))
        self.references_line = QWidget(objectName="control_references_line")
        self.references_line.setLayout(_hbox(self.more_label, self.add_reference_button, self.remove_reference_button))
        self.preview = QLabel(objectName="control_preview")
        self.preview.setFixedSize(PREVIEW_SIDE, PREVIEW_SIDE)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setWordWrap(True)
        self._one_picture = False  # a Redux unit: one picture, so no further reference images
        self._lay_out()
        self.set_names(names)
        self.set_image("")
        self.set_more_images(())

    def _lay_out(self) -> None:
        settings = QVBoxLayout()
        settings.setSpacing(2)
        settings.addLayout(_hbox(self.model_combo, self.remove_button))
        settings.addLayout(_hbox(self.image_label, self.file_button, self.canvas_button))
        settings.addWidget(self.references_line)
        settings.addLayout(_hbox(self.draw_button, self.edit_button))
        settings.addLayout(_hbox(self.preprocessor_combo, self.mode_combo))
        settings.addLayout(_hbox(
            QLabel(self.tr("Weight")), self.weight_spin, QLabel(self.tr("Start")), self.start_spin,
            QLabel(self.tr("End")), self.end_spin,
        ))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(settings, 1)
        layout.addWidget(self.preview, 0, Qt.AlignmentFlag.AlignTop)

    def set_names(self, names: Sequence[str]) -> None:
        fill_names(self.model_combo, names, self.tr("Not in the control library"))
        self._name_built_in()

    def select(self, name: str) -> None:
        # Kept when the library lacks it (a recipe, history): the job then says clearly it is missing.
        select_name(self.model_combo, name, self.tr("Not in the control library"))
        self._name_built_in()

    def _name_built_in(self) -> None:
        index = self.model_combo.findData(BUILT_IN)
        if index >= 0:
            self.model_combo.setItemText(index, self.tr("Built-in (the model's control input)"))

    def fix_settings(self, built_in: bool, redux: bool = False, every_step: bool = False) -> None:
        """What the unit's model runs with, shown so and not changeable: a built-in unit runs at weight 1 over
        every step in Balanced mode, as the model was trained; a Redux unit reads one picture at every step (its
        picture is part of the prompt), and a Flux.1 Control-LoRA acts at every step, at the weight chosen. Other
        units' settings are all free."""
        fixed_range = built_in or redux or every_step
        if fixed_range:
            self.start_spin.setValue(0.0)
            self.end_spin.setValue(1.0)
            _select_data(self.mode_combo, "balanced")
        if built_in:
            self.weight_spin.setValue(1.0)
        self.weight_spin.setEnabled(not built_in)
        for widget in (self.start_spin, self.end_spin, self.mode_combo):
            widget.setEnabled(not fixed_range)
        self._one_picture = redux
        if redux:
            self.set_more_images(())
        self.update_references_line()

    def name(self) -> str:
        return chosen_name(self.model_combo)

    def image(self) -> str:
        return self._image

    def set_image(self, path: str, drawn: bool = False) -> None:
        self._image = path
        self.drawn = drawn
        if drawn:
            self.image_label.setText(self.tr("Canvas drawing"))
        else:
            self.image_label.setText(Path(path).name if path else self.tr("No image yet"))
        self.image_label.setToolTip(path)
        self.edit_button.setEnabled(bool(path))
        self.update_preview()

    def more_images(self) -> tuple[str, ...]:
        return self._more

    def set_more_images(self, paths: Sequence[str]) -> None:
        self._more = tuple(paths)
        count = len(self._more)
        self.more_label.setText(self.tr("Reference images: {count}").format(count=count + 1))
        self.more_label.setToolTip("\n".join(self._more))
        self.remove_reference_button.setEnabled(bool(count))
        self.update_references_line()

    def update_references_line(self) -> None:
        # Only an IP-Adapter reads several images (not Redux); the others' line is hidden (their unit drops the list).
        ip_adapter = self.preprocessor_combo.currentData() == IP_ADAPTER_PREPROCESSOR
        self.references_line.setVisible(ip_adapter and not self._one_picture)

    def update_preview(self) -> None:
        if not self._image:
            self.preview.setPixmap(QPixmap())
            self.preview.setText(self.tr("No image"))
            return
        try:
            image = preprocessed_preview(
                self._preview_source(), self.preprocessor_combo.currentData(), Thresholds(*self._thresholds)
            )
        except (OSError, UnidentifiedImageError, ValueError, MarbleError):
            self.preview.setPixmap(QPixmap())
            self.preview.setText(self.tr("Cannot read the image"))
            return
        self.preview.setText("")
        self.preview.setPixmap(QPixmap.fromImage(array_to_qimage(np.asarray(image))))
        learned = self.preprocessor_combo.currentData() in LEARNED
        self.preview.setToolTip(self.tr("Previewed at generation: shown unprocessed") if learned else "")

    def _preview_source(self) -> Image.Image:
        stat = Path(self._image).stat()
        key = (self._image, stat.st_mtime_ns, stat.st_size)
        if self._source is None or self._source[0] != key:
            self._source = (key, preview_source(self._image))
        return self._source[1]

    def unit(self) -> ControlUnit:
        return ControlUnit(
            model=self.name(), image=self._image, weight=round(self.weight_spin.value(), 2),
            start=round(self.start_spin.value(), 2), end=round(self.end_spin.value(), 2),
            mode=self.mode_combo.currentData(), preprocessor=self.preprocessor_combo.currentData(),
            threshold_a=self._thresholds[0], threshold_b=self._thresholds[1],
            more_images=self._more if self.preprocessor_combo.currentData() == IP_ADAPTER_PREPROCESSOR else (),
        )

    def show_unit(self, unit: ControlUnit) -> None:
        self.select(unit.model)
        self._thresholds = (unit.threshold_a, unit.threshold_b)
        _select_data(self.preprocessor_combo, unit.preprocessor)
        _select_data(self.mode_combo, unit.mode)
        self.weight_spin.setValue(unit.weight)
        self.start_spin.setValue(unit.start)
        self.end_spin.setValue(unit.end)
        self.set_image(unit.image)
        self.set_more_images(unit.more_images)


class ControlListWidget(QWidget):
    """Control units of the next job and an "Add control unit" button.

    Signals:
        controls_changed(): a unit was added, removed, or one of its settings or its image changed.
        drawing_requested(object): the unit (its row) wants its image drawn by hand on the canvas.
        edit_requested(object): the unit (its row) wants its preprocessed image touched up on the canvas.
    """

    controls_changed = Signal()
    drawing_requested = Signal(object)
    edit_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("control_list")
        self._names: list[str] = []
        self._ip_adapters: frozenset[str] = frozenset()
        self._redux: frozenset[str] = frozenset()
        self._every_step: frozenset[str] = frozenset()
        # Each library model's family ("sd1", "flux", "sd3" ...; None: unknown) and the chosen model's: a row
        # offers the control models that fit it (fits_model).
        self._families: dict[str, str | None] = {}
        self._model_family: str | None = None
        # The chosen model reads a control picture through its own input (Flux.1 Canny / Depth dev).
        self._built_in = False
        self._rows: list[_ControlRow] = []
        self._inputs_folder: Path | None = None
        self._canvas_picture: CanvasPicture | None = None
        self._rows_layout = QVBoxLayout()
        self._rows_layout.setContentsMargins(0, 0, 0, 0)
        self._rows_layout.setSpacing(2)
        self.add_button = QPushButton(self.tr("Add control unit"), objectName="add_control_button")
        self.add_button.clicked.connect(lambda: self.add_row())
        self.problem = QLabel(objectName="control_problem")
        self.problem.setWordWrap(True)
        self.problem.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(self._rows_layout)
        layout.addWidget(self.problem)
        layout.addWidget(self.add_button, 0, Qt.AlignmentFlag.AlignLeft)
        self._update_add_button()

    def set_image_store(self, inputs_folder: Path, canvas_picture: CanvasPicture) -> None:
        """Where canvas pictures are saved for a job, and how to get the canvas's picture."""
        self._inputs_folder = inputs_folder
        self._canvas_picture = canvas_picture

    def set_names(
        self, names: Sequence[str], ip_adapters: Collection[str] = (), families: Mapping[str, str | None] | None = None,
        redux: Collection[str] = (), every_step: Collection[str] = (),
    ) -> None:
        """The library's control models; choosing one of `ip_adapters` makes the unit an IP-Adapter unit (of them,
        `redux` are Flux.1's image prompts, Redux and XLabs' IP-Adapter: one picture, every step). `every_step`:
        models that act at every step (Flux.1 Control-LoRAs). `families`: each one's base family, so the rows offer
        those that fit the chosen model."""
        self._names = list(names)
        self._ip_adapters = frozenset(ip_adapters)
        self._redux = frozenset(redux)
        self._every_step = frozenset(every_step)
        self._families = dict(families or {})
        self._refill()

    def set_model_family(self, family: str | None, built_in: bool = False) -> None:
        """The chosen model's family (library/native_size.py): the rows offer the control models made for it
        (and those of no known family). A unit keeps a model made for another family, marked as such.
        `built_in`: the model reads its control picture itself (Flux.1 Canny / Depth dev): the rows offer that
        input (BUILT_IN) and image-prompt models, not ControlNets, which do not run with it."""
        self._model_family = family
        self._built_in = built_in
        self._refill()

    def names(self) -> list[str]:
        return list(self._names)

    def offered(self) -> list[str]:
        """The library's control models that fit the chosen model, in the library's order (after the model's
        own control input, when it has one)."""
        fitting = [name for name in self._names if fits_model(self._families.get(name), self._model_family)]
        if self._built_in:
            return [BUILT_IN, *(name for name in fitting if name in self._ip_adapters)]
        return fitting

    def _refill(self) -> None:
        offered = self.offered()
        for row in self._rows:
            row.set_names(offered)
            self._fix(row, row.name())
            self._mark_other_family(row)
        self._update_add_button()

    def _mark_other_family(self, row: _ControlRow) -> None:
        name = row.name()
        if name in self._names and not fits_model(self._families.get(name), self._model_family):
            row.model_combo.setItemData(row.model_combo.currentIndex(), self.tr(
                "Made for another kind of model than the chosen one: a job with it is refused"
            ), Qt.ItemDataRole.ToolTipRole)  # fmt: skip

    def rows(self) -> int:
        return len(self._rows)

    def row(self, index: int) -> _ControlRow:
        return self._rows[index]

    def add_row(self, unit: ControlUnit | None = None) -> _ControlRow | None:
        """A new unit: `unit`'s settings, or the first library model not in use yet and no image."""
        if len(self._rows) >= MAX_CONTROL_UNITS:
            return None
        offered = self.offered()
        row = _ControlRow(offered, self)
        if unit is not None:
            row.show_unit(unit)
            self._fix(row, unit.model)
            self._mark_other_family(row)
        elif offered:
            used = {r.name() for r in self._rows}
            row.select(next((n for n in offered if n not in used), offered[0]))
        row.remove_button.clicked.connect(lambda: self.remove_row(row))
        row.file_button.clicked.connect(lambda: self._choose_file(row))
        row.canvas_button.clicked.connect(lambda: self.use_canvas(row))
        row.draw_button.clicked.connect(lambda: self.drawing_requested.emit(row))
        row.edit_button.clicked.connect(lambda: self.edit_requested.emit(row))
        row.add_reference_button.clicked.connect(lambda: self._choose_references(row))
        row.remove_reference_button.clicked.connect(lambda: self.set_references(row, row.more_images()[:-1]))
        row.preprocessor_combo.currentIndexChanged.connect(lambda: self._on_preprocessor_changed(row))
        row.model_combo.currentIndexChanged.connect(lambda: self._on_model_changed(row))
        row.mode_combo.currentIndexChanged.connect(self.controls_changed)
        for spin in (row.weight_spin, row.start_spin, row.end_spin):
            spin.valueChanged.connect(self.controls_changed)
        if unit is None:
            self._on_model_changed(row)
        self._rows.append(row)
        self._rows_layout.addWidget(row)
        self._update_add_button()
        self.controls_changed.emit()
        return row

    def add_unit_with_image(self, path: str) -> _ControlRow | None:
        """A new unit with this control image (PNG info's "Use as control image"); None when the library
        has no control model for the chosen model or all units are in use."""
        if not self.offered():
            return None
        row = self.add_row()
        if row is not None:
            self._set_image(row, path)
        return row

    def remove_row(self, row: _ControlRow) -> None:
        if row in self._rows:
            self._rows.remove(row)
            self._rows_layout.removeWidget(row)
            row.deleteLater()
            self._update_add_button()
            self.controls_changed.emit()

    def contains(self, row: _ControlRow) -> bool:
        return row in self._rows

    def set_drawn_image(self, row: _ControlRow, path: str, preprocessor: str = "none") -> None:
        """`row`'s image is now the control drawing saved at `path`, used as it is (no second preprocessing)."""
        if not self.contains(row):
            return
        self._say("")
        _select_data(row.preprocessor_combo, preprocessor)
        row.set_image(path, drawn=True)
        self.controls_changed.emit()

    def controls(self) -> tuple[ControlUnit, ...]:
        return tuple(row.unit() for row in self._rows if row.name())

    def set_controls(self, units: Sequence[ControlUnit]) -> None:
        for row in list(self._rows):
            self.remove_row(row)
        for unit in units:
            self.add_row(unit)

    def use_canvas(self, row: _ControlRow) -> bool:
        """Save the canvas's picture into the inputs folder and make it `row`'s control image."""
        data = self._canvas_picture() if self._canvas_picture is not None else None
        if not data:
            self._say(self.tr("Show a finished image on the canvas first, or choose a file."))
            return False
        try:
            path = self.store_image(data)
        except OSError as error:
            self._say(self.tr("Cannot save the canvas picture: {error}").format(error=error))
            return False
        self._set_image(row, path)
        return True

    def store_image(self, data: bytes) -> str:
        """Save image file bytes into the inputs folder (named by content) so a request can point at them."""
        if self._inputs_folder is None:
            raise OSError("no folder for control images")  # set_image_store was not called
        return str(store_by_hash(data, self._inputs_folder))

    def _choose_file(self, row: _ControlRow) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, self.tr("Control image"), str(Path(row.image()).parent) if row.image() else "",
            self.tr("Images (*.png *.jpg *.jpeg *.webp)"),
        )
        if path:
            self._set_image(row, path)

    def _choose_references(self, row: _ControlRow) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, self.tr("Reference images"), str(Path(row.image()).parent) if row.image() else "",
            self.tr("Images (*.png *.jpg *.jpeg *.webp)"),
        )
        room = MAX_REFERENCE_IMAGES - 1 - len(row.more_images())
        if len(paths) > room:
            self._say(self.tr("An IP-Adapter unit takes at most {count} reference images.").format(
                count=MAX_REFERENCE_IMAGES))  # fmt: skip
        if paths and room > 0:
            self.set_references(row, (*row.more_images(), *paths[:room]))

    def set_references(self, row: _ControlRow, paths: Sequence[str]) -> None:
        """`row`'s further reference images (after its image), for an IP-Adapter unit."""
        row.set_more_images(paths)
        self.controls_changed.emit()

    def _set_image(self, row: _ControlRow, path: str) -> None:
        self._say("")
        row.set_image(path)
        self.controls_changed.emit()

    def _on_model_changed(self, row: _ControlRow) -> None:
        # An IP-Adapter reads its image as a reference (A1111's "ip-adapter" module); other models do not.
        # A name the library lacks (a recipe's, or the box refilling) keeps the unit's preprocessor.
        name = row.name()
        self._fix(row, name)
        is_ip = name in self._ip_adapters
        if name in self._names and is_ip != (row.preprocessor_combo.currentData() == IP_ADAPTER_PREPROCESSOR):
            _select_data(row.preprocessor_combo, IP_ADAPTER_PREPROCESSOR if is_ip else "none")
        self.controls_changed.emit()

    def _fix(self, row: _ControlRow, name: str) -> None:
        row.fix_settings(name == BUILT_IN, name in self._redux, name in self._every_step)

    def _on_preprocessor_changed(self, row: _ControlRow) -> None:
        row.update_preview()
        row.update_references_line()
        self.controls_changed.emit()

    def show_problem(self, text: str) -> None:
        """Say under the units what could not be done (an empty text hides the line)."""
        self._say(text)

    def _say(self, text: str) -> None:
        self.problem.setText(text)
        self.problem.setVisible(bool(text))

    def _update_add_button(self) -> None:
        self.add_button.setEnabled(bool(self.offered()) and len(self._rows) < MAX_CONTROL_UNITS)
        if self._built_in:
            self.add_button.setToolTip(self.tr("Give the model its control picture (a canny or depth map, or the "
                                               "preprocessor that makes one)"))  # fmt: skip
        elif not self._names:
            self.add_button.setToolTip(
                self.tr("No control models in the library yet: import some with File ▸ Library…"))
        elif not self.offered():
            self.add_button.setToolTip(self.tr(
                "No control models in the library are made for the chosen model: import some with File ▸ Library…"
            ))
        else:
            self.add_button.setToolTip(self.tr("Guide the composition with a control image (ControlNet, T2I-Adapter)"))


# One unit's row, for the canvas's control drawing (control_drawing.py), which links to a row.
ControlRow = _ControlRow


def _spin(name: str, maximum: float, value: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox(objectName=name)
    spin.setRange(0.0, maximum)
    spin.setDecimals(2)
    spin.setSingleStep(0.05)
    spin.setValue(value)
    return spin


def _hbox(*widgets: QWidget) -> QHBoxLayout:
    layout = QHBoxLayout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    for widget in widgets:
        # The model's name and the image's name take the room; buttons and numbers keep their size.
        layout.addWidget(widget, 1 if widget.objectName() in ("control_model_combo", "control_image_label") else 0)
    return layout


def _select_data(combo: QComboBox, value: object) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)

