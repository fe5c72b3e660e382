"""A few-step LoRA (LCM-LoRA, Lightning ...) picked in the window's LoRA list brings its preset, as
`marble generate --lora` does; its kind comes from the library record (read off the GUI thread)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from desktop.engine.request import LoraRef
from tests.support import tiny_loras, tiny_models
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import TIMEOUT_MS, answer_library_choice
from tests.ui.test_settings_and_logs import close_window, open_window


def _sampling(window) -> tuple:
    return tuple(window.parameters.value(name) for name in ("steps", "cfg_scale", "sampler", "few_step"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=3)
    plain = tiny_loras.save_lora(tensors, tmp_path / "plain.safetensors")
    # What kohya writes for the published LCM-LoRA and Lightning LoRA runs: the kind is in the header only.
    lcm = tiny_loras.save_lora(tensors, tmp_path / "zippy.safetensors", {"ss_output_name": "lcm-lora-sdv1-5"})
    lightning = tiny_loras.save_lora(tensors, tmp_path / "zoom.safetensors",
                                     {"ss_output_name": "sdxl_lightning_4step_lora"})  # fmt: skip
    library = Library(paths)
    library.import_path(str(plain), "lora", "plain")
    library.import_path(str(lcm), "lora", "zippy")  # indexed: the kind is recorded at import
    shutil.copyfile(lightning, paths.loras / "zoom.safetensors")  # not indexed: read when listed
    return home


@pytest.fixture
def window(qtbot, home: Path) -> Iterator:
    window, controller, _store = open_window(qtbot, home, FakeBackend(steps=2))
    try:
        lora_list = window.parameter_panel.lora_list
        qtbot.waitUntil(lambda: lora_list.names() == ["plain", "zippy", "zoom"], timeout=TIMEOUT_MS)
        yield window
    finally:
        window.library_integration.tasks.shutdown()
        close_window(window, controller)


def test_picking_a_few_step_lora_brings_its_preset(qtbot, window):
    lora_list = window.parameter_panel.lora_list
    lora_list.add_button.click()  # picks "plain": nothing changes
    assert _sampling(window) == (30, 7.5, "default", "")
    combo = lora_list.findChild(type(window.parameter_panel.model_combo), "lora_name_combo")
    qtbot.keyClick(combo, Qt.Key.Key_Down)  # the user picks "zippy", an LCM-LoRA
    assert combo.currentData() == "zippy"
    assert _sampling(window) == (4, 1.0, "LCM", "lcm")
    assert window.parameter_panel.few_step_combo.currentData() == "lcm"
    assert window.parameter_panel.steps_spin.value() == 4
    qtbot.keyClick(combo, Qt.Key.Key_Down)  # "zoom": a Lightning LoRA the index has not hashed yet
    assert _sampling(window) == (4, 1.0, "Euler", "lightning")
    request = window.parameters.request("x")
    assert (request.loras, request.few_step, request.sampler) == ((LoraRef("zoom", 1.0),), "lightning", "Euler")
    # The user's own steps survive the library listing again (the rows' boxes are refilled, not picked).
    window.parameters.update(steps=6)
    tasks = window.library_integration.tasks
    with qtbot.waitSignal(tasks.records_listed, timeout=TIMEOUT_MS):
        tasks.list("lora")
    assert combo.currentData() == "zoom" and _sampling(window) == (6, 1.0, "Euler", "lightning")


def test_loras_restored_from_a_recipe_keep_the_recipe_settings(window):
    window.parameters.update(steps=20, cfg_scale=6.0)
    window.parameters.update(loras=(LoraRef("zippy", 0.8),))  # as a recipe or history entry restores them
    assert window.parameter_panel.lora_list.loras() == (LoraRef("zippy", 0.8),)
    assert _sampling(window) == (20, 6.0, "default", "")


def test_a_kind_chosen_in_the_library_dialog_is_shown_and_brings_its_preset(qtbot, window, monkeypatch):
    """"plain" names no kind in its header, as latent-consistency's own LCM-LoRA files do: the user says it is DMD2."""
    integration = window.library_integration
    dialog = integration.show_dialog()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: dialog.select("lora", "plain"), timeout=TIMEOUT_MS)
    assert dialog.few_step_button.isVisible() and dialog.few_step_button.isEnabled()
    offered = answer_library_choice(monkeypatch, "DMD2")
    with qtbot.waitSignal(integration.tasks.library_changed, timeout=TIMEOUT_MS):
        dialog.few_step_button.click()
    assert offered == [(["As its header says (-)", "LCM", "Turbo", "Lightning", "Hyper-SD", "DMD2",
                         "Not a few-step LoRA"], 0)]  # fmt: skip
    table = dialog.tables["lora"]

    def shown() -> dict[str, str]:
        return {table.item(row, 0).text(): table.item(row, 1).text() for row in range(table.rowCount())}

    qtbot.waitUntil(lambda: shown()["plain"].endswith(", DMD2 few-step"), timeout=TIMEOUT_MS)
    assert shown()["zippy"].endswith(", LCM few-step") and shown()["zoom"].endswith(", Lightning few-step")
    assert integration.tasks.library.get("lora", "plain").chosen_few_step == "dmd2"
    # Asked again, the current choice is the one offered first; "Not a few-step LoRA" takes a header's kind away.
    qtbot.waitUntil(lambda: dialog.select("lora", "zippy"), timeout=TIMEOUT_MS)
    offered = answer_library_choice(monkeypatch, "Not a few-step LoRA")
    with qtbot.waitSignal(integration.tasks.library_changed, timeout=TIMEOUT_MS):
        dialog.few_step_button.click()
    qtbot.waitUntil(lambda: not shown()["zippy"].endswith("few-step"), timeout=TIMEOUT_MS)
    assert offered[0][0][0] == "As its header says (LCM)" and offered[0][1] == 0
    qtbot.waitUntil(lambda: dialog.select("lora", "plain"), timeout=TIMEOUT_MS)
    offered = answer_library_choice(monkeypatch, "DMD2")
    with qtbot.waitSignal(integration.tasks.library_changed, timeout=TIMEOUT_MS):
        dialog.few_step_button.click()
    assert offered == [(offered[0][0], 5)]  # DMD2, chosen before
    dialog.tabs.setCurrentIndex(dialog.tabs.indexOf(dialog.tables["model"]))
    assert not dialog.few_step_button.isVisible()
    dialog.close()

    lora_list = window.parameter_panel.lora_list
    lora_list.add_button.click()  # picks "plain", now a DMD2 LoRA
    qtbot.waitUntil(lambda: _sampling(window) == (4, 1.0, "LCM", "dmd2"), timeout=TIMEOUT_MS)
