"""The library index: import by copy or hard link, detect, hash, cancel, names, pickles refused or converted."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from desktop.engine.errors import Cancelled, InvalidRequest, ModelError
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import autov3_hash
from desktop.engine.library.index import SCHEMA_VERSION, Library, check_name
from desktop.engine.paths import AppPaths
from tests.support import tiny_loras, tiny_models


@pytest.fixture
def paths(tmp_path) -> AppPaths:
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.fixture(scope="module")
def kohya_lora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-src")
    return tiny_loras.save_lora(
        tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=5), folder / "ink.safetensors"
    )


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_single_file_records_everything(paths, tiny_sd15_single):
    source, _config = tiny_sd15_single
    progress: list[tuple[int, int]] = []
    record = Library(paths).import_path(source, "model", "My Model", on_progress=lambda d, t: progress.append((d, t)))
    target = paths.models / "My Model.safetensors"
    assert target.is_file()
    assert (record.name, record.kind, record.file, record.architecture, record.family, record.format) == (
        "My Model",
        "model",
        "My Model.safetensors",
        "SD 1.x",
        "sd1",
        "safetensors",
    )
    assert record.size == source.stat().st_size
    assert record.sha256 == sha256(source) and record.autov2 == record.sha256[:10]
    assert record.autov3 == autov3_hash(source)
    assert record.source == str(source.resolve()) and record.imported_at
    assert progress and progress[-1][0] == progress[-1][1] == source.stat().st_size
    document = json.loads(paths.library_index.read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["entries"]["model"]["My Model.safetensors"]["sha256"] == record.sha256
    # The window and the generate command keep finding it through ModelCatalog.
    assert ModelCatalog(paths.models).find("my model").path == target
    # A second Library object (next start) reads the same record.
    assert Library(paths).get("model", "My Model") == record


def test_same_volume_import_is_a_hard_link(paths, tiny_sd15_single):
    source, _ = tiny_sd15_single
    Library(paths).import_path(source, "model", "linked")
    assert os.stat(paths.models / "linked.safetensors").st_ino == os.stat(source).st_ino


def test_cancelled_copy_leaves_nothing(paths, tiny_sd15_single, monkeypatch):
    source, _ = tiny_sd15_single
    assert source.stat().st_size > 2 * 1024 * 1024  # more than one chunk, so cancel lands mid-copy

    def no_link(*_args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    calls = []
    with pytest.raises(Cancelled, match="nothing was added"):
        Library(paths).import_path(
            source, "model", "half", on_progress=lambda d, t: calls.append(d), should_cancel=lambda: bool(calls)
        )
    assert list(paths.models.iterdir()) == []
    assert Library(paths).records("model") == []
    # Without cancel the copy completes, and its sha256 was computed on the way.
    record = Library(paths).import_path(source, "model", "whole")
    assert os.stat(paths.models / "whole.safetensors").st_ino != os.stat(source).st_ino
    assert record.sha256 == sha256(source)


def test_import_diffusers_folder(paths, tiny_sd15_dir):
    record = Library(paths).import_path(tiny_sd15_dir, "model")
    assert record.name == tiny_sd15_dir.name and record.format == "diffusers" and record.architecture == "SD 1.x"
    assert (paths.models / tiny_sd15_dir.name / "model_index.json").is_file()
    assert record.sha256 is None and record.size > 0


def test_import_lora_and_wrong_kinds(paths, kohya_lora, tiny_sd15_single):
    library = Library(paths)
    record = library.import_path(kohya_lora, "lora")
    assert (record.kind, record.format, record.autov3) == ("lora", "kohya", autov3_hash(kohya_lora))
    assert [r.name for r in library.records("lora")] == ["ink"]
    with pytest.raises(ModelError, match="looks like a LoRA"):
        library.import_path(kohya_lora, "model", "lora-as-model")
    with pytest.raises(ModelError, match="not a LoRA"):
        library.import_path(tiny_sd15_single[0], "lora", "model-as-lora")
    assert not any(p.name.endswith(".partial") for p in paths.models.parent.rglob("*"))
    assert library.records("model") == []


def test_duplicate_names_are_refused(paths, kohya_lora):
    library = Library(paths)
    library.import_path(kohya_lora, "lora")
    with pytest.raises(ModelError, match="already has a LoRA named 'ink'"):
        library.import_path(kohya_lora, "lora")
    assert library.import_path(kohya_lora, "lora", "ink-2").name == "ink-2"


@pytest.mark.parametrize(
    "name", ["../escape", "..\\escape", "C:\\Windows\\x", "a/b", "nul\x00byte", "", "  ", ".hidden", "CON", "x" * 200]
)
def test_unsafe_names_never_become_files(paths, kohya_lora, name):
    with pytest.raises(InvalidRequest, match="cannot be a library name"):
        check_name(name)
    with pytest.raises(InvalidRequest):
        Library(paths).import_path(kohya_lora, "lora", name)
    assert list(paths.loras.iterdir()) == [] and not (paths.models.parent / "escape.safetensors").exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "C:\\Windows\\x", "ink\x00", "/ink"])
def test_lookup_names_are_compared_not_joined(paths, kohya_lora, name):
    library = Library(paths)
    library.import_path(kohya_lora, "lora")
    assert library.find("lora", name) is None
    with pytest.raises(ModelError, match="No LoRA named"):
        library.remove("lora", name)
    assert (paths.loras / "ink.safetensors").is_file()


def test_remove_rename_and_info_on_a_hand_copied_file(paths, kohya_lora):
    library = Library(paths)
    shutil.copyfile(kohya_lora, paths.loras / "dropped.safetensors")
    listed = library.get("lora", "dropped")
    assert not listed.indexed and listed.sha256 is None
    info = library.info("lora", "DROPPED")
    assert info.indexed and info.sha256 == sha256(kohya_lora) and info.format == "kohya"
    library.rename("lora", "dropped", "renamed")
    assert (paths.loras / "renamed.safetensors").is_file() and not (paths.loras / "dropped.safetensors").exists()
    assert library.get("lora", "renamed").sha256 == info.sha256
    library.remove("lora", "renamed")
    assert library.records("lora") == []
    assert json.loads(paths.library_index.read_text())["entries"]["lora"] == {}


def test_header_metadata_is_shown(paths, tmp_path):
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=6)
    source = tiny_loras.save_lora(tensors, tmp_path / "meta.safetensors", {"ss_output_name": "meta", "trigger": "xyz"})
    library = Library(paths)
    record = library.import_path(source, "lora")
    assert library.header_metadata(record) == {"ss_output_name": "meta", "trigger": "xyz"}


def test_newer_or_damaged_index_is_a_clear_error(paths, kohya_lora):
    paths.library_index.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "entries": {}}))
    with pytest.raises(ModelError, match="newer Marble"):
        Library(paths).records("lora")
    paths.library_index.write_text("{not json")
    with pytest.raises(ModelError, match="damaged"):
        Library(paths).records("lora")
    assert paths.library_index.with_suffix(".damaged.json").is_file()


# --------------------------------------------------------------------------------------------------
# Pickles


class _Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("file_name", ["model.ckpt", "disguised.safetensors", "weights.bin"])
def test_pickles_are_refused_by_default_whatever_the_name(paths, tmp_path, file_name):
    source = tmp_path / file_name
    torch.save({"w": torch.ones(2)}, source)
    with pytest.raises(ModelError, match="pickled PyTorch checkpoint.*--convert-pickle"):
        Library(paths).import_path(source, "model")
    assert list(paths.models.iterdir()) == []


@pytest.mark.parametrize("writer", ["torch-zip", "raw-pickle"])
def test_a_malicious_pickle_is_rejected_and_never_runs(paths, tmp_path, writer):
    marker = tmp_path / "PWNED"
    source = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.ones(2)}, "x": _Payload(marker)}
    if writer == "torch-zip":
        torch.save(payload, source)
    else:
        source.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(ModelError, match="evil.ckpt was not converted: it needs more than plain tensors"):
        Library(paths).import_path(source, "lora", convert_pickle=True)
    assert not marker.exists()
    assert list(paths.loras.iterdir()) == []


def test_a_benign_state_dict_pickle_converts(paths, tmp_path):
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=7)
    source = tmp_path / "old-lora.pt"
    torch.save({"state_dict": tensors, "epoch": 3}, source)
    record = Library(paths).import_path(source, "lora", convert_pickle=True)
    assert (record.name, record.format) == ("old-lora", "kohya")
    converted = load_file(str(paths.loras / "old-lora.safetensors"))
    assert converted.keys() == tensors.keys()
    assert all(torch.equal(converted[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("planted_by", ["working folder", "PYTHONPATH"])
def test_the_converter_child_imports_nothing_from_the_users_folders(paths, tmp_path, monkeypatch, planted_by):
    # A json.py beside the user's working folder (or on their PYTHONPATH) must not run in the child.
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "HIJACKED"
    (planted / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    if planted_by == "working folder":
        monkeypatch.chdir(planted)
    else:
        monkeypatch.setenv("PYTHONPATH", str(planted))
    source = tmp_path / "old-lora.pt"
    torch.save({"state_dict": tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=3)}, source)
    record = Library(paths).import_path(source, "lora", convert_pickle=True)
    assert record.name == "old-lora" and (paths.loras / "old-lora.safetensors").is_file()
    assert not marker.exists()


def test_a_diffusers_folder_with_pickled_weights_is_refused(paths, tiny_sd15_dir, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_sd15_dir, folder)
    torch.save({"w": torch.ones(2)}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickled PyTorch weights \(unet/diffusion_pytorch_model.bin\)"):
        Library(paths).import_path(folder, "model")
    assert list(paths.models.iterdir()) == []
