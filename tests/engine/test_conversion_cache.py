"""The converted-model cache is written behind the first job: the job does not wait for it, what the job
does to the loaded modules (LoRA layers) never reaches the file, and a failed write costs only the cache."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from desktop.engine.backends import conversion_cache
from desktop.engine.backends.conversion_cache import ConversionCache, write_safetensors
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest, LoraRef
from desktop.engine.resources import Resources
from tests.support import tiny_loras, tiny_models


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def make_backend(paths: AppPaths) -> DiffusersBackend:
    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0)


def image_of(backend: DiffusersBackend, model, config, **changes) -> np.ndarray:
    values = dict(prompt="a red circle", negative_prompt="blurry", model=str(model), model_config=str(config),
                  steps=3, cfg_scale=7.0, seed=7, width=64, height=64, device="cpu")  # fmt: skip
    request = GenerationRequest(**(values | changes)).validate()
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    return np.asarray(batch.images[0].convert("RGB"))


@pytest.fixture
def gate(monkeypatch):
    """Holds every cache write before it reads a weight, until set."""
    release = threading.Event()
    real_write = ConversionCache._write

    def held_write(self, modules, partial, target):
        assert release.wait(60), "the test never released the cache write"
        real_write(self, modules, partial, target)

    monkeypatch.setattr(ConversionCache, "_write", held_write)
    yield release
    release.set()


def test_first_job_runs_while_the_cache_is_written_and_lora_layers_stay_out_of_it(
    paths, tiny_sd15_single, tiny_sd15_dir, gate
):
    single, config = tiny_sd15_single
    tiny_loras.save_lora(tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=1),
                         paths.loras / "detail.safetensors")  # fmt: skip
    first = make_backend(paths)
    plain = image_of(first, single, config)
    # The write is still held: the image came without it, and only the half-written folder exists.
    assert [".partial-" in p.name for p in paths.converted_models.iterdir()] == [True]
    # The same loaded model with a LoRA: its layers get wrapped while the writer is still reading.
    styled = image_of(first, single, config, loras=(LoraRef("detail", 1.0),))
    assert not np.array_equal(plain, styled)
    gate.set()
    first.wait_for_caches()
    folders = [p for p in paths.converted_models.iterdir()]
    assert len(folders) == 1 and (folders[0] / "model_index.json").is_file()
    assert ".partial" not in folders[0].name
    # A new start loads the cache: the same pixels as the first job and as the diffusers folder.
    again = image_of(make_backend(paths), single, config)
    folder = image_of(make_backend(paths), tiny_sd15_dir, config)
    assert np.array_equal(again, plain) and np.array_equal(again, folder)


def test_a_second_load_waits_for_the_write_then_uses_it(paths, tiny_sd15_single, gate, monkeypatch):
    single, config = tiny_sd15_single
    conversions = []
    real_convert = DiffusersBackend._convert_single_file
    monkeypatch.setattr(DiffusersBackend, "_convert_single_file",
                        lambda self, *args: conversions.append(args) or real_convert(self, *args))  # fmt: skip
    backend = make_backend(paths)
    first = image_of(backend, single, config)
    backend.unload()
    gate.set()
    # The reload waits for the running write rather than converting again beside it.
    second = image_of(backend, single, config)
    folders = list(paths.converted_models.iterdir())
    assert [".partial" in p.name for p in folders] == [False]
    assert np.array_equal(first, second) and len(conversions) == 1


def test_a_failed_write_keeps_the_image_and_tells_the_next_load(paths, tiny_sd15_single, monkeypatch):
    single, config = tiny_sd15_single

    def full_disk(state, path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(conversion_cache, "write_safetensors", full_disk)
    backend = make_backend(paths)
    image = image_of(backend, single, config)
    assert image.std() > 0
    backend.wait_for_caches()
    assert list(paths.converted_models.iterdir()) == []  # the half-written folder is removed
    monkeypatch.undo()
    backend.unload()
    request = GenerationRequest(prompt="x", model=str(single), model_config=str(config), device="cpu").validate()
    report = backend.load(request)
    assert any("Could not cache the converted model" in note and "No space left" in note for note in report.notes)
    backend.wait_for_caches()
    assert [(p / "model_index.json").is_file() for p in paths.converted_models.iterdir()] == [True]


def test_the_cache_writer_writes_what_safetensors_reads(tmp_path):
    """Marble's own writer (it frees the interpreter lock while copying) against the safetensors reader: every
    dtype a checkpoint holds, a scalar, an empty and a transposed (non-contiguous) tensor."""
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


def test_half_written_copies_of_dead_processes_go_and_a_finished_copy_is_kept(tmp_path):
    """Two Marble processes may convert the same file at once: each writes its own copy and the first complete
    one stays. A copy left half-written by a killed process (hours old) is removed by the next write."""
    target = tmp_path / "converted" / "model-0123"
    abandoned, running = (target.with_name(f"model-0123.partial-{pid}") for pid in (11, 22))
    for folder in (abandoned, running):
        folder.mkdir(parents=True)
    hours_ago = time.time() - 3 * 3600
    os.utime(abandoned, (hours_ago, hours_ago))
    conversion_cache._remove_abandoned(target)
    assert not abandoned.exists() and running.exists()

    target.mkdir()
    (target / "model_index.json").write_text("{}")
    ours = target.with_name("model-0123.partial-33")
    (ours / "unet").mkdir(parents=True)
    cache = ConversionCache()
    cache._write({"unet": ("weights.safetensors", {"w": torch.ones(2)})}, ours, target)
    assert not ours.exists() and (target / "model_index.json").read_text() == "{}"
    assert cache.take_failures() == []  # not a failure: the cache is there
