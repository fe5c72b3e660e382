"""An IP-Adapter unit in the window takes several reference images: added from files, removed, kept in its
request, restored from a saved unit, and dropped when the unit stops being an IP-Adapter unit."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from PySide6.QtWidgets import QFileDialog

from desktop.engine.request import MAX_REFERENCE_IMAGES, ControlUnit
from desktop.ui.control_list import ControlListWidget


def _images(tmp_path: Path, count: int) -> list[str]:
    paths = []
    for index in range(count):
        path = tmp_path / f"ref{index}.png"
        Image.new("RGB", (16, 16), (index * 40, 0, 0)).save(path)
        paths.append(str(path))
    return paths


def test_an_ip_adapter_unit_takes_several_reference_images(qtbot, tmp_path, monkeypatch):
    controls = ControlListWidget()
    qtbot.addWidget(controls)
    controls.set_names(["edges", "face"], ip_adapters=["face"])
    row = controls.add_row(ControlUnit("face", "", preprocessor="ip-adapter"))
    first, second, third = _images(tmp_path, 3)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: (first, ""))
    row.file_button.click()
    assert not row.references_line.isHidden()
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *args, **kwargs: ([second, third], ""))
    with qtbot.waitSignal(controls.controls_changed, timeout=1000):
        row.add_reference_button.click()
    (unit,) = controls.controls()
    assert unit.images == (first, second, third) and unit.preprocessor == "ip-adapter"
    assert row.more_label.text() == "Reference images: 3"
    row.remove_reference_button.click()
    assert controls.controls()[0].images == (first, second)
    # A saved unit (recipe, history, restart) shows its images again.
    controls.set_controls([ControlUnit("face", first, 0.7, preprocessor="ip-adapter", more_images=(third,))])
    assert controls.controls()[0].images == (first, third)
    # More than the limit: the first ones that fit are taken, and the panel says why the rest are not.
    many = _images(tmp_path, MAX_REFERENCE_IMAGES + 2)
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *args, **kwargs: (many, ""))
    controls.row(0).add_reference_button.click()
    assert len(controls.controls()[0].images) == MAX_REFERENCE_IMAGES
    assert "at most 16 reference images" in controls.problem.text()
    controls.controls()[0].validate(0)
    # A ControlNet unit has one image: its line is hidden and its request holds no further images.
    row = controls.row(0)
    row.model_combo.setCurrentIndex(row.model_combo.findText("edges"))
    assert row.preprocessor_combo.currentData() == "none" and row.references_line.isHidden()
    assert controls.controls()[0].more_images == ()


def test_a_redux_unit_reads_one_picture_at_every_step(qtbot, tmp_path):
    # Flux.1 Redux: its picture is part of the prompt, so one picture, every step; its weight stays free.
    controls = ControlListWidget()
    qtbot.addWidget(controls)
    controls.set_names(["face", "redux"], ip_adapters=["face", "redux"], redux=["redux"])
    first, second = _images(tmp_path, 2)
    # A saved unit with a range and a further picture (made before, or by hand) is shown as it can run.
    row = controls.add_row(ControlUnit("redux", first, 0.8, 0.2, 0.6, preprocessor="ip-adapter",
                                       more_images=(second,)))  # fmt: skip
    assert row.references_line.isHidden() and not row.start_spin.isEnabled() and not row.end_spin.isEnabled()
    assert row.weight_spin.isEnabled()
    (unit,) = controls.controls()
    assert (unit.weight, unit.start, unit.end, unit.more_images) == (0.8, 0.0, 1.0, ())
    # Another IP-Adapter takes several pictures and a range again.
    row.model_combo.setCurrentIndex(row.model_combo.findData("face"))
    assert not row.references_line.isHidden() and row.start_spin.isEnabled()
