"""IP-Adapters in the window's control units: listed in the model box (image encoders are not), and
choosing one makes the unit an IP-Adapter unit (its image a reference image) that reaches the request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.support import tiny_controls, tiny_models
from tests.support import tiny_ip_adapters as tiny
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import TIMEOUT_MS
from tests.ui.test_settings_and_logs import close_window, open_window


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    controls = AppPaths.for_root(home).ensure().controls
    controls.mkdir(parents=True, exist_ok=True)
    unet = tiny_models.build_tiny_sd15().unet
    tiny_controls.save_controlnet(tiny_controls.build_tiny_controlnet(unet, seed=3), controls / "edges.safetensors")
    # Imported (indexed), as the library dialog does: the index records which files are IP-Adapters.
    library = Library(AppPaths.for_root(home))
    library.import_path(str(tiny.save_state(tiny.ip_adapter_state(unet, seed=1), tmp_path / "face.safetensors")),
                        "control", "face")  # fmt: skip
    encoder = tiny.save_image_encoder(tiny.build_tiny_image_encoder(seed=2), tmp_path / "encoder.safetensors")
    library.import_path(str(encoder), "control", "encoder")
    return home


@pytest.fixture
def window(qtbot, home: Path) -> Iterator:
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        controls = window.parameter_panel.control_list
        qtbot.waitUntil(lambda: controls.names() == ["edges", "face"], timeout=TIMEOUT_MS)
        yield window
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)


def test_choosing_an_ip_adapter_sets_its_preprocessor(window, tmp_path):
    controls = window.parameter_panel.control_list
    row = controls.add_row()
    assert row.name() == "edges" and row.preprocessor_combo.currentData() == "none"
    reference = tmp_path / "ref.png"
    Image.new("RGB", (40, 30), "orange").save(reference)
    row.set_image(str(reference))
    row.model_combo.setCurrentIndex(row.model_combo.findData("face"))
    assert row.preprocessor_combo.currentData() == "ip-adapter"
    assert row.preview.pixmap() is not None and not row.preview.pixmap().isNull()  # shown as it is
    (unit,) = controls.controls()
    assert (unit.model, unit.preprocessor, unit.image) == ("face", "ip-adapter", str(reference))
    row.model_combo.setCurrentIndex(row.model_combo.findData("edges"))
    assert row.preprocessor_combo.currentData() == "none"
