"""The library records a LoRA's few-step kind (library/few_step.py) at import, and reads it for files it has
not indexed yet, so the window can offer the preset without reading headers on the GUI thread."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from desktop.engine.errors import InvalidRequest, MarbleError
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.support import tiny_loras, tiny_models


def test_few_step_kind_is_recorded_at_import_and_read_for_unindexed_files(tmp_path: Path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=1)
    lcm = tiny_loras.save_lora(tensors, tmp_path / "a.safetensors", {"modelspec.title": "LCM-LoRA SD1.5"})
    plain = tiny_loras.save_lora(tensors, tmp_path / "b.safetensors")
    library = Library(paths)
    assert library.import_path(str(lcm), "lora", "fast").few_step == "lcm"
    assert library.import_path(str(plain), "lora", "plain").few_step == ""
    stored = json.loads(paths.library_index.read_text())["entries"]["lora"]
    assert stored["fast.safetensors"]["few_step"] == "lcm"
    shutil.copyfile(lcm, paths.loras / "dropped.safetensors")
    assert {r.name: (r.few_step, r.indexed) for r in library.records("lora")} == {
        "dropped": ("lcm", False), "fast": ("lcm", True), "plain": ("", True)}


def test_a_names_only_listing_reads_no_header(tmp_path: Path, monkeypatch):
    # A recipe matches names and hashes only: read on the GUI thread, it must not wait on file headers.
    from desktop.engine.library import index

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=1)
    tiny_loras.save_lora(tensors, paths.loras / "dropped.safetensors", {"modelspec.title": "LCM-LoRA SD1.5"})
    paths.controls.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.loras / "dropped.safetensors", paths.controls / "hand-copied.safetensors")
    library = Library(paths)

    def no_reading(*args, **kwargs):
        raise AssertionError("a header was read")

    monkeypatch.setattr(index, "few_step_of_file", no_reading)
    monkeypatch.setattr(index, "_control_header", no_reading)
    assert [r.name for r in library.records("lora", read_headers=False)] == ["dropped"]
    assert [r.name for r in library.records("control", read_headers=False)] == ["hand-copied"]


def test_the_user_chooses_the_kind_of_a_lora_whose_header_names_none_or_the_wrong_one(tmp_path: Path):
    """An LCM-LoRA as latent-consistency publishes it has no metadata, and its tensors are a plain LoRA's: only the
    user can say what it is (Library.choose_few_step). The choice is kept in the index and wins over the header."""
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=1)
    library = Library(paths)
    library.import_path(str(tiny_loras.save_lora(tensors, tmp_path / "a.safetensors")), "lora", "lcm-lora-sdv1-5")
    tagged = tiny_loras.save_lora(tensors, tmp_path / "b.safetensors", {"ss_output_name": "sdxl_lightning_4step"})
    shutil.copyfile(tagged, paths.loras / "tagged.safetensors")  # hand-copied: hashed when first chosen

    def kinds() -> dict[str, tuple[str, str]]:  # a fresh Library: what the index on disk says
        return {r.name: (r.few_step_kind, r.chosen_few_step) for r in Library(paths).records("lora")}

    assert kinds() == {"lcm-lora-sdv1-5": ("", ""), "tagged": ("lightning", "")}
    assert library.choose_few_step("lcm-lora-sdv1-5", "lcm").few_step_kind == "lcm"
    assert library.choose_few_step("tagged", "none").indexed
    assert kinds() == {"lcm-lora-sdv1-5": ("lcm", "lcm"), "tagged": ("", "none")}
    library.choose_few_step("tagged", "")  # back to what the header says
    assert kinds() == {"lcm-lora-sdv1-5": ("lcm", "lcm"), "tagged": ("lightning", "")}

    with pytest.raises(InvalidRequest, match="'fast' is not a few-step kind: choose lcm, turbo"):
        library.choose_few_step("tagged", "fast")
    with pytest.raises(MarbleError, match="nothing"):
        library.choose_few_step("nothing", "lcm")
    # An index edited by hand to hold something else: the header's kind, not an error.
    document = json.loads(paths.library_index.read_text())
    document["entries"]["lora"]["tagged.safetensors"]["chosen_few_step"] = "warp-speed"
    paths.library_index.write_text(json.dumps(document))
    assert kinds()["tagged"] == ("lightning", "warp-speed")
