"""A FaceID IP-Adapter is offered in a control row like other IP-Adapters, and choosing it makes the row an
IP-Adapter unit (its image is the reference face); face models (annotators) and image encoders are not offered."""

from __future__ import annotations

from types import SimpleNamespace

from desktop.engine.library.index import LibraryRecord
from desktop.engine.request import ControlUnit
from desktop.ui.control_list import ControlListWidget
from desktop.ui.dialogs.library_dialog import LibraryIntegration


def _record(name: str, fmt: str) -> LibraryRecord:
    return LibraryRecord(name, "control", f"{name}.safetensors", "x", None, fmt, 1, None, None, None, None, None)


def test_faceid_adapters_are_offered_as_ip_adapter_units(qtbot):
    controls = ControlListWidget()
    qtbot.addWidget(controls)
    panel = SimpleNamespace(control_list=controls)
    integration = SimpleNamespace(_window=SimpleNamespace(parameter_panel=panel))
    records = [_record("canny", "controlnet (ldm)"), _record("faceid", "ip-adapter (faceid)"),
               _record("faceid-plusv2", "ip-adapter (faceid-plus)"), _record("encoder", "image-encoder (ViT-H)"),
               _record("det_10g", "annotator (face_detector)")]  # fmt: skip
    LibraryIntegration._on_records_listed(integration, "control", records)
    row = controls.add_row(ControlUnit("canny", ""))
    offered = [row.model_combo.itemText(i) for i in range(row.model_combo.count())]
    assert {"canny", "faceid", "faceid-plusv2"} <= set(offered) and not {"encoder", "det_10g"} & set(offered)
    for name in ("faceid-plusv2", "faceid"):
        row.model_combo.setCurrentIndex(row.model_combo.findText(name))
        (unit,) = controls.controls()
        assert (unit.model, unit.preprocessor) == (name, "ip-adapter")
        assert not row.references_line.isHidden()  # several faces can be given, as for other IP-Adapters
    row.model_combo.setCurrentIndex(row.model_combo.findText("canny"))
    assert controls.controls()[0].preprocessor == "none"
