"""The parameter panel's few-step choice and refiner row (library/few_step.py, backends/refiner.py)."""

from __future__ import annotations

import pytest

from desktop.ui.parameter_model import ParameterModel
from desktop.ui.parameter_panel import ParameterPanel
from tests.ui.test_parameter_model import _select


@pytest.fixture
def panel(qtbot) -> ParameterPanel:
    panel = ParameterPanel(ParameterModel())
    qtbot.addWidget(panel)
    return panel


def _sampling(panel: ParameterPanel) -> tuple:
    return tuple(panel.model.value(name) for name in ("steps", "cfg_scale", "sampler", "few_step"))


def test_a_few_step_model_brings_its_preset_and_leaving_it_the_usual(panel: ParameterPanel) -> None:
    panel.set_families({"sd": "sd1", "turbo": "sdxl-turbo", "xl": "sdxl"})
    panel.set_models(["sd", "turbo", "xl"], "/models")
    _select(panel.model_combo, "turbo")
    assert _sampling(panel) == (1, 1.0, "Euler a", "turbo")
    assert panel.few_step_combo.currentData() == "turbo" and panel.sampler_combo.currentData() == "Euler a"
    _select(panel.model_combo, "sd")
    assert _sampling(panel) == (30, 7.5, "default", "")


def test_choosing_a_kind_by_hand_sets_and_none_restores(panel: ParameterPanel) -> None:
    panel.set_families({"sd": "sd1"})
    panel.set_models(["sd"], "/models")
    _select(panel.few_step_combo, "lcm")  # e.g. for an LCM-LoRA the panel could not read
    assert _sampling(panel) == (4, 1.0, "LCM", "lcm") and panel.steps_spin.value() == 4
    _select(panel.few_step_combo, "")
    assert _sampling(panel) == (30, 7.5, "default", "")


def test_refiner_row_shows_for_sdxl_and_lists_the_models(panel: ParameterPanel) -> None:
    panel.set_families({"sd": "sd1", "xl": "sdxl", "xl-refiner": "sdxl-refiner"})
    panel.set_models(["sd", "xl", "xl-refiner"], "/models")
    assert not panel.refiner_combo.isVisibleTo(panel)
    _select(panel.model_combo, "xl")
    assert panel.refiner_combo.isVisibleTo(panel) and panel.refiner_combo.findData("xl-refiner") >= 0
    _select(panel.refiner_combo, "xl-refiner")
    panel.refiner_switch_spin.setValue(0.7)
    assert (panel.model.value("refiner"), panel.model.value("refiner_switch_at")) == ("xl-refiner", 0.7)
