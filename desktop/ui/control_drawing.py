"""Control images drawn or touched up by hand on the canvas, for one control unit at a time.

"Draw" on a unit puts an empty control layer (black) over the canvas picture, or over a black canvas
of the job's size when there is no finished picture. "Edit" puts the unit's preprocessed image (canny
edges, ...) on the layer instead and switches the unit's preprocessor to "none", so the edited image is
not preprocessed a second time. Either way the unit's image becomes the drawing, saved as a
content-named grayscale PNG in the inputs folder when drawing starts, at Done, and whenever a job is
built (`commit`). Choosing a file or the canvas picture for the unit ends the link.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QSize, Qt, Slot
from PySide6.QtGui import QImage

from desktop.engine.control_preprocess import Thresholds, preprocess, to_preview
from desktop.engine.errors import MarbleError
from desktop.engine.imaging import load_source, store_by_hash
from desktop.engine.request import IP_ADAPTER_PREPROCESSOR
from desktop.ui.canvas.control_layer import ControlDrawBar, ControlLayer, is_control_tool
from desktop.ui.canvas.mask_layer import grayscale_png
from desktop.ui.canvas.view import MaskCanvas
from desktop.ui.control_list import ControlListWidget, ControlRow

# The job's (width, height), for a drawing made on a blank canvas.
JobSize = Callable[[], tuple[int, int]]


class ControlDrawing(QObject):
    """Links the canvas's control layer to one control unit and saves the drawing as its image."""

    def __init__(
        self,
        canvas: MaskCanvas,
        bar: ControlDrawBar,
        controls: ControlListWidget,
        inputs_folder: Path,
        job_size: JobSize,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._canvas = canvas
        self._bar = bar
        self._controls = controls
        self._inputs_folder = inputs_folder
        self._job_size = job_size
        self._row: ControlRow | None = None  # the unit's row in the control list
        controls.drawing_requested.connect(self.draw_for)
        controls.edit_requested.connect(self.edit_for)
        canvas.tool_changed.connect(self._on_tool_changed)
        bar.done_button.clicked.connect(self.finish)

    @property
    def layer(self) -> ControlLayer | None:
        layer = self._canvas.control_layer
        return layer if isinstance(layer, ControlLayer) else None

    @Slot(object)
    def draw_for(self, row: ControlRow) -> None:
        """Start (or go on with) a drawing for `row`; another unit's drawing is cleared for it."""
        picture = self._canvas.current_image
        if picture is not None and not self._canvas.is_preview:
            size = picture.size()
        else:
            width, height = self._job_size()
            size = QSize(width, height)
        layer = self._ensure_layer(size)
        if row is not self._row and not layer.is_empty():
            layer.clear_drawing()
        self._start(row)

    @Slot(object)
    def edit_for(self, row: ControlRow) -> None:
        """Put `row`'s preprocessed image on the layer for touching up; the unit then reads it as it is."""
        path, preprocessor = row.image(), row.preprocessor_combo.currentData()
        if preprocessor in ("inpaint", IP_ADAPTER_PREPROCESSOR):
            self._controls.show_problem(
                self.tr("This unit's image is not an edge or scribble map: there is nothing to edit."))
            return
        try:
            unit = row.unit()
            control = preprocess(preprocessor, load_source(path), None, Thresholds(unit.threshold_a, unit.threshold_b))
        except (MarbleError, OSError, ValueError) as error:
            self._controls.show_problem(self.tr("Cannot edit the control image: {error}").format(error=error))
            return
        values = np.ascontiguousarray(np.asarray(to_preview(control).convert("L")))
        layer = self._ensure_layer(QSize(values.shape[1], values.shape[0]))
        layer.set_values(values, self.tr("Edit control image"))
        # Over the picture the map came from; a drawing being edited again has none.
        self._start(row, backdrop=None if row.drawn else path)

    @Slot()
    def commit(self) -> None:
        """Save the drawing as the linked unit's image (before a job is built); nothing when unlinked."""
        row, layer = self._row, self.layer
        if row is None or layer is None or not self._controls.contains(row):
            self._row = None
            return
        if not row.drawn:
            self._row = None  # the user chose another image for the unit since
            return
        self._save(row, layer)

    @Slot()
    def finish(self) -> None:
        self.commit()
        self._canvas.set_tool("pan")

    # ------------------------------------------------------------------------------------ private

    def _start(self, row: ControlRow, backdrop: str | None = None) -> None:
        self._row = row
        layer = self.layer
        assert layer is not None
        # Without a finished picture of the drawing's size under it, the drawing goes over `backdrop`
        # (the image an edited edge map came from), else on black.
        picture = self._canvas.current_image
        if picture is None or self._canvas.is_preview or picture.size() != layer.size:
            if backdrop is not None and self._canvas.show_image(backdrop):
                picture = self._canvas.current_image
        if picture is None or self._canvas.is_preview or picture.size() != layer.size:
            black = QImage(layer.size, QImage.Format.Format_RGB888)
            black.fill(Qt.GlobalColor.black)
            self._canvas.show_qimage(black)
        self._save(row, layer)
        self._bar.apply()

    def _save(self, row: ControlRow, layer: ControlLayer) -> None:
        try:
            path = store_by_hash(grayscale_png(layer.values()), self._inputs_folder)
        except OSError as error:
            self._controls.show_problem(self.tr("Cannot save the control drawing: {error}").format(error=error))
            return
        self._controls.set_drawn_image(row, str(path))

    def _ensure_layer(self, size: QSize) -> ControlLayer:
        layer = self.layer
        if layer is not None and layer.size == size:
            return layer
        if layer is not None:
            self._canvas.scene().removeItem(layer)
            layer.deleteLater()
            # Its undo steps would write into the removed layer.
            self._canvas.undo_stack.clear()
        layer = ControlLayer(size, self._canvas.undo_stack)
        layer.setVisible(is_control_tool(self._canvas.tool))
        self._canvas.scene().addItem(layer)
        self._canvas.control_layer = layer
        return layer

    @Slot(str)
    def _on_tool_changed(self, tool: str) -> None:
        drawing = is_control_tool(tool)
        self._bar.setVisible(drawing)
        if self.layer is not None:
            self.layer.setVisible(drawing)
