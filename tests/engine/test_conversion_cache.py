"""The converted-model cache is a key map over the user's own single file: a restart builds the converted
pipeline from views of that file and gets the first run's pixels, the entry holds no weights the file has, and a
changed, moved or vanished file, a damaged entry or a failed write costs only a new conversion."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

from desktop.engine.backends import conversion_cache
from desktop.engine.backends.conversion_cache import COMPUTED, KEYMAP, ConversionCache, write_safetensors
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest, LoraRef
from desktop.engine.resources import Resources
from tests.support import tiny_loras, tiny_models
from tests.support.aligned_loads import file_alignment


@pytest.fixture(autouse=True)
def tensors_where_the_file_puts_them():
    """These tests check that a restart rebuilds the very memory a plain load gives, so the test-wide
    alignment of loaded tensors (tests/support/aligned_loads.py) is off here."""
    with file_alignment():
        yield


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.fixture
def conversions(monkeypatch):
    """The single files the backend converted (a load from the key map converts nothing)."""
    converted: list[Path] = []
    real_convert = DiffusersBackend._convert_single_file

    def counted(self, path, *args):
        converted.append(path)
        return real_convert(self, path, *args)

    monkeypatch.setattr(DiffusersBackend, "_convert_single_file", counted)
    return converted


def make_backend(paths: AppPaths) -> DiffusersBackend:
    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0)


def image_of(backend: DiffusersBackend, model, config, **changes) -> np.ndarray:
    values = dict(prompt="a red circle", negative_prompt="blurry", model=str(model), model_config=str(config),
                  steps=3, cfg_scale=7.0, seed=7, width=64, height=64, device="cpu")  # fmt: skip
    request = GenerationRequest(**(values | changes)).validate()
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    return np.asarray(batch.images[0].convert("RGB"))


def entries(paths: AppPaths) -> list[Path]:
    return sorted(paths.converted_models.iterdir())


def keymap_of(entry: Path) -> dict:
    return json.loads((entry / KEYMAP).read_text())


def stored_names(entry: Path) -> set[str]:
    """The tensors the entry holds itself."""
    return set(load_file(str(entry / COMPUTED)))


def buffer_names(entry: Path) -> set[str]:
    return {f"{name}/{key}" for name, spec in keymap_of(entry)["components"].items() for key in spec["buffers"]}


def test_a_restart_builds_the_model_over_the_file_with_the_first_runs_pixels(
    paths, tiny_sd15_single, tiny_sd15_dir, conversions
):
    single, config = tiny_sd15_single
    tiny_loras.save_lora(tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=1),
                         paths.loras / "detail.safetensors")  # fmt: skip
    first = make_backend(paths)
    plain = image_of(first, single, config)
    # The entry is complete when the load returns: nothing runs behind the job.
    [entry] = entries(paths)
    assert (entry / KEYMAP).is_file() and ".partial" not in entry.name
    # It holds no weights: every converted tensor is placed in the original file, and the one tensor file
    # has only the text encoder's position ids (a buffer outside its state dict).
    places = [place for spec in keymap_of(entry)["components"].values() for place in spec["tensors"].values()]
    assert len(places) > 500 and None not in places
    assert stored_names(entry) == {"text_encoder/" + key for key in keymap_of(entry)["components"]["text_encoder"]
                                   ["buffers"]} == {"text_encoder/embeddings.position_ids"}  # fmt: skip
    assert [f.name for f in entry.rglob("*.safetensors")] == [COMPUTED] and list(entry.rglob("*.bin")) == []
    assert (entry / KEYMAP).stat().st_size + (entry / COMPUTED).stat().st_size < single.stat().st_size / 50
    # A LoRA job on the loaded model changes nothing that a later start reads.
    styled = image_of(first, single, config, loras=(LoraRef("detail", 1.0),))
    assert not np.array_equal(plain, styled)
    first.wait_for_caches()  # nothing to wait for, and still callable

    again = make_backend(paths)
    restarted = image_of(again, single, config)
    folder = image_of(make_backend(paths), tiny_sd15_dir, config)
    assert np.array_equal(restarted, plain) and np.array_equal(restarted, folder)
    assert conversions == [single]  # the restart converted nothing
    # The restarted UNet's weights are the file's bytes in place, not copies.
    weight = again._pipe.unet.conv_in.weight
    assert weight.untyped_storage().nbytes() == single.stat().st_size


def _plain_and_cached(tmp_path, build, cls, **save_options):
    """(plain from_single_file pipeline, the same pipeline rebuilt from its key map) for a tiny model."""
    pipe = build()
    single = tiny_models.save_single_file(pipe, tmp_path / "model.safetensors", **save_options)
    config = tiny_models.save_config_folder(pipe, tmp_path / "config")
    plain = cls.from_single_file(str(single), config=str(config), local_files_only=True, dtype=torch.float32)
    target = tmp_path / "cache" / "model-0123"
    assert ConversionCache().save(plain, target, single) is None
    modules = ConversionCache().load(target, single, torch.float32)
    assert modules is not None
    return plain, cls.from_pretrained(str(target), local_files_only=True, **modules), target


@pytest.mark.parametrize(
    ("build", "cls", "options"),
    [
        (tiny_models.build_tiny_sd15, StableDiffusionPipeline, {}),
        (tiny_models.build_tiny_sd2, StableDiffusionPipeline, {"open_clip": True}),
        (tiny_models.build_tiny_sdxl, StableDiffusionXLPipeline, {}),
    ],
    ids=["sd15", "sd2", "sdxl"],
)
def test_every_converted_tensor_is_found_in_the_file_bit_for_bit(tmp_path, build, cls, options):
    """SD 2.x and SDXL's OpenCLIP encoders: q, k and v are slices of the fused in_proj, SDXL's text projection
    a transpose; all are placed in the file, none written out, and the images are the plain load's."""
    plain, cached, target = _plain_and_cached(tmp_path, build, cls, **options)
    assert stored_names(target) == buffer_names(target)  # no weight among them
    names = [name for name, part in plain.components.items() if isinstance(part, torch.nn.Module)]
    assert set(keymap_of(target)["components"]) == set(names)
    for name in names:
        ours, theirs = getattr(cached, name).state_dict(), getattr(plain, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        for key, tensor in theirs.items():
            assert ours[key].dtype == tensor.dtype and ours[key].is_contiguous() == tensor.is_contiguous(), key
            assert torch.equal(ours[key], tensor), (name, key)
            # Laid out as the first run's: a view of the file where that was one (the same offset in a page-
            # aligned map), else fresh memory. CPU kernels may round differently on other alignments.
            assert ours[key].data_ptr() % 64 == tensor.data_ptr() % 64, (name, key)

    def image(pipe):
        generator = torch.Generator().manual_seed(3)
        return pipe(prompt="a cat", num_inference_steps=2, height=64, width=64, generator=generator,
                    output_type="np").images[0]  # fmt: skip

    assert np.array_equal(image(cached), image(plain))


def test_a_wrong_guess_of_the_mapping_is_caught_by_the_bytes(tmp_path, monkeypatch):
    """The file's address in safetensors' mapping is inferred; were it wrong, every tensor placed by address is
    checked against the file's bytes and refused, and the byte search still finds each tensor (as a copy)."""
    real_shift = conversion_cache._Mapped.address_shift
    monkeypatch.setattr(conversion_cache._Mapped, "address_shift", lambda self, state: real_shift(self, state) + 256)
    plain, cached, target = _plain_and_cached(tmp_path, tiny_models.build_tiny_sd15, StableDiffusionPipeline)
    places = [place for spec in keymap_of(target)["components"].values() for place in spec["tensors"].values()]
    assert None not in places and all(place[-1] is True for place in places)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(cached, name).state_dict(), getattr(plain, name).state_dict()
        assert all(torch.equal(ours[key], tensor) for key, tensor in theirs.items()), name


def test_sdxl_restart_matches_the_first_run(paths, tiny_sdxl_single, conversions):
    single, config = tiny_sdxl_single
    first = image_of(make_backend(paths), single, config, sampler="Euler")
    [entry] = entries(paths)
    spec = keymap_of(entry)["components"]["text_encoder_2"]["tensors"]
    # The q/k/v slices and the text projection are copies in memory, found in the file by their bytes.
    assert spec["text_projection.weight"][-1] is True
    assert all(place is not None for place in spec.values())
    assert np.array_equal(image_of(make_backend(paths), single, config, sampler="Euler"), first)
    assert conversions == [single]


@pytest.mark.parametrize(("file_dtype", "precision"), [(torch.float32, "bf16"), (torch.bfloat16, "fp32")])
def test_a_job_in_another_precision_than_the_file_gets_the_first_runs_pixels(paths, file_dtype, precision):
    pipe = tiny_models.build_tiny_sd15()
    single = tiny_models.save_single_file(pipe, paths.models / "tiny.safetensors", dtype=file_dtype)
    config = tiny_models.save_config_folder(pipe, paths.models.parent / "config")
    first = make_backend(paths)
    plain = image_of(first, single, config, precision=precision)
    wanted = first._pipe.unet.dtype
    again = make_backend(paths)
    assert np.array_equal(image_of(again, single, config, precision=precision), plain)
    assert {again._pipe.unet.dtype, again._pipe.vae.dtype, again._pipe.text_encoder.dtype} == {wanted}
    # And the other precision from the same entry: the views are kept in the file's dtype, cast at load.
    other = "fp32" if precision == "bf16" else "bf16"
    fresh = tmp_home(paths, "fresh")
    shutil.copy(single, fresh.models / single.name)
    os.utime(fresh.models / single.name, ns=(single.stat().st_atime_ns, single.stat().st_mtime_ns))
    reference = image_of(make_backend(fresh), fresh.models / single.name, config, precision=other)
    assert np.array_equal(image_of(make_backend(paths), single, config, precision=other), reference)


def tmp_home(paths: AppPaths, name: str) -> AppPaths:
    return AppPaths.for_root(paths.models.parent.parent / name).ensure()


def test_tensors_the_conversion_computed_are_stored_and_loaded(paths, conversions):
    """A mixed-precision file (fp16 weights, an fp32 VAE): from_single_file casts the VAE to fp16, so its
    tensors are not in the file; they go into the entry's own small file, the rest stays a map."""
    pipe = tiny_models.build_tiny_sd15()
    single = paths.models / "mixed.safetensors"
    tiny_models.save_single_file(pipe, single, dtype=torch.float16)
    mixed = load_file(str(single))
    mixed.update({k: v.detach().contiguous() for k, v in tiny_models.ldm_state_dict(pipe).items()
                  if k.startswith("first_stage_model.")})  # fmt: skip
    save_file(mixed, str(single))
    config = tiny_models.save_config_folder(pipe, paths.models.parent / "config")
    first = image_of(make_backend(paths), single, config)
    [entry] = entries(paths)
    stored = load_file(str(entry / COMPUTED))
    spec = keymap_of(entry)["components"]
    assert set(stored) == {f"vae/{key}" for key in spec["vae"]["tensors"]} | buffer_names(entry)
    stored = {key: value for key, value in stored.items() if key.startswith("vae/")}
    assert all(place is not None for name in ("unet", "text_encoder") for place in spec[name]["tensors"].values())
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    assert np.array_equal(image_of(make_backend(paths), single, config), first)
    assert conversions == [single]


def test_a_changed_file_is_converted_again_and_its_stale_entry_removed(paths, conversions, tmp_path):
    pipe = tiny_models.build_tiny_sd15()
    single = tiny_models.save_single_file(pipe, paths.models / "tiny.safetensors")
    config = tiny_models.save_config_folder(pipe, tmp_path / "config")
    image_of(make_backend(paths), single, config)
    [old] = entries(paths)
    # Another model of the same shapes written over it: same size, same header, a later mtime.
    tiny_models.save_single_file(tiny_models.build_tiny_sd15(seed=4), single)
    os.utime(single, ns=(time.time_ns(), single.stat().st_mtime_ns + 10**9))
    reference = image_of(make_backend(tmp_home(paths, "other")), single, config)
    changed = image_of(make_backend(paths), single, config)
    assert np.array_equal(changed, reference) and conversions == [single, single, single]
    [new] = entries(paths)
    assert new != old  # the entry of the old bytes went when the new one was written


def test_an_entry_is_only_used_for_the_bytes_it_was_made_from(tmp_path):
    """The key map keeps the file's path, size, mtime and header hash: any of them changed, the entry is not
    used (the backend converts again)."""
    plain, _, target = _plain_and_cached(tmp_path, tiny_models.build_tiny_sd15, StableDiffusionPipeline)
    single = tmp_path / "model.safetensors"
    cache = ConversionCache()
    assert cache.load(target, single, torch.float32) is not None
    moved = tmp_path / "moved.safetensors"
    shutil.copy2(single, moved)
    assert cache.load(target, moved, torch.float32) is None  # another path
    # The same size and mtime but another header (a metadata value of the same length).
    stat = single.stat()
    data = bytearray(single.read_bytes())
    at = data.index(b'"format":"pt"')
    data[at : at + 13] = b'"format":"PT"'
    single.write_bytes(bytes(data))
    os.utime(single, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert single.stat().st_size == stat.st_size
    assert cache.load(target, single, torch.float32) is None


def test_a_moved_or_vanished_file_leaves_nothing_behind(paths, conversions, tmp_path):
    pipe = tiny_models.build_tiny_sd15()
    single = tiny_models.save_single_file(pipe, paths.models / "tiny.safetensors")
    config = tiny_models.save_config_folder(pipe, tmp_path / "config")
    first = image_of(make_backend(paths), single, config)
    moved = single.rename(paths.models / "renamed.safetensors")
    # Its entry named the old path: the moved file is converted again, and the useless entry is removed.
    assert np.array_equal(image_of(make_backend(paths), moved, config), first)
    assert conversions == [single, moved]
    [entry] = entries(paths)
    assert keymap_of(entry)["source"]["path"] == str(moved.resolve())
    moved.unlink()
    other = tiny_models.save_single_file(pipe, paths.models / "other.safetensors")
    image_of(make_backend(paths), other, config)
    assert [keymap_of(e)["source"]["path"] for e in entries(paths)] == [str(other.resolve())]


def test_a_pickled_checkpoint_and_a_misnamed_file_are_mapped_where_the_backend_reads_them(
    paths, tiny_sd15_single, conversions, tmp_path
):
    """A pickled checkpoint becomes a .safetensors file in the library when it is imported (a child process
    converts it); a safetensors file named .ckpt is read through a .safetensors alias. Either way the key map
    points into the file the model entry names, and a restart gets the first run's pixels."""
    single, config = tiny_sd15_single
    pickled = tmp_path / "old-style.ckpt"
    torch.save({"state_dict": load_file(str(single))}, pickled)
    record = Library(paths).import_path(pickled, "model", convert_pickle=True)
    misnamed = shutil.copy(single, paths.models / "misnamed.ckpt")
    for model in (paths.models / record.file, Path(misnamed)):
        first = image_of(make_backend(paths), model, config)
        assert np.array_equal(image_of(make_backend(paths), model, config), first)
    assert [path.name for path in conversions] == [record.file, "misnamed.ckpt"]
    sources = {keymap_of(entry)["source"]["path"] for entry in entries(paths)}
    assert sources == {str((paths.models / record.file).resolve()), str(Path(misnamed).resolve())}


def test_a_damaged_entry_is_converted_again(paths, tiny_sd15_single, conversions):
    single, config = tiny_sd15_single
    first = image_of(make_backend(paths), single, config)
    [entry] = entries(paths)
    text = (entry / KEYMAP).read_text()
    (entry / KEYMAP).write_text(text[: len(text) // 2])  # cut short
    assert np.array_equal(image_of(make_backend(paths), single, config), first)
    assert conversions == [single, single]
    assert json.loads((entry / KEYMAP).read_text())["schema"] == conversion_cache.SCHEMA  # written anew


def test_a_failed_write_keeps_the_image_and_says_so(paths, tiny_sd15_single, monkeypatch, conversions):
    single, config = tiny_sd15_single

    def full_disk(state, path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(conversion_cache, "write_safetensors", full_disk)
        patched.setattr(conversion_cache._Mapped, "place_by_address", lambda *args: None)
        patched.setattr(conversion_cache._Mapped, "place_by_bytes", lambda *args: None)  # all computed
        backend = make_backend(paths)
        request = GenerationRequest(prompt="x", model=str(single), model_config=str(config), device="cpu").validate()
        report = backend.load(request)
    assert any("Could not cache the converted model" in note and "No space left" in note for note in report.notes)
    assert entries(paths) == []  # the half-written folder is removed
    image = image_of(make_backend(paths), single, config)
    assert image.std() > 0 and conversions == [single, single]  # converted again, and now cached
    assert [(e / KEYMAP).is_file() for e in entries(paths)] == [True]


def test_old_schema_folders_and_dead_processes_copies_go_and_a_finished_copy_is_kept(tmp_path):
    """The previous schema's full weight folders are removed when an entry is written; so are half-written
    entries of killed processes (hours old), never a running one's. Two processes converting the same file:
    the first complete entry stays."""
    plain, _, target = _plain_and_cached(tmp_path, tiny_models.build_tiny_sd15, StableDiffusionPipeline)
    single = tmp_path / "model.safetensors"
    folder = target.parent
    old_schema = folder / "big-model-89ab"
    (old_schema / "unet").mkdir(parents=True)
    (old_schema / "model_index.json").write_text("{}")
    (old_schema / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    abandoned, running = (folder / f"other-4567.partial-{pid}" for pid in (11, 22))
    for partial in (abandoned, running):
        partial.mkdir(parents=True)
    hours_ago = time.time() - 3 * 3600
    os.utime(abandoned, (hours_ago, hours_ago))
    stamp = (target / KEYMAP).stat().st_mtime_ns
    assert ConversionCache().save(plain, target, single) is None  # another process finished first
    assert (target / KEYMAP).stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.iterdir()) == sorted([target.name, running.name])


def test_the_cache_writer_writes_what_safetensors_reads(tmp_path):
    """Marble's own writer (for the computed tensors) against the safetensors reader: every dtype a checkpoint
    holds, a scalar, an empty and a transposed (non-contiguous) tensor."""
    state = {"w": torch.randn(3, 4), "bf": torch.randn(5).to(torch.bfloat16), "half": torch.randn(2, 3).half(),
             "step": torch.tensor(3), "empty": torch.zeros(0, 2), "mask": torch.ones(2, 2, dtype=torch.bool),
             "t": torch.randn(4, 6).t(), "fp8": torch.randn(3).to(torch.float8_e4m3fn),
             "ids": torch.arange(5)}  # fmt: skip
    path = tmp_path / "weights.safetensors"
    write_safetensors(state, path)
    back = load_file(str(path))
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        as_bytes = [t.contiguous().reshape(-1).view(torch.uint8) for t in (back[name], tensor)]
        assert torch.equal(*as_bytes), name
