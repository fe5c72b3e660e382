"""Marble's demo model: installed into the library on the first start, so Generate works out of the box.

The demo is a small SD 1.x-family diffusers folder shipped in resources/ (trained by
installer/demo_model/). It is installed once: a marker in the config folder remembers that it was, so a
user who removes it does not get it back on the next start.
"""

from __future__ import annotations

from pathlib import Path

from desktop.engine.errors import MarbleError
from desktop.engine.library.index import Library, LibraryRecord

DEMO_MODEL_NAME = "marble-demo"
_MARKER_NAME = "demo-model-installed"


def install_demo_model(library: Library, source: Path, config_folder: Path) -> LibraryRecord | None:
    """Copy the shipped demo model into the library on the first start. Returns the new record, or None
    when there was nothing to do (installed before, or not shipped with this build).

    Raises MarbleError or OSError when the copy fails (a full disk); the next start tries again.
    """
    marker = config_folder / _MARKER_NAME
    if marker.exists() or not (source / "model_index.json").is_file():
        return None
    existing = library.find("model", DEMO_MODEL_NAME)
    record = existing if existing is not None else library.import_path(source, "model", DEMO_MODEL_NAME)
    record = library.mark_demo(record)
    config_folder.mkdir(parents=True, exist_ok=True)
    marker.write_text("1\n", encoding="utf-8")
    return record


def demo_model_name(library: Library) -> str | None:
    """The library name of the demo model, if the library has it (it may have been renamed)."""
    try:
        records = library.records("model")
    except (MarbleError, OSError):
        return None
    return next((record.name for record in records if record.demo), None)
