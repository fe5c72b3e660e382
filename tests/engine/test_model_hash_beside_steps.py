"""A model file's AutoV2 hash (a sha256 of the whole file: some 15 s for a 24 GB Flux file the first time) is
read beside the load and the steps, not before the first step: the load returns while it is still being read,
and the first batch finished after it carries it into the PNG's metadata and the history (the real loading code,
the real pipeline, a hash held back until the steps start)."""

from __future__ import annotations

import hashlib
import threading

from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import HashCache
from desktop.engine.metadata import parse_parameters, read_text_chunks
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, request_for
from tests.engine.test_encoder_library import flux_request, home, parts  # noqa: F401 - fixtures, by name
from tests.support.history_runs import run_into_history


def _held_hash(monkeypatch, backend):
    """The backend's hash held back until its first batch starts; returns whether the hash waited for that
    (False: something waited for the hash before any step could run)."""
    steps_started = threading.Event()
    waited: list[bool] = []
    real_hash = HashCache.autov2

    def held(self, path):
        waited.append(steps_started.wait(15))
        return real_hash(self, path)

    monkeypatch.setattr(HashCache, "autov2", held)
    real_batch = backend._generate_batch

    def batch(*args, **kwargs):
        steps_started.set()
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(backend, "_generate_batch", batch)
    return waited


def test_a_first_load_does_not_wait_for_the_hash_and_the_image_still_carries_it(
    tiny_sd15_single, tmp_path, monkeypatch
):
    model_file, config = tiny_sd15_single
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    backend = make_backend(paths)
    waited = _held_hash(monkeypatch, backend)
    request = request_for(model_file, model_config=str(config), steps=2)
    report = backend.load(request)
    assert report.model.hash is None  # still being read
    row = run_into_history(backend, request, paths, tmp_path / "out")
    assert waited == [True]
    expected = hashlib.sha256(model_file.read_bytes()).hexdigest()[:10]
    assert row.model_hash == expected
    assert parse_parameters(read_text_chunks(row.path)["parameters"]).settings["Model hash"] == expected
    # Reused, the loaded model now knows its hash at once.
    assert backend.load(request).model.hash == expected


def test_a_flux_file_hash_is_read_beside_its_load_too(home, parts, monkeypatch):  # noqa: F811 - fixtures
    backend = make_backend(home)
    waited = _held_hash(monkeypatch, backend)
    request = flux_request(parts["model"], parts)
    assert backend.load(request).model.hash is None
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    assert waited == [True]
    assert batch.model_hash == hashlib.sha256(parts["model"].read_bytes()).hexdigest()[:10]


def test_a_library_model_takes_the_hash_the_import_took(tiny_sd15_single, tmp_path, monkeypatch):
    """Importing a model reads its sha256 while copying it in; its first load does not read the file again for it."""
    from desktop.engine.library.index import Library

    model_file, config = tiny_sd15_single
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    record = Library(paths).import_path(model_file, "model")
    expected = hashlib.sha256(model_file.read_bytes()).hexdigest()[:10]
    assert record.autov2 == expected
    read: list[object] = []
    real_hash = HashCache.autov2
    monkeypatch.setattr(HashCache, "autov2", lambda self, path: read.append(path) or real_hash(self, path))
    backend = make_backend(paths)
    request = request_for(record.name, model_config=str(config), steps=2)
    assert backend.load(request).model.hash == expected
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    assert read == [] and batch.model_hash == expected
    # The same file given by its path outside the library is read for its hash, as before.
    outside = make_backend(paths)
    outside.load(request_for(model_file, model_config=str(config), steps=2))
    assert outside.generate(request_for(model_file, model_config=str(config), steps=2), 0, lambda _: None,
                            CancelToken()).model_hash == expected  # fmt: skip
    assert read == [model_file]


def test_a_library_file_changed_since_its_import_is_hashed_again(tiny_sd15_single, tmp_path):
    import os
    import time

    from desktop.engine.library.index import Library

    model_file, _ = tiny_sd15_single
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    record = library.import_path(model_file, "model")
    stored = library.path_of(record)
    assert library.known_autov2(stored) == record.autov2
    later = time.time() + 60  # not the copy's mtime + 60: the import may keep the source's (older) mtime
    os.utime(stored, (later, later))  # rewritten after the import, same size
    assert library.known_autov2(stored) is None
    assert library.known_autov2(model_file) is None  # not the library's file
