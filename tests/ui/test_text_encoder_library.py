"""The "Text encoders" row offers the library's text encoders beside the folder: ticking them writes their
names into the request, as `--text-encoders clip_l,t5xxl` does."""

from __future__ import annotations

from pathlib import Path

from desktop.engine.paths import AppPaths
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import TIMEOUT_MS
from tests.ui.test_flux_panel import transformer_only_file
from tests.ui.test_session_memory import pick
from tests.ui.test_settings_and_logs import close_window, open_window


def test_library_encoders_are_offered_and_reach_the_request(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    transformer_only_file(paths.models, "zz-flux-transformer")
    paths.text_encoders.mkdir(parents=True, exist_ok=True)
    for name in ("clip_l", "t5xxl_fp16", "R&D t5"):
        (paths.text_encoders / f"{name}.safetensors").write_bytes(b"listed by name; never loaded here")
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    row = panel.text_encoders_row
    try:
        qtbot.waitUntil(lambda: len(row.library_menu.actions()) == 3, timeout=TIMEOUT_MS)
        assert [a.data() for a in row.library_menu.actions()] == ["clip_l", "R&D t5", "t5xxl_fp16"]
        assert row.library_menu.actions()[1].text() == "R&&D t5"  # shown, not taken as a mnemonic
        pick(panel.model_combo, "zz-flux-transformer")
        qtbot.waitUntil(lambda: row.library_button.isVisibleTo(panel), timeout=TIMEOUT_MS)
        assert row.library_button.isEnabled()
        panel.text_encoders_edit.setText("/some/folder")
        actions = {a.data(): a for a in row.library_menu.actions()}
        actions["t5xxl_fp16"].setChecked(True)
        actions["clip_l"].setChecked(True)
        # Ticks replace a folder; the request carries the names in the menu's order.
        assert window.parameters.request("a fox").text_encoders == "clip_l,t5xxl_fp16"
        # Opening the menu shows what the field holds, typed in any case.
        panel.text_encoders_edit.setText("T5XXL_FP16")
        row.library_menu.aboutToShow.emit()
        assert [a.data() for a in row.library_menu.actions() if a.isChecked()] == ["t5xxl_fp16"]
    finally:
        close_window(window, controller)


def test_the_library_menu_offers_the_encoders_the_models_family_reads(qtbot) -> None:
    """CLIP and T5 for Flux and SD3, Qwen2.5-VL for Qwen-Image and LongCat-Image (and their Edit models), Qwen3 for
    Z-Image, Ovis-Image and Flux.2 Klein, Mistral for Flux.2 dev; an encoder not read yet, or a family without a rule,
    hides nothing. A tick left on an encoder the model cannot read does not reach the field."""
    from desktop.ui.text_encoder_row import TextEncoderRow

    row = TextEncoderRow()
    qtbot.addWidget(row)
    families = {"clip_l": "clip-l", "t5xxl": "t5-xxl", "qwen_2.5_vl_7b": "qwen2.5-vl", "qwen_3_4b": "qwen3",
                "mistral_3_small_flux2_bf16": "mistral3", "qwen3vl_4b": "qwen3vl", "unread": None}  # fmt: skip
    row.set_names(sorted(families), families)

    def offered() -> set[str]:
        return {action.data() for action in row.library_menu.actions() if action.isVisible()}

    expected = {
        "flux-dev": {"clip_l", "t5xxl"}, "sd3": {"clip_l", "t5xxl"}, "qwen-image": {"qwen_2.5_vl_7b"},
        "qwen-image-edit-plus": {"qwen_2.5_vl_7b"}, "z-image": {"qwen_3_4b"}, "flux2-klein": {"qwen_3_4b"},
        "flux2-dev": {"mistral_3_small_flux2_bf16"}, "longcat-image": {"qwen_2.5_vl_7b"}, "ovis-image": {"qwen_3_4b"},
        "longcat-image-edit": {"qwen_2.5_vl_7b"}, "krea2": {"qwen3vl_4b"}, "krea2-distilled": {"qwen3vl_4b"},
    }  # fmt: skip
    for family, names in expected.items():
        row.show_for(family)
        assert offered() == names | {"unread"}, family
    row.show_for(None)
    assert offered() == set(families)
    # A tick on Klein's Qwen3, then Flux.2 dev chosen: only what dev can read is written.
    row.show_for("flux2-klein")
    actions = {action.data(): action for action in row.library_menu.actions()}
    actions["qwen_3_4b"].setChecked(True)
    assert row.edit.text() == "qwen_3_4b"
    row.show_for("flux2-dev")
    actions["mistral_3_small_flux2_bf16"].setChecked(True)
    assert row.edit.text() == "mistral_3_small_flux2_bf16"
    # Nothing the model reads: the Library button is off.
    row.set_names(["clip_l"], {"clip_l": "clip-l"})
    assert not row.library_button.isEnabled()
    row.show_for("flux-dev")
    assert row.library_button.isEnabled()
