"""Embeddings' vector counts from their headers, for the prompt fields' token counts."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from desktop.engine.library.embedding_vectors import vector_count, vector_counts


def _save(folder, name: str, tensors: dict[str, tuple[int, ...]]) -> None:
    save_file({key: np.zeros(shape, dtype=np.float32) for key, shape in tensors.items()}, str(folder / name))


def test_each_shared_format_gives_its_number_of_vectors(tmp_path) -> None:
    _save(tmp_path, "a1111.safetensors", {"emb_params": (8, 768)})
    _save(tmp_path, "old.safetensors", {"string_to_param.*": (3, 768)})
    _save(tmp_path, "sdxl.safetensors", {"clip_l": (2, 768), "clip_g": (2, 1280)})
    _save(tmp_path, "diffusers.safetensors", {"<cat-toy>": (4, 768)})
    _save(tmp_path, "single.safetensors", {"emb_params": (768,)})
    _save(tmp_path, "strange.safetensors", {"first": (2, 768), "second": (2, 768)})
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    (tmp_path / "notes.txt").write_text("not an embedding")
    assert vector_count(tmp_path / "a1111.safetensors") == 8
    assert vector_count(tmp_path / "strange.safetensors") is None
    assert vector_counts(tmp_path) == {"a1111": 8, "old": 3, "sdxl": 2, "diffusers": 4, "single": 1}
    assert vector_counts(tmp_path / "missing") == {}
