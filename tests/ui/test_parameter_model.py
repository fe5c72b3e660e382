"""The parameter panel is bound to its `ParameterModel` both ways, field by field, and the request of
the next job is built from the model. The widget readers and writers here are the test's own, so a
binding missing from the panel shows as a field that does not follow."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox

from desktop.engine.backends.schedulers import SAMPLER_NAMES
from desktop.engine.request import ControlUnit, GenerationRequest, LayoutBox, LoraRef
from desktop.ui.parameter_model import PARAMETER_FIELDS, ParameterModel, Parameters, build_request
from desktop.ui.parameter_panel import ParameterPanel

# Every field away from its default, so a field that is not carried shows.
CHANGED = Parameters(
    model="not-in-the-folder",
    sampler=SAMPLER_NAMES[-1],
    steps=12,
    cfg_scale=4.5,
    distilled_cfg_scale=2.5,
    seed=4_000_000_000,
    width=832,
    height=1216,
    batch_count=3,
    batch_size=2,
    clip_skip=2,
    emphasis="No norm",
    device="cpu",
    precision="fp16",
    memory_mode="tiled",
    fast_mode=True,
    rewrite_prompt=True,
    layout_boxes=(LayoutBox("a red fox", 0.1, 0.2, 0.5, 0.9), LayoutBox("a moon", 0.7, 0.05, 0.9, 0.25)),
    loras=(LoraRef("inkwash", 0.5),),
    subseed=77,
    subseed_strength=0.35,
    seed_resize_from_w=768,
    seed_resize_from_h=640,
    tiling=True,
    vae="crisp-vae",
    text_encoders="/models/flux-dev",
    hires_fix=True,
    hires_scale=1.5,
    hires_resize_w=1024,
    hires_resize_h=768,
    hires_upscaler="Lanczos",
    hires_steps=12,
    hires_denoise=0.45,
    hires_prompt="sharp details",
    hires_negative_prompt="blur",
    hires_sampler="Euler",
    controls=(ControlUnit("edges-cn", "/no/such/edges.png", 0.8, 0.1, 0.9, "prompt", "canny"),),
    few_step="lightning",
    refiner="xl-refiner",
    refiner_switch_at=0.65,
    reference_images=("/pictures/hat.png", "/pictures/scarf.png"),
)
# Request fields that are not settings of the panel: the prompt editor's and the canvas's, and the
# config folder and the tokenizer folder (command line only; the window's tokenizer folder is a Setting).
NOT_PARAMETERS = {
    "prompt", "negative_prompt", "model_config", "tokenizer_folder", "init_image", "strength", "mask", "mask_blur",
    "inpaint_area",
    "padding", "resize_mode", "inpaint_fill",
    # The Upscale dialog's (history and canvas), not the panel's.
    "upscale_by", "upscale_upscaler", "upscale_tile", "sd_upscale", "sd_upscale_tile", "sd_upscale_overlap",
}


def _combo_data(combo: QComboBox) -> Any:
    return combo.currentData()


def _readers(panel: ParameterPanel) -> dict[str, Callable[[], Any]]:
    return {
        "model": lambda: _combo_data(panel.model_combo),
        "sampler": lambda: _combo_data(panel.sampler_combo),
        "steps": panel.steps_spin.value,
        "cfg_scale": panel.cfg_spin.value,
        "distilled_cfg_scale": panel.distilled_cfg_spin.value,
        "seed": lambda: int(panel.seed_spin.value()),
        "width": panel.width_spin.value,
        "height": panel.height_spin.value,
        "batch_count": panel.batch_count_spin.value,
        "batch_size": panel.batch_size_spin.value,
        "clip_skip": panel.clip_skip_spin.value,
        "emphasis": lambda: _combo_data(panel.emphasis_combo),
        "device": lambda: _combo_data(panel.device_combo),
        "precision": lambda: _combo_data(panel.precision_combo),
        "memory_mode": lambda: _combo_data(panel.memory_combo),
        "fast_mode": panel.fast_check.isChecked,
        "rewrite_prompt": panel.rewrite_check.isChecked,
        "loras": lambda: tuple(
            LoraRef(name.currentData(), weight.value())
            for name, weight in zip(
                panel.lora_list.findChildren(QComboBox, "lora_name_combo"),
                panel.lora_list.findChildren(QDoubleSpinBox, "lora_weight_spin"),
                strict=True,
            )
        ),
        "subseed": lambda: int(panel.subseed_spin.value()),
        "subseed_strength": panel.subseed_strength_spin.value,
        "seed_resize_from_w": panel.resize_w_spin.value,
        "seed_resize_from_h": panel.resize_h_spin.value,
        "tiling": panel.tiling_check.isChecked,
        "vae": lambda: _combo_data(panel.vae_combo),
        "text_encoders": panel.text_encoders_edit.text,
        "hires_fix": panel.hires_check.isChecked,
        "hires_scale": panel.hires_scale_spin.value,
        "hires_resize_w": panel.hires_resize_w_spin.value,
        "hires_resize_h": panel.hires_resize_h_spin.value,
        "hires_upscaler": lambda: _combo_data(panel.hires_upscaler_combo),
        "hires_steps": panel.hires_steps_spin.value,
        "hires_denoise": panel.hires_denoise_spin.value,
        "hires_prompt": panel.hires_prompt_edit.text,
        "hires_negative_prompt": panel.hires_negative_edit.text,
        "hires_sampler": lambda: _combo_data(panel.hires_sampler_combo),
        "controls": lambda: tuple(_read_unit(panel.control_list.row(i)) for i in range(panel.control_list.rows())),
        "few_step": lambda: _combo_data(panel.few_step_combo),
        "refiner": lambda: _combo_data(panel.refiner_combo),
        "refiner_switch_at": panel.refiner_switch_spin.value,
        "reference_images": panel.references_row.images,
        # The descriptions as the list shows them, the edges as the frame draws them.
        "layout_boxes": lambda: tuple(
            dataclasses.replace(box, description=panel.layout_editor.table.item(row, 0).text())
            for row, box in enumerate(panel.layout_editor.area.boxes())),
    }


def _read_unit(row: Any) -> ControlUnit:
    return ControlUnit(
        row.model_combo.currentData(), row.image_label.toolTip(), row.weight_spin.value(), row.start_spin.value(),
        row.end_spin.value(), row.mode_combo.currentData(), row.preprocessor_combo.currentData(),
    )


def _select(combo: QComboBox, value: object) -> None:
    if combo.findData(value) < 0:
        combo.addItem(str(value), value)
    combo.setCurrentIndex(combo.findData(value))


def _edit_every_widget(panel: ParameterPanel, target: Parameters) -> None:
    """What a user does, widget by widget."""
    _select(panel.model_combo, target.model)
    _select(panel.few_step_combo, target.few_step)  # first: choosing a kind sets steps, CFG and sampler
    _select(panel.sampler_combo, target.sampler)
    _select(panel.refiner_combo, target.refiner)
    panel.refiner_switch_spin.setValue(target.refiner_switch_at)
    panel.steps_spin.setValue(target.steps)
    panel.cfg_spin.setValue(target.cfg_scale)
    panel.distilled_cfg_spin.setValue(target.distilled_cfg_scale)
    panel.seed_spin.setValue(target.seed)
    panel.width_spin.setValue(target.width)
    panel.height_spin.setValue(target.height)
    panel.batch_count_spin.setValue(target.batch_count)
    panel.batch_size_spin.setValue(target.batch_size)
    panel.clip_skip_spin.setValue(target.clip_skip)
    _select(panel.emphasis_combo, target.emphasis)
    _select(panel.device_combo, target.device)
    _select(panel.precision_combo, target.precision)
    _select(panel.memory_combo, target.memory_mode)
    panel.fast_check.setChecked(target.fast_mode)
    panel.rewrite_check.setChecked(target.rewrite_prompt)
    panel.subseed_spin.setValue(target.subseed)
    panel.subseed_strength_spin.setValue(target.subseed_strength)
    panel.resize_w_spin.setValue(target.seed_resize_from_w)
    panel.resize_h_spin.setValue(target.seed_resize_from_h)
    panel.tiling_check.setChecked(target.tiling)
    panel.lora_list.set_names([ref.name for ref in target.loras])
    for ref in target.loras:
        panel.lora_list.add_row(ref.name, ref.weight)
    panel.set_vae_names([target.vae])
    _select(panel.vae_combo, target.vae)
    panel.text_encoders_edit.setText(target.text_encoders)
    panel.hires_check.setChecked(target.hires_fix)
    panel.hires_scale_spin.setValue(target.hires_scale)
    panel.hires_resize_w_spin.setValue(target.hires_resize_w)
    panel.hires_resize_h_spin.setValue(target.hires_resize_h)
    _select(panel.hires_upscaler_combo, target.hires_upscaler)
    panel.hires_steps_spin.setValue(target.hires_steps)
    panel.hires_denoise_spin.setValue(target.hires_denoise)
    panel.hires_prompt_edit.setText(target.hires_prompt)
    panel.hires_negative_edit.setText(target.hires_negative_prompt)
    _select(panel.hires_sampler_combo, target.hires_sampler)
    panel.control_list.set_names([unit.model for unit in target.controls])
    for unit in target.controls:
        row = panel.control_list.add_unit_with_image(unit.image)
        _select(row.model_combo, unit.model)
        _select(row.preprocessor_combo, unit.preprocessor)
        _select(row.mode_combo, unit.mode)
        row.weight_spin.setValue(unit.weight)
        row.start_spin.setValue(unit.start)
        row.end_spin.setValue(unit.end)
    panel.set_reference_models({target.model: 4})  # the scan found a model that reads up to 4
    panel.references_row.add_images(target.reference_images)
    for box in target.layout_boxes:  # drawn in the frame, then described in the list
        panel.layout_editor.area.drawn.emit((box.left, box.top, box.right, box.bottom))
        panel.layout_editor.table.item(panel.layout_editor.table.rowCount() - 1, 0).setText(box.description)


@pytest.fixture
def panel(qtbot) -> ParameterPanel:
    panel = ParameterPanel(ParameterModel())
    qtbot.addWidget(panel)
    return panel


def test_the_changed_parameters_differ_from_the_defaults_in_every_field() -> None:
    defaults = Parameters()
    assert [name for name in PARAMETER_FIELDS if getattr(CHANGED, name) == getattr(defaults, name)] == []


def test_setting_the_model_updates_every_widget(panel: ParameterPanel) -> None:
    readers = _readers(panel)
    assert set(readers) == set(PARAMETER_FIELDS)
    panel.model.set_parameters(CHANGED)
    shown = {name: read() for name, read in readers.items()}
    assert shown == dataclasses.asdict(CHANGED) | {"loras": CHANGED.loras, "controls": CHANGED.controls,
                                                   "layout_boxes": CHANGED.layout_boxes}
    assert panel.model.parameters == CHANGED  # showing changed nothing back


def test_editing_every_widget_updates_the_model(panel: ParameterPanel) -> None:
    changed: list[str] = []
    panel.model.field_changed.connect(lambda name, _value: changed.append(name))
    _edit_every_widget(panel, CHANGED)
    assert panel.model.parameters == CHANGED
    # One change per field (the LoRA and control rows and the layout boxes several: added, then edited), no echo
    # from the widgets.
    assert sorted(set(changed)) == sorted(PARAMETER_FIELDS)
    assert changed.count("layout_boxes") == 2 * len(CHANGED.layout_boxes)
    # Choosing the few-step kind set steps, CFG and sampler, which the edits after it change again.
    several = ("loras", "controls", "layout_boxes")
    assert len([name for name in changed if name not in several]) == len(PARAMETER_FIELDS) - 3 + 3


def test_the_request_is_built_from_the_model_with_every_field(panel: ParameterPanel) -> None:
    request = build_request(CHANGED, "a cat", "blurry")
    assert (request.prompt, request.negative_prompt) == ("a cat", "blurry")
    assert {name: getattr(request, name) for name in PARAMETER_FIELDS} == dataclasses.asdict(CHANGED) | {
        "loras": CHANGED.loras, "controls": CHANGED.controls, "layout_boxes": CHANGED.layout_boxes
    }
    panel.model.set_parameters(CHANGED)
    assert panel.model.request("a cat", "blurry") == request
    # A new request field is either a setting here or named as someone else's.
    request_fields = {field.name for field in dataclasses.fields(GenerationRequest)}
    assert request_fields - NOT_PARAMETERS == set(PARAMETER_FIELDS)


def test_a_reused_request_sets_the_model_and_one_without_a_model_keeps_the_current(panel: ParameterPanel) -> None:
    panel.model.set_from_request(build_request(CHANGED, "p"))
    assert panel.model.parameters == CHANGED
    panel.model.set_from_request(GenerationRequest(prompt="p", model="", steps=7))
    assert (panel.model.value("model"), panel.model.value("steps")) == (CHANGED.model, 7)


def test_a_value_no_widget_can_show_becomes_the_value_shown(panel: ParameterPanel) -> None:
    before = panel.model.value("sampler")
    panel.model.update(sampler="no such sampler", steps=5)
    # The job runs with what the user sees, not with a value the panel silently cannot show.
    assert panel.model.value("sampler") == before == panel.sampler_combo.currentData()
    assert panel.steps_spin.value() == 5


def test_an_unknown_field_is_refused(panel: ParameterPanel) -> None:
    with pytest.raises(ValueError, match="Not a parameter: colour"):
        panel.model.update(colour="red")


def test_setting_values_the_model_already_has_says_nothing(qtbot, panel: ParameterPanel) -> None:
    panel.model.set_parameters(CHANGED)
    with qtbot.assertNotEmitted(panel.model.field_changed):
        panel.model.set_parameters(CHANGED)
        panel.model.update(steps=CHANGED.steps)
    with qtbot.waitSignal(panel.model.field_changed, timeout=1000) as changed:
        panel.model.set_from_request(dataclasses.replace(build_request(CHANGED, "p"), steps=9))
    assert changed.args == ["steps", 9]


def test_a_request_without_a_model_keeps_the_model_even_without_a_panel() -> None:
    model = ParameterModel(CHANGED)
    model.set_from_request(GenerationRequest(prompt="p", model=""))
    assert model.value("model") == CHANGED.model


def test_extra_row_is_folded_until_asked_for_or_a_recipe_uses_it(panel: ParameterPanel) -> None:
    assert panel.extra.isHidden()
    panel.extra_button.click()
    assert not panel.extra.isHidden()
    panel.extra_button.click()
    assert panel.extra.isHidden()
    panel.model.update(tiling=True)
    assert not panel.extra.isHidden() and panel.extra_button.isChecked()


def test_hires_fix_is_folded_until_asked_for_or_a_recipe_uses_it(panel: ParameterPanel) -> None:
    assert panel.hires.isHidden()
    panel.hires_button.click()
    assert not panel.hires.isHidden()
    panel.hires_button.click()
    assert panel.hires.isHidden()
    panel.model.update(hires_fix=True, hires_upscaler="Latent (bicubic)")
    assert not panel.hires.isHidden() and panel.hires_button.isChecked()
    panel.set_upscalers(["4x-tiny"])
    panel.hires_upscaler_combo.setCurrentIndex(panel.hires_upscaler_combo.findData("4x-tiny"))
    assert build_request(panel.model.parameters, "p").hires_upscaler == "4x-tiny"


def test_the_vae_list_keeps_the_choice_and_offers_the_models_own(panel: ParameterPanel) -> None:
    panel.set_vae_names(["crisp", "soft"])
    assert [panel.vae_combo.itemData(i) for i in range(panel.vae_combo.count())] == ["", "crisp", "soft"]
    _select(panel.vae_combo, "soft")
    assert panel.model.value("vae") == "soft"
    panel.set_vae_names(["crisp"])  # removed from the library: still shown, so the job can say it is missing
    assert panel.vae_combo.currentData() == "soft" and panel.model.value("vae") == "soft"
    panel.model.update(vae="")
    assert panel.vae_combo.currentData() == "" and build_request(panel.model.parameters, "p").vae == ""


def test_distilled_cfg_shows_for_flux_dev_only_and_schnell_brings_its_few_steps(panel: ParameterPanel) -> None:
    panel.set_families({"dev": "flux-dev", "schnell": "flux-schnell", "sd": "sd1"})
    panel.set_models(["sd", "dev", "schnell"], "/models")
    assert panel.selected_model() == "sd" and not panel.distilled_cfg_spin.isVisibleTo(panel)
    panel.model.update(steps=25, cfg_scale=6.0)
    _select(panel.model_combo, "dev")
    assert panel.distilled_cfg_spin.isVisibleTo(panel) and panel.distilled_cfg_label.isVisibleTo(panel)
    assert (panel.model.value("steps"), panel.model.value("cfg_scale")) == (25, 6.0)
    _select(panel.model_combo, "schnell")
    assert not panel.distilled_cfg_spin.isVisibleTo(panel)
    assert (panel.model.value("steps"), panel.model.value("cfg_scale")) == (4, 1.0)
    _select(panel.model_combo, "sd")  # leaving schnell: the usual steps and CFG again
    assert (panel.model.value("steps"), panel.model.value("cfg_scale")) == (30, 7.5)
    panel.model.update(model="dev")  # a recipe choosing the model shows the row too
    assert panel.distilled_cfg_spin.isVisibleTo(panel)


def test_text_encoders_row_shows_for_transformer_only_models_and_empty_means_none(panel: ParameterPanel) -> None:
    panel.set_models(["sd-model", "flux-transformer"], "/models")
    panel.set_component_models(frozenset({"flux-transformer"}))
    _select(panel.model_combo, "sd-model")
    assert panel.text_encoders_row.isHidden()
    _select(panel.model_combo, "flux-transformer")
    assert not panel.text_encoders_row.isHidden() and not panel.text_encoders_label.isHidden()
    # No folder chosen: the request carries None, as the command line without --text-encoders.
    assert panel.model.request("p").text_encoders is None
    panel.text_encoders_edit.setText("/models/flux-dev")
    assert panel.model.request("p").text_encoders == "/models/flux-dev"
    assert Parameters.from_request(GenerationRequest(prompt="p", model="m", text_encoders=None)).text_encoders == ""


def test_the_memory_list_offers_nf4_and_int8_greyed_out_without_bitsandbytes_or_cuda(qtbot) -> None:
    from PySide6.QtGui import QStandardItemModel

    from desktop.engine.quantised_support import QuantisedSupport

    def entry(panel: ParameterPanel, mode: str):
        model = panel.memory_combo.model()
        assert isinstance(model, QStandardItemModel)
        return model.item(panel.memory_combo.findData(mode))

    def panel_with(bitsandbytes: bool, cuda: bool) -> ParameterPanel:
        panel = ParameterPanel(ParameterModel(), quantised=QuantisedSupport(bitsandbytes=bitsandbytes, cuda=cuda))
        qtbot.addWidget(panel)
        return panel

    installed = panel_with(True, True)
    for mode in ("nf4", "int8"):
        assert entry(installed, mode).isEnabled() and not entry(installed, mode).toolTip()
    _select(installed.memory_combo, "nf4")
    assert installed.model.request("p").memory_mode == "nf4"
    cases = ((False, True, "bitsandbytes", "CUDA"), (True, False, "CUDA", "bitsandbytes"), (False, False, "CUDA", None))
    for bitsandbytes, cuda, said, unsaid in cases:
        lacking = panel_with(bitsandbytes, cuda)
        for mode in ("nf4", "int8"):
            tip = entry(lacking, mode).toolTip()
            assert not entry(lacking, mode).isEnabled() and said in tip and (unsaid is None or unsaid not in tip)
        assert entry(lacking, "fp8").isEnabled() and entry(lacking, "auto").isEnabled()
    assert "bitsandbytes" in entry(panel_with(False, False), "nf4").toolTip()  # both reasons, when both lack
