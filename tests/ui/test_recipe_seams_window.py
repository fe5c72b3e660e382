"""A dropped A1111 PNG with the SDXL refiner, an IP-Adapter unit and a depth unit restores all three in the
real window: the settings, the control rows and the next job's request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.support import tiny_controls, tiny_models
from tests.support import tiny_ip_adapters as tiny
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import TIMEOUT_MS
from tests.ui.test_png_info import drop
from tests.ui.test_settings_and_logs import close_window, open_window

pytestmark = pytest.mark.filterwarnings("ignore:Function.*QDragEnterEvent:DeprecationWarning")

# As A1111 1.10 with sd-webui-controlnet writes it (the extension quotes each unit's value).
PARAMETERS = (
    "a lighthouse\nSteps: 20, Sampler: Euler a, CFG scale: 6, Seed: 77, Size: 512x512, Model: fake-model, "
    'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: face [6a3f6166], Weight: 0.7, Resize Mode: Crop and '
    "Resize, Low Vram: False, Processor Res: 512, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, "
    'Control Mode: Balanced, Hr Option: Both, Save Detected Map: True", '
    'ControlNet 1: "Module: depth_anything, Model: edges [d14c016b], Weight: 0.5, Resize Mode: Crop and Resize, '
    "Low Vram: False, Processor Res: 512, Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: False, "
    'Control Mode: Balanced, Hr Option: Both, Save Detected Map: True", '
    "Refiner: refiner-xl [7440042bbd], Refiner switch at: 0.7, Version: v1.10.1"
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    paths.controls.mkdir(parents=True, exist_ok=True)
    (paths.models / "refiner-xl.safetensors").write_bytes(b"")  # matched by name; never loaded here
    unet = tiny_models.build_tiny_sd15().unet
    edges = tiny_controls.build_tiny_controlnet(unet, seed=3)
    tiny_controls.save_controlnet(edges, paths.controls / "edges.safetensors")
    Library(paths).import_path(
        str(tiny.save_state(tiny.ip_adapter_state(unet, seed=1), tmp_path / "face.safetensors")), "control", "face")
    return home


@pytest.fixture
def window(qtbot, home: Path) -> Iterator:
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        qtbot.waitUntil(lambda: window.parameter_panel.control_list.names() == ["edges", "face"], timeout=TIMEOUT_MS)
        yield window
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)


def test_dropped_a1111_png_restores_refiner_ip_adapter_and_depth_units(qtbot, window, tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", PARAMETERS)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64), "teal").save(path, pnginfo=info)
    assert drop(window.canvas.viewport(), path)
    dialog = window.recipes.dialog
    qtbot.waitUntil(dialog.isVisible, timeout=TIMEOUT_MS)
    assert "Refiner: none -> refiner-xl" in dialog.changes_text.toPlainText()
    assert "Not used by Marble" not in dialog.text.toPlainText()
    dialog.use_all_button.click()

    request = window.parameters.request("x")
    assert (request.refiner, request.refiner_switch_at, request.steps) == ("refiner-xl", 0.7, 20)
    assert [(u.model, u.preprocessor, u.weight, u.start, u.end) for u in request.controls] == [
        ("face", "ip-adapter", 0.7, 0.0, 1.0), ("edges", "depth", 0.5, 0.1, 0.9)]
    rows = window.parameter_panel.control_list
    assert rows.controls() == request.controls
    assert window.parameter_panel.refiner_combo.currentData() == "refiner-xl"
