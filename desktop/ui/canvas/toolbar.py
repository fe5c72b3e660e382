"""The canvas toolbar: mode, strength, mask tools and settings, source image and outpainting.

It owns the editing state the request needs (the source image and the mask on the canvas) and turns
it into image-to-image or inpainting fields of a request (`edit_request`), saving the source and
the mask as content-named files in the app's cache folder.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QT_TRANSLATE_NOOP, QSize, Qt, Signal, Slot
from PySide6.QtGui import QImage, QImageReader
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.edit_inputs import request_size
from desktop.engine.errors import InvalidRequest
from desktop.engine.imaging import Margins, check_source_size, outpaint_canvas, store_by_hash
from desktop.engine.request import GenerationRequest
from desktop.ui.canvas.mask_layer import grayscale_png, values_from_image
from desktop.ui.canvas.picture_view import MAX_IMAGE_PIXELS, array_to_qimage, png_bytes
from desktop.ui.canvas.view import MASK_TOOLS, MaskCanvas
from desktop.ui.elided_label import ElidedLabel
from desktop.ui.flow_layout import flow_row
from desktop.ui.translation import translate

# Labels are translated where they are shown, in the class's own context (lupdate needs the literal name);
# the first item of each pair is data and stays as it is.
MODES = (
    ("txt2img", QT_TRANSLATE_NOOP("CanvasToolbar", "Text to image")),
    ("img2img", QT_TRANSLATE_NOOP("CanvasToolbar", "Image to image")),
    ("inpaint", QT_TRANSLATE_NOOP("CanvasToolbar", "Inpaint")),
    ("outpaint", QT_TRANSLATE_NOOP("CanvasToolbar", "Outpaint")),
)
# The toolbar rows each mode shows; the others are hidden, so a mode shows only what it uses.
ROWS_BY_MODE: dict[str, tuple[str, ...]] = {
    "txt2img": (),
    "img2img": ("source", "strength"),
    "inpaint": ("source", "strength", "tools", "mask"),
    # Extend grows the canvas, masks the new area and switches to inpainting it.
    "outpaint": ("source", "outpaint"),
}
AREAS = (
    ("whole", QT_TRANSLATE_NOOP("CanvasToolbar", "Whole picture")),
    ("masked", QT_TRANSLATE_NOOP("CanvasToolbar", "Only masked")),
)
RESIZE = (("resize", QT_TRANSLATE_NOOP("CanvasToolbar", "Resize")), ("pad", QT_TRANSLATE_NOOP("CanvasToolbar", "Pad")))
# Each side's field: its prefix and its tooltip, whole phrases (a translation may order them its own way).
OUTPAINT_SIDES = (
    ("left", QT_TRANSLATE_NOOP("CanvasToolbar", "Left "),
     QT_TRANSLATE_NOOP("CanvasToolbar", "Grow the canvas on the left")),
    ("top", QT_TRANSLATE_NOOP("CanvasToolbar", "Top "),
     QT_TRANSLATE_NOOP("CanvasToolbar", "Grow the canvas on the top")),
    ("right", QT_TRANSLATE_NOOP("CanvasToolbar", "Right "),
     QT_TRANSLATE_NOOP("CanvasToolbar", "Grow the canvas on the right")),
    ("bottom", QT_TRANSLATE_NOOP("CanvasToolbar", "Bottom "),
     QT_TRANSLATE_NOOP("CanvasToolbar", "Grow the canvas on the bottom")),
)


class CanvasToolbar(QWidget):
    """Editing controls above the canvas.

    Signals:
        source_changed(): the source image for image-to-image / inpainting changed (or was removed).
        mode_changed(str): "txt2img", "img2img", "inpaint" or "outpaint".
        problem(str): something the user did could not be done (shown by the window).
    """

    source_changed = Signal()
    mode_changed = Signal(str)
    problem = Signal(str)

    def __init__(self, canvas: MaskCanvas, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("canvas_toolbar")
        self._canvas = canvas
        self._source: QImage | None = None
        self._source_file: str | None = None
        # The mask belongs to the source: over a result or a preview it would hide the new pixels
        # (and painting there would edit a picture no job reads), so it shows only with the source.
        self._showing_source = False
        self._showing_own = False  # while this toolbar puts a source on the canvas
        # A source with no file (pasted, outpainted) is encoded to PNG as soon as it is set, on this
        # thread: at 2048x2048 that takes about 2 s, which on the GUI thread at Generate would freeze
        # the window. Generate waits for it only when pressed before the encoding is done.
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marble-source-png")
        self._source_png: Future[bytes] | None = None

        self._build_source_controls()
        self._build_mask_tools()
        self._build_mask_settings()
        # What a click or drag on the canvas does now: the toolbar changes with the mode, the canvas
        # looks the same in every mode.
        self.hint_label = QLabel(objectName="canvas_hint")
        self.hint_label.setTextFormat(Qt.TextFormat.PlainText)
        self.hint_label.setWordWrap(True)
        self.hint_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.rows: dict[str, QWidget] = {}

        self._build_layout()
        self._connect()
        self._update_brush()
        self._on_mode_changed()

    def _build_source_controls(self) -> None:
        self.mode_combo = _combo(MODES, "canvas_mode")
        self.strength_slider = QSlider(Qt.Orientation.Horizontal, objectName="strength_slider")
        self.strength_slider.setRange(0, 100)
        self.strength_slider.setValue(75)
        self.strength_slider.setMinimumWidth(100)
        self.strength_label = QLabel("0.75")
        self.use_source_button = _button(self.tr("Use as source"), self.tr("Edit the image on the canvas"))
        # A long file name must not widen the window: it is shortened with "…" (full name in the tooltip).
        self.source_label = ElidedLabel(self.tr("No source image"), objectName="source_label")

    def _build_mask_tools(self) -> None:
        self.tool_buttons = {
            tool: _button(text, tip, checkable=True)
            for tool, text, tip in (
                ("pan", self.tr("Pan"), self.tr("Drag to move the view")),
                ("brush", self.tr("Brush"), self.tr("Paint the area to repaint")),
                ("eraser", self.tr("Eraser"), self.tr("Erase the mask")),
            )
        }
        self._tools = QButtonGroup(self)
        for button in self.tool_buttons.values():
            self._tools.addButton(button)
        self.tool_buttons["pan"].setChecked(True)
        self.size_spin = _spin(1, 1024, 32, self.tr(" px"), self.tr("Brush size (image pixels)"))
        self.hardness_slider = QSlider(Qt.Orientation.Horizontal, objectName="hardness_slider")
        self.hardness_slider.setRange(0, 100)
        self.hardness_slider.setValue(80)
        self.hardness_slider.setToolTip(self.tr("Brush hardness"))
        self.overlay_check = QCheckBox(self.tr("Mask"), checked=True, toolTip=self.tr("Show the mask overlay"))
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal, objectName="opacity_slider")
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        self.opacity_slider.setToolTip(self.tr("Mask overlay opacity"))
        self.invert_button = _button(self.tr("Invert"), self.tr("Invert the mask"))
        self.clear_button = _button(self.tr("Clear"), self.tr("Clear the mask"))
        self.fill_button = _button(self.tr("Fill"), self.tr("Mask everything"))
        # Short fixed labels: the undo actions' own texts ("Undo Brush stroke") would widen the bar.
        self.undo_button = _button(self.tr("Undo"), self.tr("Undo the last mask edit (Ctrl+Z)"))
        self.redo_button = _button(self.tr("Redo"), self.tr("Redo (Ctrl+Shift+Z)"))
        self.undo_button.clicked.connect(self._canvas.undo_stack.undo)
        self.redo_button.clicked.connect(self._canvas.undo_stack.redo)
        self._canvas.undo_stack.canUndoChanged.connect(self.undo_button.setEnabled)
        self._canvas.undo_stack.canRedoChanged.connect(self.redo_button.setEnabled)
        self.undo_button.setEnabled(False)
        self.redo_button.setEnabled(False)
        self.load_mask_button = _button(self.tr("Load mask…"), self.tr("Load a mask PNG (white = repaint)"))
        self.save_mask_button = _button(self.tr("Save mask…"), self.tr("Save the mask as a PNG (white = repaint)"))

    def _build_mask_settings(self) -> None:
        self.blur_spin = _spin(0, 256, 4, self.tr(" px"), self.tr("Mask blur: feather the mask edge"))
        self.area_combo = _combo(AREAS, "inpaint_area")
        self.padding_spin = _spin(0, 1024, 32, self.tr(" px"), self.tr('Padding around the mask for "Only masked"'))
        self.resize_combo = _combo(RESIZE, "resize_mode")
        self.resize_combo.setToolTip(
            self.tr("How a source whose sides are not multiples of 8 is made to fit the model"))
        self.outpaint_spins = {
            side: _spin(0, 2048, 0, self.tr(" px"), self.tr(tip), prefix=self.tr(prefix))
            for side, prefix, tip in OUTPAINT_SIDES
        }
        self.outpaint_button = _button(
            self.tr("Extend"), self.tr("Grow the canvas and mask the new area for outpainting"))

    def _connect(self) -> None:
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        self.strength_slider.valueChanged.connect(lambda v: self.strength_label.setText(f"{v / 100:.2f}"))
        self.use_source_button.clicked.connect(self.use_current_as_source)
        self._tools.buttonClicked.connect(self._on_tool_clicked)
        self._canvas.tool_changed.connect(self._on_canvas_tool_changed)
        self.source_changed.connect(self._update_hint)
        self.strength_slider.valueChanged.connect(self._update_hint)
        self.size_spin.valueChanged.connect(self._update_brush)
        self.hardness_slider.valueChanged.connect(self._update_brush)
        self.overlay_check.toggled.connect(self._update_overlay)
        self.opacity_slider.valueChanged.connect(self._update_overlay)
        self.invert_button.clicked.connect(lambda: self._mask_op("invert"))
        self.clear_button.clicked.connect(lambda: self._mask_op("clear"))
        self.fill_button.clicked.connect(lambda: self._mask_op("fill"))
        self.load_mask_button.clicked.connect(self._ask_load_mask)
        self.save_mask_button.clicked.connect(self._ask_save_mask)
        self.outpaint_button.clicked.connect(self._on_outpaint_clicked)
        self._canvas.image_dropped.connect(self.load_source_file)
        self._canvas.picture_changed.connect(self._on_picture_changed)

    def _build_layout(self) -> None:
        # Rows of small controls wrap (FlowLayout) instead of widening the window: the toolbar must
        # fit the centre column of a 1280 x 720 window next to the settings and the history.
        source = QWidget()
        source_layout = QHBoxLayout(source)
        source_layout.setContentsMargins(0, 0, 0, 0)
        source_layout.addWidget(self.use_source_button)
        source_layout.addWidget(self.source_label, 1)
        top = QHBoxLayout()
        top.addWidget(self.mode_combo)
        top.addWidget(source, 1)
        self.rows = {
            "source": source,
            "strength": flow_row(
                _group(QLabel(self.tr("Strength")), self.strength_slider, self.strength_label),
                _group(QLabel(self.tr("Fit")), self.resize_combo),
            ),
            "tools": flow_row(
                _group(*self.tool_buttons.values()),
                _group(QLabel(self.tr("Size")), self.size_spin),
                _group(QLabel(self.tr("Hardness")), self.hardness_slider),
                _group(self.overlay_check, self.opacity_slider),
                _group(self.invert_button, self.clear_button, self.fill_button),
                _group(self.undo_button, self.redo_button),
            ),
            "mask": flow_row(
                _group(QLabel(self.tr("Mask blur")), self.blur_spin),
                self.area_combo,
                _group(QLabel(self.tr("Padding")), self.padding_spin),
                _group(self.load_mask_button, self.save_mask_button),
            ),
            "outpaint": flow_row(QLabel(self.tr("Extend canvas")), *self.outpaint_spins.values(), self.outpaint_button),
        }
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(2)
        layout.addLayout(top)
        for name in ("strength", "tools", "mask", "outpaint"):
            layout.addWidget(self.rows[name])
        layout.addWidget(self.hint_label)

    # --------------------------------------------------------------------------------------- state

    @property
    def mode(self) -> str:
        return self.mode_combo.currentData()

    def set_mode(self, mode: str) -> None:
        self.mode_combo.setCurrentIndex(self.mode_combo.findData(mode))

    @property
    def source(self) -> QImage | None:
        return self._source

    @property
    def showing_source(self) -> bool:
        """Whether the canvas shows the source (with its mask), not a result or a preview."""
        return self._showing_source

    @Slot()
    def show_source(self) -> bool:
        """Show the source again, with its mask (kept from the last job); False when there is none."""
        if self._source is None:
            return False
        if not self._showing_source:
            # From its file when it has one, so "Use as source" afterwards still copies that file.
            if self._source_file is None or not self._show(self._source_file):
                self._show(self._source)
            self._showing_source = True
            self._update_overlay()
        return True

    @Slot()
    def use_current_as_source(self) -> bool:
        """Make the picture on the canvas the source; False when there is none (or only a preview)."""
        image = self._canvas.current_image
        if image is None or self._canvas.is_preview:
            self.problem.emit(self.tr("Show a finished image on the canvas first, or drop an image file on it."))
            return False
        self._set_source(image, self._canvas.shown_file)
        return True

    @Slot(str)
    def load_source_file(self, path: str) -> bool:
        """Show an image file and make it the source (a dropped file, or one picked by the user)."""
        if not self._show(path):
            self.problem.emit(self.tr("Cannot open {name}: it is missing, too large, or not an image.")
                              .format(name=Path(path).name))
            return False
        image = self._canvas.current_image
        assert image is not None
        self._set_source(image, path)
        return True

    def paste_source(self, image: QImage) -> bool:
        """Make a pasted picture (clipboard) the source; False when the clipboard holds no image."""
        if image.isNull():
            self.problem.emit(self.tr("The clipboard holds no image. Copy a picture first, or drop an image file."))
            return False
        image = image.convertToFormat(QImage.Format.Format_RGB888)
        self._show(image)
        self._set_source(image, None)
        return True

    def _set_source(self, image: QImage, file: str | None) -> None:
        self._source = image.copy()
        self._source_file = file
        if self._source_png is not None:
            self._source_png.cancel()
        # A shallow copy for the encoder: the pixels are shared read-only (QImage copies on write).
        self._source_png = self._encoder.submit(png_bytes, QImage(self._source)) if file is None else None
        self._canvas.ensure_mask(QSize(image.width(), image.height()))
        self._showing_source = True
        self._update_overlay()
        name = Path(file).name if file else self.tr("edited canvas")
        self.source_label.setText(
            self.tr("Source: {name} ({width}x{height})").format(name=name, width=image.width(), height=image.height()))
        if self.mode == "txt2img":
            self.set_mode("img2img")
        self.source_changed.emit()

    def outpaint(self, margins: Margins) -> None:
        """Grow the source canvas; the new area (and a seam) becomes the mask, ready to inpaint."""
        if self._source is None and not self.use_current_as_source():
            return
        assert self._source is not None
        margins.validate()
        mask_layer = self._canvas.mask_layer
        old_mask = Image.fromarray(mask_layer.values(), "L") if mask_layer is not None else None
        grown, mask = outpaint_canvas(Image.fromarray(qimage_rgb(self._source), "RGB"), margins, old_mask)
        image = array_to_qimage(np.asarray(grown))
        self._show(image)
        self._set_source(image, None)
        assert self._canvas.mask_layer is not None
        self._canvas.mask_layer.set_values(np.asarray(mask), self.tr("Outpaint"))
        self.set_mode("inpaint")

    def save_mask(self, path: str | Path) -> None:
        layer = self._canvas.mask_layer
        if layer is None:
            raise InvalidRequest(self.tr("There is no mask yet: pick a source image and paint on it."))
        Path(path).write_bytes(grayscale_png(layer.values()))

    def load_mask(self, path: str | Path) -> None:
        """Load a mask image (white = repaint), scaled to the source if its size differs."""
        if self._source is None:
            raise InvalidRequest(self.tr("Pick a source image before loading a mask for it."))
        reader = QImageReader(str(path))
        size = reader.size()
        if size.isValid() and size.width() * size.height() > MAX_IMAGE_PIXELS:
            raise InvalidRequest(self.tr("{name} is too large to be a mask.").format(name=Path(path).name))
        image = reader.read()
        if image.isNull():
            raise InvalidRequest(self.tr("Cannot read {name} as an image: {reason}.").format(
                name=Path(path).name, reason=reader.errorString()))
        if image.size() != self._source.size():
            image = image.scaled(
                self._source.size(), Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
        layer = self._canvas.ensure_mask(self._source.size())
        layer.set_values(values_from_image(image), self.tr("Load mask"))

    # ------------------------------------------------------------------------------------- request

    def edit_request(self, request: GenerationRequest, inputs_folder: Path) -> GenerationRequest:
        """`request` with this canvas's mode applied: source and mask saved as files, settings copied."""
        mode = self.mode
        if mode == "txt2img":
            return replace(request, init_image=None, mask=None)
        if self._source is None:
            raise InvalidRequest(
                self.tr('Image-to-image needs a source: drop an image on the canvas or use "Use as source".'))
        mask_path = None
        area = self.area_combo.currentData()
        # Before any file is written: a source the model cannot work on is refused with the reason.
        whole = mode == "img2img" or area == "whole"
        check_source_size((self._source.width(), self._source.height()), self.resize_combo.currentData(), whole)
        if mode in ("inpaint", "outpaint"):
            values = self._canvas.mask_layer.values() if self._canvas.mask_layer is not None else None
            if values is None or not values.any():
                if mode == "outpaint":
                    raise InvalidRequest(
                        self.tr("Nothing to outpaint yet: set how far to grow each side and press Extend."))
                raise InvalidRequest(self.tr("The mask is empty: paint the area to repaint with the brush first."))
            mask_path = str(store_by_hash(grayscale_png(values), inputs_folder))
        source_path = str(self._store_source(inputs_folder))
        changes: dict[str, object] = dict(
            init_image=source_path,
            mask=mask_path,
            strength=self.strength_slider.value() / 100,
            mask_blur=self.blur_spin.value(),
            inpaint_area=area,
            padding=self.padding_spin.value(),
            resize_mode=self.resize_combo.currentData(),
        )
        if mode == "img2img" or area == "whole":
            # The whole picture is worked on at its own size: say so in the request and its metadata.
            width, height = request_size((self._source.width(), self._source.height()), self.resize_combo.currentData())
            changes |= {"width": width, "height": height}
        return replace(request, **changes)

    def _store_source(self, folder: Path) -> Path:
        assert self._source is not None
        if self._source_file is not None:
            try:
                # The file as it is (a cheap copy, no re-encoding); the engine checks what it contains.
                return store_by_hash(Path(self._source_file).read_bytes(), folder)
            except OSError:
                pass  # gone since it was shown: save the pixels we have instead
        # No future only when the source's file has gone since: rare enough to encode here.
        data = self._source_png.result() if self._source_png is not None else png_bytes(self._source)
        return store_by_hash(data, folder)

    # --------------------------------------------------------------------------------------- slots

    @Slot()
    def _on_mode_changed(self) -> None:
        mode = self.mode
        for name, row in self.rows.items():
            row.setVisible(name in ROWS_BY_MODE[mode])
        if mode != "inpaint" and self._canvas.tool in MASK_TOOLS:
            # The mask tools are hidden outside inpainting: a drag there moves the view again.
            self.tool_buttons["pan"].setChecked(True)
            self._canvas.set_tool("pan")
        self._update_overlay()
        self._update_hint()
        self.mode_changed.emit(mode)

    @property
    def hint(self) -> str:
        """The line telling what a click or drag on the canvas does now."""
        return self.hint_label.text()

    @Slot()
    def _update_hint(self) -> None:
        self.hint_label.setText(
            canvas_hint(
                self.mode,
                self._canvas.tool,
                self.size_spin.value(),
                self._source is not None,
                self.strength_slider.value() / 100,
            )
        )

    @Slot(str)
    def _on_canvas_tool_changed(self, tool: str) -> None:
        # The control drawing's tools have their own buttons (control_layer.py); the mask's show Pan.
        self.tool_buttons.get(tool, self.tool_buttons["pan"]).setChecked(True)
        self._update_hint()

    def _show(self, picture: str | QImage) -> bool:
        """Put a source on the canvas: a file (False when it cannot be read) or pixels."""
        self._showing_own = True
        try:
            if isinstance(picture, QImage):
                self._canvas.show_qimage(picture)
                return True
            return self._canvas.show_image(picture)
        finally:
            self._showing_own = False

    @Slot()
    def _on_picture_changed(self) -> None:
        if self._showing_own:
            return  # a source: the caller shows its mask (`_set_source`, `show_source`)
        self._showing_source = False
        self._update_overlay()
        if self._canvas.tool in MASK_TOOLS:
            # A stroke now would land on a mask nobody sees; picking a mask tool brings the source back.
            self.tool_buttons["pan"].setChecked(True)
            self._canvas.set_tool("pan")

    def _on_tool_clicked(self, button: QToolButton) -> None:
        tool = next(name for name, candidate in self.tool_buttons.items() if candidate is button)
        if tool != "pan" and self._canvas.mask_layer is None and not self.use_current_as_source():
            self.tool_buttons["pan"].setChecked(True)
            return
        if tool != "pan":
            # A result is on the canvas: the mask is painted on the source, so show it again
            # (to paint on the result instead, "Use as source" first).
            self.show_source()
        self._canvas.set_tool(tool)
        if tool != "pan" and self.mode != "inpaint":
            self.set_mode("inpaint")

    @Slot()
    def _update_brush(self) -> None:
        self._canvas.brush = replace(
            self._canvas.brush, size=float(self.size_spin.value()), hardness=self.hardness_slider.value() / 100
        )
        self._update_hint()

    @Slot()
    def _update_overlay(self) -> None:
        layer = self._canvas.mask_layer
        if layer is not None:
            # The mask only matters for inpainting; elsewhere it would only hide the picture.
            layer.setVisible(self.overlay_check.isChecked() and self.mode == "inpaint" and self._showing_source)
            layer.set_overlay_opacity(self.opacity_slider.value() / 100)

    def _mask_op(self, name: str) -> None:
        layer = self._canvas.mask_layer
        if layer is None:
            self.problem.emit(self.tr('Pick a source image first: drop one on the canvas or use "Use as source".'))
            return
        self.show_source()  # the change is seen where it is made, not under a result
        getattr(layer, name)()

    @Slot()
    def _ask_load_mask(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, self.tr("Load mask"), "", self.tr("Images (*.png *.jpg *.jpeg *.webp)"))
        if path:
            try:
                self.load_mask(path)
            except InvalidRequest as error:
                self.problem.emit(str(error))

    @Slot()
    def _ask_save_mask(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, self.tr("Save mask"), "mask.png", self.tr("PNG images (*.png)"))
        if path:
            try:
                self.save_mask(path)
            except (InvalidRequest, OSError) as error:
                self.problem.emit(str(error))

    @Slot()
    def _on_outpaint_clicked(self) -> None:
        try:
            self.outpaint(Margins(*(spin.value() for spin in self.outpaint_spins.values())))
        except InvalidRequest as error:
            self.problem.emit(str(error))


def canvas_hint(mode: str, tool: str, brush_size: int, has_source: bool, strength: float) -> str:
    """What a click or drag on the canvas does in `mode` with `tool`, in one short line."""
    if mode == "txt2img":
        return translate("CanvasToolbar", "Text to image: the canvas shows previews and results. "
                         "Drag to move the view, wheel to zoom.")
    if not has_source:
        text = translate("CanvasToolbar", '{mode}: Drop an image on the canvas, paste one (Ctrl+V) or press '
                         '"Use as source" first.')
        return text.format(mode=translate("CanvasToolbar", dict(MODES)[mode]))
    if mode == "img2img":
        text = translate("CanvasToolbar", "Image to image: the source is redrawn at strength {strength}. "
                         "Drag to move the view, wheel to zoom.")
        return text.format(strength=f"{strength:.2f}")
    if mode == "outpaint":
        return translate("CanvasToolbar", "Outpaint: set how far to grow each side, then Extend; the new area is "
                         "then painted in.")
    if tool == "brush":
        text = translate("CanvasToolbar", "Drag to paint the area to repaint (brush {size} px).")
        return text.format(size=brush_size)
    if tool == "eraser":
        text = translate("CanvasToolbar", "Drag to erase from the area to repaint (eraser {size} px).")
        return text.format(size=brush_size)
    return translate("CanvasToolbar", "Inpaint: pick Brush and drag over the area to repaint; here a drag moves "
                     "the view.")


def qimage_rgb(image: QImage) -> np.ndarray:
    """An (H, W, 3) uint8 copy of a QImage's pixels."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    height, width, line = rgb.height(), rgb.width(), rgb.bytesPerLine()
    rows = np.frombuffer(rgb.constBits(), np.uint8, count=height * line).reshape(height, line)
    return rows[:, : width * 3].reshape(height, width, 3).copy()


def _combo(items: tuple[tuple[str, str], ...], name: str) -> QComboBox:
    combo = QComboBox(objectName=name)
    for data, text in items:
        combo.addItem(translate("CanvasToolbar", text), data)
    return combo


def _button(text: str, tip: str, checkable: bool = False) -> QToolButton:
    button = QToolButton(text=text, toolTip=tip, checkable=checkable)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    return button


def _spin(low: int, high: int, value: int, suffix: str, tip: str, prefix: str = "") -> QSpinBox:
    spin = QSpinBox(minimum=low, maximum=high, value=value, suffix=suffix, prefix=prefix, toolTip=tip)
    return spin


def _group(*widgets: QWidget) -> QWidget:
    """Widgets that belong together (a label and its field): a wrapping row never splits them."""
    group = QWidget()
    layout = QHBoxLayout(group)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    for widget in widgets:
        layout.addWidget(widget)
    return group
