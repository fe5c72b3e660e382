"""The control rows' model boxes list control models, not the preprocessors' networks kept beside them."""

from __future__ import annotations

from types import SimpleNamespace

from desktop.engine.library.index import LibraryRecord
from desktop.ui.dialogs.library_dialog import LibraryIntegration


def _record(name: str, fmt: str) -> LibraryRecord:
    return LibraryRecord(name, "control", f"{name}.safetensors", "x", None, fmt, 1, None, None, None, None, None)


def test_annotators_are_not_offered_as_a_units_model():
    shown: list[list[str]] = []
    panel = SimpleNamespace(control_list=SimpleNamespace(set_names=lambda names, **_: shown.append(names)))
    integration = SimpleNamespace(_window=SimpleNamespace(parameter_panel=panel))
    records = [_record("canny", "controlnet (ldm)"), _record("sk_model", "annotator (lineart)"),
               _record("dropped", "safetensors")]  # fmt: skip
    LibraryIntegration._on_records_listed(integration, "control", records)
    assert shown == [["canny", "dropped"]]


def test_a_learned_preprocessors_preview_is_the_image_unprocessed(tmp_path):
    from PIL import Image

    from desktop.ui.control_list import PREVIEW_SIDE, preview_image

    path = tmp_path / "p.png"
    Image.new("RGB", (300, 200), (200, 30, 60)).save(path)
    for name in ("depth", "lineart", "openpose"):  # no network runs on the GUI thread
        preview = preview_image(str(path), name)
        assert max(preview.size) == PREVIEW_SIDE and preview.getpixel((5, 5)) == (200, 30, 60)


def test_flux_image_prompts_read_one_picture_at_every_step():
    # Redux and XLabs' IP-Adapter (both Flux.1's image prompts) get the Redux unit's fixed settings; h94's
    # IP-Adapters keep their pictures and range.
    given: list[dict] = []
    panel = SimpleNamespace(control_list=SimpleNamespace(set_names=lambda names, **kw: given.append(kw)))
    integration = SimpleNamespace(_window=SimpleNamespace(parameter_panel=panel))
    records = [_record("redux", "ip-adapter (redux)"), _record("xlabs-ip", "ip-adapter (xlabs)"),
               _record("face", "ip-adapter (plus)")]  # fmt: skip
    LibraryIntegration._on_records_listed(integration, "control", records)
    assert sorted(given[0]["ip_adapters"]) == ["face", "redux", "xlabs-ip"]
    assert sorted(given[0]["redux"]) == ["redux", "xlabs-ip"]
