"""The library records a LoRA's few-step kind (library/few_step.py) at import, and reads it for files it has
not indexed yet, so the window can offer the preset without reading headers on the GUI thread."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
