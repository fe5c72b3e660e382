"""How many vectors each library embedding has, read from its safetensors header alone (no torch), so
the prompt fields can count an embedding's name as the tokens it takes in the encoding."""

from __future__ import annotations

from pathlib import Path

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.lora import AdapterCatalog

# The formats the backend loads (lora_adapters._embedding_vectors): SDXL's clip_l/clip_g have as many
# vectors each, so clip_l's count is the embedding's.
_VECTOR_KEYS = ("clip_l", "emb_params", "string_to_param.*")


def vector_count(path: Path) -> int | None:
    """The embedding's number of vectors, or None when its tensors are in no known layout."""
    tensors = read_safetensors_header(path).tensors
    key = next((key for key in _VECTOR_KEYS if key in tensors), None)
    if key is None:
        if len(tensors) != 1:
            return None
        key = next(iter(tensors))  # diffusers: {token: vectors}
    shape = tensors[key].shape
    if len(shape) == 1:
        return 1
    return shape[0] if len(shape) == 2 and shape[0] > 0 else None


def vector_counts(folder: Path) -> dict[str, int]:
    """Name -> vectors of every readable embedding in the library's embeddings folder, named as the
    backend names them (the file's stem); unreadable files are left out (they count as words)."""
    counts: dict[str, int] = {}
    for entry in AdapterCatalog(folder).entries():
        try:
            count = vector_count(entry.path)
        except (ModelError, OSError):
            continue
        if count:
            counts[entry.name] = count
    return counts
