"""The control unit's preview uses the unit's own thresholds (A1111's Threshold A / B), as the job does."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from PySide6.QtGui import QImage

from desktop.engine.control_preprocess import Thresholds, preprocess, to_preview
from desktop.engine.request import ControlUnit
from desktop.ui.control_list import PREVIEW_SIDE, ControlListWidget


def _pixels(label) -> np.ndarray:
    image = label.pixmap().toImage().convertToFormat(QImage.Format.Format_RGB888)
    data = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    return data[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def test_preview_of_a_canny_unit_uses_its_thresholds(qtbot, tmp_path):
    # A hard and a soft edge: the defaults (100/200) keep only the hard one, low thresholds both.
    picture = Image.new("RGB", (PREVIEW_SIDE, PREVIEW_SIDE), (128, 128, 128))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((10, 10, 40, 80), fill=(255, 255, 255))
    draw.rectangle((55, 10, 85, 80), fill=(160, 160, 160))
    path = tmp_path / "edges.png"
    picture.save(path)
    controls = ControlListWidget()
    qtbot.addWidget(controls)
    controls.set_names(["edges"])
    row = controls.add_row(ControlUnit("edges", str(path), preprocessor="canny", threshold_a=50, threshold_b=100))
    thresholds = Thresholds(50, 100)
    expected = np.asarray(to_preview(preprocess("canny", picture, None, thresholds)))
    default = np.asarray(to_preview(preprocess("canny", picture)))
    assert not np.array_equal(expected, default)  # the thresholds matter for this picture
    np.testing.assert_array_equal(_pixels(row.preview), expected)
    assert controls.controls()[0].threshold_a == 50  # and the job gets the same ones
