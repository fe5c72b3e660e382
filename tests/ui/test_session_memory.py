"""The window's contents survive a restart: twenty values a creator set are all there at the next
start, and choosing a model of another family brings back what was last used with that family."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtWidgets import QComboBox, QSplitter

from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit, LoraRef
from desktop.engine.settings import SettingsStore
from desktop.ui.parameter_model import Parameters
from desktop.ui.session_memory import parameters_from_json, parameters_to_json
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import FAKE_MODEL, TIMEOUT_MS
from tests.ui.test_settings_and_logs import close_window, open_window


def pick(combo: QComboBox, data: object) -> None:
    index = combo.findData(data)
    assert index >= 0, data
    combo.setCurrentIndex(index)


def unet_folder(models: Path, name: str, cross_attention_dim: int) -> None:
    """A diffusers folder that the scan lists and whose family its UNet config tells (never loaded)."""
    folder = models / name
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": cross_attention_dim}))


def test_twenty_values_are_there_after_a_restart(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    unet_folder(AppPaths.for_root(home).ensure().models, "zz-sdxl-model", 2048)
    window, controller, store = open_window(qtbot, home, FakeBackend(steps=2))
    panel, toolbar = window.parameter_panel, window.canvas_toolbar
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-sdxl-model") >= 0, timeout=TIMEOUT_MS)
        window.prompt_editor.set_prompts("a marble fox, (rim light:1.2)", "blurry, lowres")
        pick(panel.model_combo, "zz-sdxl-model")
        pick(panel.sampler_combo, "Euler a")
        panel.steps_spin.setValue(23)
        panel.cfg_spin.setValue(5.5)
        panel.seed_spin.setValue(123456789)
        panel.width_spin.setValue(832)
        panel.height_spin.setValue(1216)
        panel.batch_count_spin.setValue(3)
        panel.batch_size_spin.setValue(2)
        panel.clip_skip_spin.setValue(2)
        pick(panel.emphasis_combo, "No norm")
        pick(panel.precision_combo, panel.precision_combo.itemData(panel.precision_combo.count() - 1))
        panel.fast_check.setChecked(True)
        pick(panel.device_combo, "cpu")
        pick(panel.memory_combo, panel.memory_combo.itemData(panel.memory_combo.count() - 1))
        pick(toolbar.mode_combo, "img2img")
        toolbar.strength_slider.setValue(42)
        toolbar.blur_spin.setValue(9)
        toolbar.padding_spin.setValue(48)
        pick(toolbar.area_combo, "masked")
        pick(toolbar.resize_combo, "pad")
        splitter = window.findChild(QSplitter, "main_splitter")
        splitter.setSizes([splitter.sizes()[0] + 60, splitter.sizes()[1] - 60])
        sizes = splitter.sizes()
        expected = window.parameters.parameters
        precision, memory = expected.precision, expected.memory_mode
        assert expected.model == "zz-sdxl-model" and expected.steps == 23
    finally:
        close_window(window, controller)

    window, controller, store = open_window(qtbot, home, FakeBackend(steps=2), model="zz-sdxl-model")
    panel, toolbar = window.parameter_panel, window.canvas_toolbar
    try:
        qtbot.wait(50)  # the family's values are applied on the next turn of the event loop
        assert window.prompt_editor.prompt() == "a marble fox, (rim light:1.2)"
        assert window.prompt_editor.negative_prompt() == "blurry, lowres"
        got = window.parameters.parameters
        assert got == expected
        # What the widgets show, not only the model behind them.
        assert panel.sampler_combo.currentData() == "Euler a"
        assert (panel.steps_spin.value(), panel.cfg_spin.value(), int(panel.seed_spin.value())) == (23, 5.5, 123456789)
        assert (panel.width_spin.value(), panel.height_spin.value()) == (832, 1216)
        assert (panel.batch_count_spin.value(), panel.batch_size_spin.value()) == (3, 2)
        assert panel.clip_skip_spin.value() == 2 and panel.emphasis_combo.currentData() == "No norm"
        assert panel.precision_combo.currentData() == precision and panel.fast_check.isChecked()
        assert panel.device_combo.currentData() == "cpu" and panel.memory_combo.currentData() == memory
        assert store.get("device") == "cpu" and store.get("memory_mode") == memory
        assert toolbar.mode_combo.currentData() == "img2img" and toolbar.strength_slider.value() == 42
        assert (toolbar.blur_spin.value(), toolbar.padding_spin.value()) == (9, 48)
        assert toolbar.area_combo.currentData() == "masked" and toolbar.resize_combo.currentData() == "pad"
        # The settings column keeps the width it was dragged to (the window itself is fitted to the
        # offscreen screen, so the canvas side may differ).
        assert window.findChild(QSplitter, "main_splitter").sizes()[0] == sizes[0]
    finally:
        close_window(window, controller)


def test_a_model_of_another_family_brings_back_that_familys_values(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = AppPaths.for_root(home).ensure().models
    unet_folder(models, "zz-sd1-model", 768)
    unet_folder(models, "zz-sdxl-model", 2048)
    window, controller, store = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-sdxl-model") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-sd1-model")
        panel.steps_spin.setValue(25)
        panel.width_spin.setValue(512)
        panel.height_spin.setValue(768)
        pick(panel.model_combo, "zz-sdxl-model")
        panel.steps_spin.setValue(40)
        panel.width_spin.setValue(1024)
        panel.height_spin.setValue(1024)
        panel.cfg_spin.setValue(4.0)

        pick(panel.model_combo, "zz-sd1-model")
        qtbot.waitUntil(lambda: panel.steps_spin.value() == 25, timeout=TIMEOUT_MS)
        assert (panel.width_spin.value(), panel.height_spin.value()) == (512, 768)
        assert panel.cfg_spin.value() == 7.5
        pick(panel.model_combo, "zz-sdxl-model")
        qtbot.waitUntil(lambda: panel.steps_spin.value() == 40, timeout=TIMEOUT_MS)
        assert (panel.width_spin.value(), panel.height_spin.value(), panel.cfg_spin.value()) == (1024, 1024, 4.0)
        # A model of no known family (the fake's empty file) changes nothing.
        pick(panel.model_combo, FAKE_MODEL)
        qtbot.wait(50)
        assert panel.steps_spin.value() == 40
    finally:
        close_window(window, controller)
    assert store.last_parameters("sdxl")["steps"] == 40
    assert store.last_parameters("sd1")["height"] == 768
    assert SettingsStore.open(store.path).last_parameters("sd1")["steps"] == 25


def test_stored_parameters_round_trip_and_damaged_fields_keep_the_current_value() -> None:
    parameters = Parameters(model="m", steps=12, cfg_scale=3.0, fast_mode=True, loras=(LoraRef("ink", 0.6),))
    stored = json.loads(json.dumps(parameters_to_json(parameters)))
    assert parameters_from_json(stored, Parameters()) == parameters
    damaged = {**stored, "steps": "many", "cfg_scale": True, "fast_mode": 1, "loras": [["ink"]], "seed": 7}
    got = parameters_from_json(damaged, Parameters())
    assert (got.steps, got.cfg_scale, got.fast_mode, got.loras) == (30, 7.5, False, ())
    assert got.seed == 7 and got.model == "m"


def test_stored_control_units_round_trip_and_damaged_ones_keep_the_current_value() -> None:
    unit = ControlUnit("edges", "/inputs/a.png", 0.5, 0.1, 0.9, "prompt", "canny", 50.0, 150.0)
    parameters = Parameters(controls=(unit, ControlUnit("edges", "")))
    stored = json.loads(json.dumps(parameters_to_json(parameters)))
    assert parameters_from_json(stored, Parameters()) == parameters
    current = Parameters(controls=(unit,))
    damaged = [{**stored["controls"][0], "weight": 7.0}], [{"image": "a.png"}], {"edges": 1}
    for value in damaged:
        assert parameters_from_json({"controls": value}, current).controls == (unit,)


def test_stored_reference_images_round_trip_and_damaged_ones_keep_the_current_value() -> None:
    parameters = Parameters(reference_images=("/pictures/hat.png", "/pictures/scarf.png"))
    stored = json.loads(json.dumps(parameters_to_json(parameters)))
    assert parameters_from_json(stored, Parameters()) == parameters
    current = Parameters(reference_images=("/pictures/kept.png",))
    for damaged in ("/pictures/hat.png", ["/pictures/hat.png", 3], [""], {"a": 1}):
        assert parameters_from_json({"reference_images": damaged}, current).reference_images == current.reference_images
