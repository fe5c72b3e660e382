"""The models a user can pick: files and folders in the library folder, found by name.

A name from a user, a PNG or a prompt is looked up here, never joined into a path. The catalog is the
models folder itself, scanned each time: `*.safetensors` files and diffusers folders (a folder holding
`model_index.json`). The library index (`library/index.py`) records imports and hashes for the same
folder; picking and loading a model needs only the listing, so a file dropped in by hand works at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from desktop.engine.errors import MarbleError, ModelError
from desktop.engine.safe_files import open_regular, read_json_file

# What makes a folder a diffusers model: its pipeline's index, or a modular pipeline's (diffusers' FLUX.3 folders
# are saved by its modular pipelines, which write only `modular_model_index.json`).
MODEL_INDEXES = ("model_index.json", "modular_model_index.json")


def is_model_folder(path: Path) -> bool:
    """Whether `path` is a diffusers model folder (it holds a pipeline index)."""
    return path.is_dir() and any((path / index).is_file() for index in MODEL_INDEXES)


class _HasName(Protocol):
    @property
    def name(self) -> str: ...


Named = TypeVar("Named", bound=_HasName)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()


def find_by_name(entries: Sequence[Named], name: str) -> Named | None:
    """The entry called `name`: an exact match first, then one that differs only in case.

    Names compare NFC-normalised: "café" typed on one system and saved by another is one name."""
    wanted = unicodedata.normalize("NFC", name)
    for entry in entries:
        if unicodedata.normalize("NFC", entry.name) == wanted:
            return entry
    folded = wanted.casefold()
    return next((entry for entry in entries if unicodedata.normalize("NFC", entry.name).casefold() == folded), None)


class ModelCatalog:
    """Lists and resolves models. Scans the folder each time: it is small and may change under us."""

    def __init__(self, models_dir: Path) -> None:
        self._models_dir = models_dir

    @property
    def folder(self) -> Path:
        return self._models_dir

    def entries(self) -> list[ModelEntry]:
        if not self._models_dir.is_dir():
            return []
        found: list[ModelEntry] = []
        for child in sorted(self._models_dir.iterdir(), key=lambda p: p.name.casefold()):
            if child.name.startswith("."):
                continue
            if child.is_file() and child.suffix.lower() in (".safetensors", ".gguf"):
                found.append(ModelEntry(child.stem, child))
            elif is_model_folder(child):
                found.append(ModelEntry(child.name, child))
        return found

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def find(self, name: str) -> ModelEntry | None:
        """A library entry by name (exact, then ignoring case). Names from PNGs and prompts go here."""
        return find_by_name(self.entries(), name)

    def resolve(self, name_or_path: str) -> ModelEntry:
        """What a user typed or picked: a library name first, otherwise an existing file or folder."""
        entry = self.find(name_or_path)
        if entry is not None:
            return entry
        if "\x00" not in name_or_path:
            candidate = Path(name_or_path).expanduser()
            try:
                exists = candidate.exists()
            except OSError:  # a name longer than the file system allows is no file either
                exists = False
            if exists:
                candidate = candidate.resolve()
                name = candidate.name if candidate.is_dir() else candidate.stem
                return ModelEntry(name, candidate)
        known = ", ".join(self.names()) or "none yet"
        raise ModelError(
            f"No model named {name_or_path!r}: it is neither in the library ({self._models_dir}; "
            f"models there: {known}) nor an existing file or folder."
        )


class HashCache:
    """AutoV2 hashes of large files, remembered by path, size and modification time.

    Hashing a 7 GB checkpoint takes many seconds; doing it once per file version is enough.
    """

    def __init__(self, file: Path) -> None:
        self._file = file
        self._lock = threading.Lock()

    def autov2(self, path: Path) -> str:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        with self._lock:
            cached = self._load().get(key)
        if cached:
            return cached
        digest = hashlib.sha256()
        stream = open_regular(path)
        assert stream is not None
        with stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        value = digest.hexdigest()[:10]
        with self._lock:
            table = self._load()
            table[key] = value
            self._save(table)
        return value

    def _load(self) -> dict[str, str]:
        try:
            data = read_json_file(self._file, missing_ok=True)
        except MarbleError:
            return {}  # only a cache: a damaged or strange one is rebuilt
        return data.get("hashes", {}) if isinstance(data, dict) else {}

    def _save(self, table: dict[str, str]) -> None:
        # A lost cache only costs a re-hash, so a failed write is not an error worth reporting.
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"schema_version": 1, "hashes": table}), encoding="utf-8")
            os.replace(tmp, self._file)
        except OSError:
            pass
