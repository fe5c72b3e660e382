"""The window learns each model's family from its files: Distilled CFG shows for a Flux dev model only,
and choosing a Flux schnell model brings its few-step defaults."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PySide6.QtCore import Qt
from safetensors.torch import save_file

from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import TIMEOUT_MS
from tests.ui.test_session_memory import pick, unet_folder
from tests.ui.test_settings_and_logs import close_window, open_window


def flux_folder(models: Path, name: str, dev: bool) -> None:
    """A Flux diffusers folder as the scan sees it (configs only; never loaded)."""
    folder = models / name
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (folder / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "FluxTransformer2DModel", "guidance_embeds": dev})
    )


def test_distilled_cfg_row_follows_the_models_family(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = AppPaths.for_root(home).ensure().models
    flux_folder(models, "zz-flux-dev", dev=True)
    flux_folder(models, "zz-flux-schnell", dev=False)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-flux-schnell") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-flux-dev")
        assert panel.distilled_cfg_spin.isVisibleTo(panel)
        panel.distilled_cfg_spin.setValue(2.5)
        assert window.parameters.request("a fox").distilled_cfg_scale == 2.5
        pick(panel.model_combo, "zz-flux-schnell")
        assert not panel.distilled_cfg_spin.isVisibleTo(panel)
        qtbot.waitUntil(lambda: panel.steps_spin.value() == 4, timeout=TIMEOUT_MS)
        assert panel.cfg_spin.value() == 1.0
        # Each family keeps its own values: schnell's steps as changed, dev's distilled CFG as set.
        panel.steps_spin.setValue(6)
        pick(panel.model_combo, "zz-flux-dev")
        qtbot.waitUntil(lambda: panel.distilled_cfg_spin.value() == 2.5, timeout=TIMEOUT_MS)
        assert panel.steps_spin.value() != 6
        pick(panel.model_combo, "zz-flux-schnell")
        qtbot.waitUntil(lambda: panel.steps_spin.value() == 6, timeout=TIMEOUT_MS)
        assert panel.cfg_spin.value() == 1.0
    finally:
        close_window(window, controller)


def transformer_only_file(models: Path, name: str) -> Path:
    """A Flux.1 transformer-only file in BFL names as the scan sees it (headers only; never loaded)."""
    import torch
    from safetensors.torch import save_file

    names = ("img_in.weight", "txt_in.weight", "final_layer.linear.weight", "time_in.in_layer.weight",
             "double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight")  # fmt: skip
    path = models / f"{name}.safetensors"
    save_file({key: torch.zeros(2, 2) for key in names}, str(path))
    return path


def test_text_encoders_row_shows_for_a_transformer_only_file_and_is_kept(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = AppPaths.for_root(home).ensure().models
    flux_folder(models, "zz-flux-dev", dev=True)
    transformer_only_file(models, "zz-flux-transformer")
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-flux-transformer") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-flux-transformer")
        qtbot.waitUntil(lambda: panel.text_encoders_edit.isVisibleTo(panel), timeout=TIMEOUT_MS)
        panel.text_encoders_edit.setText(str(models / "zz-flux-dev"))
        assert window.parameters.request("a fox").text_encoders == str(models / "zz-flux-dev")
        pick(panel.model_combo, "zz-flux-dev")  # a whole diffusers folder: nothing to choose
        assert not panel.text_encoders_edit.isVisibleTo(panel)
        pick(panel.model_combo, "zz-flux-transformer")
    finally:
        close_window(window, controller)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2), model="zz-flux-transformer")
    try:
        qtbot.wait(50)
        assert window.parameters.parameters.text_encoders == str(models / "zz-flux-dev")
        assert window.parameter_panel.text_encoders_edit.text() == str(models / "zz-flux-dev")
    finally:
        close_window(window, controller)


def flux2_folder(models: Path, name: str, dev: bool) -> None:
    """A Flux.2 diffusers folder as the scan sees it (configs only; never loaded)."""
    folder = models / name
    (folder / "transformer").mkdir(parents=True)
    pipeline = "Flux2Pipeline" if dev else "Flux2KleinPipeline"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    (folder / "transformer" / "config.json").write_text(json.dumps({
        "_class_name": "Flux2Transformer2DModel", "guidance_embeds": dev, "joint_attention_dim": 15360 if dev else 7680,
    }))  # fmt: skip


def test_flux2_dev_shows_distilled_cfg_and_klein_brings_its_few_steps(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = AppPaths.for_root(home).ensure().models
    flux2_folder(models, "zz-flux2-dev", dev=True)
    flux2_folder(models, "zz-flux2-klein", dev=False)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-flux2-klein") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-flux2-dev")
        qtbot.waitUntil(lambda: panel.distilled_cfg_spin.isVisibleTo(panel), timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: panel.distilled_cfg_spin.value() == 4.0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-flux2-klein")
        assert not panel.distilled_cfg_spin.isVisibleTo(panel)
        qtbot.waitUntil(lambda: panel.steps_spin.value() == 4, timeout=TIMEOUT_MS)
        assert panel.cfg_spin.value() == 1.0
    finally:
        close_window(window, controller)


def test_seamless_tiling_and_fast_mode_are_off_for_a_dit_and_come_back_for_a_unet(qtbot, tmp_path: Path) -> None:
    # A DiT has neither (the backend would only say it ignored them): the boxes are greyed with the reason,
    # the job does not ask for them, and the user's ticks, kept, count again with an SD model.
    home = tmp_path / "home"
    models = AppPaths.for_root(home).ensure().models
    flux_folder(models, "zz-flux-dev", dev=True)
    unet_folder(models, "zz-sd1-model", 768)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-flux-dev") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-sd1-model")
        panel.tiling_check.setChecked(True)
        panel.fast_check.setChecked(True)
        request = window.current_request()
        assert request.tiling and request.fast_mode
        pick(panel.model_combo, "zz-flux-dev")
        qtbot.waitUntil(lambda: not panel.tiling_check.isEnabled(), timeout=TIMEOUT_MS)
        assert not panel.fast_check.isEnabled() and "diffusion transformer" in panel.tiling_check.toolTip()
        request = window.current_request()
        assert not request.tiling and not request.fast_mode
        pick(panel.model_combo, "zz-sd1-model")
        qtbot.waitUntil(lambda: panel.tiling_check.isEnabled(), timeout=TIMEOUT_MS)
        request = window.current_request()
        assert request.tiling and request.fast_mode and "wraps" in panel.tiling_check.toolTip()
    finally:
        close_window(window, controller)


def test_control_units_are_greyed_for_a_dit_without_controlnets_and_kept(qtbot, tmp_path: Path) -> None:
    # Flux.2 has no ControlNets in Marble (the backend refuses its units); Flux.1 and SD models take them.
    home = tmp_path / "home"
    models = AppPaths.for_root(home).ensure().models
    flux_folder(models, "zz-flux-dev", dev=True)
    flux2_folder(models, "zz-flux2-dev", dev=True)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    unit = ControlUnit("edges", str(tmp_path / "edges.png"))
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-flux2-dev") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-flux-dev")
        panel.control_list.set_controls((unit,))
        assert panel.control_list.isEnabled() and window.current_request().controls == (unit,)
        pick(panel.model_combo, "zz-flux2-dev")
        qtbot.waitUntil(lambda: not panel.control_list.isEnabled(), timeout=TIMEOUT_MS)
        assert "not the chosen one" in panel.control_list.toolTip() and window.current_request().controls == ()
        pick(panel.model_combo, "zz-flux-dev")
        qtbot.waitUntil(panel.control_list.isEnabled, timeout=TIMEOUT_MS)
        assert window.current_request().controls == (unit,)
    finally:
        close_window(window, controller)


# A Flux.1 ControlNet's header as the library tells it (diffusers' names).
FLUX_CONTROLNET = {"controlnet_x_embedder.weight": (8, 4), "controlnet_blocks.0.weight": (8, 8),
                   "x_embedder.weight": (8, 4), "context_embedder.weight": (8, 16)}  # fmt: skip


def fake_control(path: Path, names: dict[str, tuple[int, ...]]) -> None:
    """A control model's header as the library reads it (zeros: never run)."""
    save_file({name: torch.zeros(shape) for name, shape in names.items()}, str(path))


def test_the_control_units_offer_the_control_models_made_for_the_chosen_model(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    flux_folder(paths.models, "zz-flux-dev", dev=True)
    unet_folder(paths.models, "zz-sd15", 768)
    unet_folder(paths.models, "zz-sdxl", 2048)
    paths.controls.mkdir(parents=True, exist_ok=True)
    sd = {"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3), "controlnet_down_blocks.0.weight": (8, 8, 1, 1),
          "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (8, 768)}  # fmt: skip
    fake_control(paths.controls / "a-sd15-edges.safetensors", sd)
    sdxl = sd | {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (8, 2048),
                 "add_embedding.linear_1.weight": (8, 8)}  # fmt: skip
    fake_control(paths.controls / "b-sdxl-depth.safetensors", sdxl)
    fake_control(paths.controls / "c-flux-union.safetensors", FLUX_CONTROLNET)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    controls = panel.control_list

    def listed(row) -> list[str]:
        return [row.model_combo.itemData(i) for i in range(row.model_combo.count())]

    try:
        qtbot.waitUntil(lambda: len(controls.names()) == 3, timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-sdxl") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-sd15")
        assert controls.offered() == ["a-sd15-edges"], (controls._families, controls._model_family)
        row = controls.add_row()
        assert row.name() == "a-sd15-edges" and listed(row) == ["a-sd15-edges"]
        pick(panel.model_combo, "zz-flux-dev")
        # The unit keeps its model (a job would refuse it by name), marked; a new unit gets the Flux one.
        assert row.name() == "a-sd15-edges" and listed(row) == ["c-flux-union", "a-sd15-edges"]
        tip = row.model_combo.itemData(1, Qt.ItemDataRole.ToolTipRole)
        assert "another kind of model" in tip
        assert controls.add_row().name() == "c-flux-union"
        pick(panel.model_combo, "zz-sdxl")
        assert controls.offered() == ["b-sdxl-depth"] and "b-sdxl-depth" in listed(row)
    finally:
        close_window(window, controller)


def flux_dev_home(tmp_path: Path) -> tuple[Path, AppPaths]:
    """A home with a Flux.1 dev folder "zz-flux-dev" and a Flux.1 ControlNet "c-flux-union" in its libraries."""
    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    flux_folder(paths.models, "zz-flux-dev", dev=True)
    paths.controls.mkdir(parents=True, exist_ok=True)
    fake_control(paths.controls / "c-flux-union.safetensors", FLUX_CONTROLNET)
    return home, paths


def test_a_canny_or_depth_dev_model_offers_its_own_control_input(qtbot, tmp_path: Path) -> None:
    # BFL's Flux.1 Canny / Depth dev read the control picture themselves: their units offer that input, with the
    # settings it runs at, and no ControlNet (the backend refuses ControlNets beside it).
    home, paths = flux_dev_home(tmp_path)
    flux_folder(paths.models, "zz-flux-canny", dev=True)
    canny = paths.models / "zz-flux-canny"
    (canny / "model_index.json").write_text(json.dumps({"_class_name": "FluxControlPipeline"}))
    (canny / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "FluxTransformer2DModel", "guidance_embeds": True, "in_channels": 128, "out_channels": 64}
    ))  # fmt: skip
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    controls = panel.control_list
    try:
        qtbot.waitUntil(lambda: len(controls.names()) == 1, timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: "zz-flux-canny" in panel._control_input_models, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-flux-canny")
        assert controls.offered() == ["built-in"] and controls.add_button.isEnabled()
        row = controls.add_row()
        assert row.name() == "built-in" and row.model_combo.currentText() == "Built-in (the model's control input)"
        assert row.weight_spin.value() == 1.0 and not row.weight_spin.isEnabled() and not row.end_spin.isEnabled()
        row.set_image(str(tmp_path / "edges.png"))
        assert window.current_request().controls[0].model == "built-in"
        pick(panel.model_combo, "zz-flux-dev")
        assert controls.offered() == ["c-flux-union"]
        other = controls.add_row()
        assert other.name() == "c-flux-union" and other.weight_spin.isEnabled()
    finally:
        close_window(window, controller)


def test_a_flux_control_lora_unit_acts_at_every_step(qtbot, tmp_path: Path) -> None:
    # BFL's Canny / Depth LoRAs turn Flux.1 dev into its control form for the whole job: the range is fixed,
    # the weight (the LoRA's scale) is free.
    home, paths = flux_dev_home(tmp_path)
    fake_control(paths.controls / "flux1-canny-dev-lora.safetensors", {
        "transformer.x_embedder.lora_A.weight": (4, 128), "transformer.x_embedder.lora_B.weight": (3072, 4),
        "transformer.transformer_blocks.0.attn.norm_q.weight": (128,),
    })  # fmt: skip
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    controls = window.parameter_panel.control_list
    try:
        qtbot.waitUntil(lambda: len(controls.names()) == 2, timeout=TIMEOUT_MS)
        pick(window.parameter_panel.model_combo, "zz-flux-dev")
        row = controls.add_row(ControlUnit("flux1-canny-dev-lora", str(tmp_path / "edges.png"), 0.8, 0.2, 0.7))
        assert not row.start_spin.isEnabled() and not row.end_spin.isEnabled() and row.weight_spin.isEnabled()
        assert (row.unit().weight, row.unit().start, row.unit().end) == (0.8, 0.0, 1.0)
        row.model_combo.setCurrentIndex(row.model_combo.findData("c-flux-union"))
        assert row.start_spin.isEnabled() and row.end_spin.isEnabled()
    finally:
        close_window(window, controller)


def test_a_pixart_file_brings_its_defaults_its_encoder_row_and_its_samplers(qtbot, tmp_path: Path) -> None:
    # A PixArt-Σ transformer file in its makers' names (headers only; never loaded): 20 steps at CFG 4.5, the text
    # encoders row (T5 and the VAE come from elsewhere), no tiling or fast mode, and the sampler still the user's
    # (A1111's samplers run PixArt).
    home = tmp_path / "home"
    models = AppPaths.for_root(home).ensure().models
    names = ("blocks.0.mlp.fc1.weight", "blocks.0.attn.qkv.weight", "x_embedder.proj.weight", "t_embedder.mlp.0.weight",
             "t_block.1.weight", "y_embedder.y_proj.fc1.weight", "final_layer.linear.weight",
             "final_layer.scale_shift_table")  # fmt: skip
    tensors = {key: torch.zeros(2, 2) for key in names} | {"y_embedder.y_embedding": torch.zeros(300, 4)}
    save_file(tensors, str(models / "zz-pixart-sigma.safetensors"))
    unet_folder(models, "zz-sd1-model", 768)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-pixart-sigma") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-sd1-model")
        pick(panel.model_combo, "zz-pixart-sigma")
        qtbot.waitUntil(lambda: panel.steps_spin.value() == 20, timeout=TIMEOUT_MS)
        assert panel.cfg_spin.value() == 4.5
        qtbot.waitUntil(lambda: panel.text_encoders_edit.isVisibleTo(panel), timeout=TIMEOUT_MS)
        assert not panel.tiling_check.isEnabled() and not panel.distilled_cfg_spin.isVisibleTo(panel)
        assert panel.sampler_combo.isEnabled()
        # T5 alone reads its prompt: no CLIP token counter, which would count against a window it does not have.
        assert window.prompt_editor.prompt_count._hidden
    finally:
        close_window(window, controller)


def flux3_and_sd_models(home: Path) -> None:
    """A FLUX.3 folder ("zz-flux3": its index and transformer config, all the scan reads) and an SD 1.x one
    ("zz-sd1-model") in the library of `home`."""
    models = AppPaths.for_root(home).ensure().models
    folder = models / "zz-flux3"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "Flux3Pipeline"}))
    (folder / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "Flux3Transformer2DModel", "flow_map": False})
    )
    unet_folder(models, "zz-sd1-model", 768)


def test_the_prompt_rewriter_tick_shows_for_flux3_only_and_is_kept(qtbot, tmp_path: Path) -> None:
    # FLUX.3's prompt rewriter: the tick shows for a FLUX.3 model; with another model chosen it is hidden, the job
    # does not ask for it (the backend would refuse), and the user's tick counts again with FLUX.3.
    home = tmp_path / "home"
    flux3_and_sd_models(home)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-flux3") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-sd1-model")
        assert not panel.rewrite_check.isVisibleTo(panel)
        pick(panel.model_combo, "zz-flux3")
        qtbot.waitUntil(lambda: panel.rewrite_check.isVisibleTo(panel), timeout=TIMEOUT_MS)
        assert not window.current_request().rewrite_prompt
        panel.rewrite_check.setChecked(True)
        assert window.current_request().rewrite_prompt and panel.model.value("rewrite_prompt")
        pick(panel.model_combo, "zz-sd1-model")
        qtbot.waitUntil(lambda: not panel.rewrite_check.isVisibleTo(panel), timeout=TIMEOUT_MS)
        assert not window.current_request().rewrite_prompt and panel.rewrite_check.isChecked()
        pick(panel.model_combo, "zz-flux3")
        qtbot.waitUntil(lambda: panel.rewrite_check.isVisibleTo(panel), timeout=TIMEOUT_MS)
        assert window.current_request().rewrite_prompt
    finally:
        close_window(window, controller)
