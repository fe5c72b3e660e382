import errno
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop.engine.backends.preview import latents_to_rgb
from desktop.engine.errors import ModelError, StorageError
from desktop.engine.library.catalog import HashCache, ModelCatalog
from desktop.engine.outputs import ImageWriter, write_atomically
from desktop.engine.paths import AppPaths


def test_home_overrides_platform_dirs(tmp_path):
    paths = AppPaths.resolve(str(tmp_path / "h"), environ={"MARBLE_HOME": str(tmp_path / "env")})
    assert paths.models == (tmp_path / "h" / "models").resolve()
    from_env = AppPaths.resolve(None, environ={"MARBLE_HOME": str(tmp_path / "env")})
    assert from_env.outputs == (tmp_path / "env" / "outputs").resolve()
    assert not from_env.models.exists()
    from_env.ensure()
    assert all(p.is_dir() for p in (from_env.models, from_env.loras, from_env.cache, from_env.config))


def test_writer_numbers_files_like_a1111_and_keeps_chunks(tmp_path):
    writer = ImageWriter(tmp_path, clock=lambda: datetime(2026, 11, 25))
    image = Image.new("RGB", (16, 8), "red")
    first = writer.save(image, {"parameters": "a cat\nSteps: 1", "marble": "{\"ü\": 1}"}, 42)
    second = writer.save(image, {"parameters": "x"}, 43)
    assert first == tmp_path / "2026-11-25" / "00001-42.png"
    assert second.name == "00002-43.png"
    with Image.open(first) as reread:
        reread.load()
        assert reread.size == (16, 8)
        assert reread.text["parameters"] == "a cat\nSteps: 1"
        assert reread.text["marble"] == "{\"ü\": 1}"
    assert not list(tmp_path.rglob("*.partial"))
    # ASCII text in a plain tEXt chunk, as A1111 writes `parameters`; anything else in UTF-8 iTXt (tEXt is latin-1).
    kinds = _text_chunk_kinds(first.read_bytes())
    assert kinds["parameters"] == b"tEXt" and kinds["marble"] == b"iTXt"


def _text_chunk_kinds(data: bytes) -> dict[str, bytes]:
    """Each text chunk's keyword -> its chunk type, walking the PNG's chunks."""
    kinds, position = {}, 8
    while position < len(data):
        length, kind = int.from_bytes(data[position : position + 4], "big"), data[position + 4 : position + 8]
        if kind in (b"tEXt", b"iTXt"):
            body = data[position + 8 : position + 8 + length]
            kinds[body.split(b"\0", 1)[0].decode("latin-1")] = kind
        position += 12 + length
    return kinds


def test_an_atomic_write_makes_the_folders_it_needs(tmp_path):
    target = tmp_path / "new" / "deeper" / "a.json"
    write_atomically(target, lambda stream: stream.write(b"{}"))
    assert target.read_bytes() == b"{}" and list(target.parent.iterdir()) == [target]


def test_writer_to_a_file_name(tmp_path):
    writer = ImageWriter(tmp_path / "fox.png", dated=False)
    image = Image.new("RGB", (8, 8))
    assert writer.save(image, {}, 1) == tmp_path / "fox.png"
    assert writer.save(image, {}, 2) == tmp_path / "fox-2.png"


def test_full_disk_leaves_no_partial_file(tmp_path):
    def fill(stream):
        stream.write(b"half an image")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError, match="The disk is full"):
        write_atomically(tmp_path / "a.png", fill)
    assert list(tmp_path.iterdir()) == []


def test_preview_maps_latents_to_an_owned_uint8_image():
    latents = np.zeros((4, 8, 6), dtype=np.float32)
    latents[0] = 1.0  # first latent channel alone: the first row of the factor table
    rgb = latents_to_rgb(latents, "sd1")
    assert rgb.shape == (8, 6, 3) and rgb.dtype == np.uint8 and rgb.flags.owndata
    assert tuple(rgb[0, 0]) == (171, 145, 136)  # (1 + [0.3444, 0.1385, 0.0670]) * 127.5
    assert tuple(latents_to_rgb(latents, "sdxl")[0, 0]) == (176, 190, 195)
    with pytest.raises(ValueError):
        latents_to_rgb(np.zeros((3, 4, 4)), "sd1")


def test_catalog_finds_models_by_name_only(tmp_path):
    (tmp_path / "alpha.safetensors").write_bytes(b"x")
    folder = tmp_path / "Beta"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not a model")
    catalog = ModelCatalog(tmp_path)
    assert catalog.names() == ["alpha", "Beta"]
    assert catalog.resolve("beta").path == folder
    assert catalog.resolve(str(tmp_path / "alpha.safetensors")).name == "alpha"
    # Names from metadata or prompts are looked up, never treated as paths.
    for hostile in ("../../etc/passwd", "/etc/passwd", "C:\\Windows\\x", "alpha\x00.safetensors", "../alpha"):
        assert catalog.find(hostile) is None
    for missing in ("nope", "alpha\x00.safetensors"):
        with pytest.raises(ModelError, match="No model named"):
            catalog.resolve(missing)


def test_hash_cache_matches_sha256_and_notices_changes(tmp_path):
    import hashlib

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"one" * 1000)
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    assert cache.autov2(model) == hashlib.sha256(model.read_bytes()).hexdigest()[:10]
    model.write_bytes(b"two" * 1000)
    os.utime(model, ns=(1, 1))
    assert cache.autov2(model) == hashlib.sha256(model.read_bytes()).hexdigest()[:10]
    assert Path(tmp_path / "cache" / "hashes.json").is_file()
