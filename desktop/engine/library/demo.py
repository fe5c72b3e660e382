"""Marble's demo model: installed into the library on the first start, so Generate works out of the box.

The demo is a small SD 1.x-family diffusers folder shipped in resources/ (trained by
installer/demo_model/). It is installed once: a marker in the config folder remembers that it was, so a
user who removes it does not get it back on the next start. The marker also holds a stamp of the
shipped files, so when a new build ships another demo model, the installed copy is brought up to date
(under the name the user gave it) instead of staying at the first build's.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
from pathlib import Path

from desktop.engine.errors import MarbleError
from desktop.engine.file_lock import exclusive_lock
from desktop.engine.library.index import Library, LibraryRecord

DEMO_MODEL_NAME = "marble-demo"
_MARKER_NAME = "demo-model-installed"
_UPDATE_NAME = f"{DEMO_MODEL_NAME}-update"
_LOCK_NAME = "demo-model.lock"
# The demo model's ControlNet (canny edges, installer/demo_model/train_control.py), so a new user can
# try a control unit at once; installed once, like the model.
DEMO_CONTROL_NAME = "marble-demo-canny"
_CONTROL_MARKER_NAME = "demo-control-installed"
# What the demo model was trained to draw (installer/demo_model/scenes.py: its shapes, colours, sizes
# and positions), for the prompt field: a new user typing "a cat" would get coloured blobs and think
# the app broken. A test keeps this in step with the training scenes.
DEMO_MODEL_DRAWS = (
    "The demo model draws flat shapes only: one to three circles, squares or triangles; red, orange, "
    "yellow, green, blue, purple, white or black; small or large; at the top, bottom, left, right, centre "
    "or a corner (top left, top right, bottom left, bottom right); on a plain or two-colour background. "
    "Try: a large red circle on the left on a blue background"
)


def install_demo_model(library: Library, source: Path, config_folder: Path) -> LibraryRecord | None:
    """Copy the shipped demo model into the library on the first start, or bring the installed copy up
    to date when the shipped one has changed. Returns the new or updated record, or None when there was
    nothing to do (installed and current, removed by the user, or not shipped with this build).

    Raises MarbleError or OSError when the copy fails (a full disk); the marker is then left as it was,
    so the next start tries again, and an update that fails leaves the installed copy as it was.
    """
    if not (source / "model_index.json").is_file():
        return None
    marker = config_folder / _MARKER_NAME
    stamp = shipped_stamp(source)
    if _read_marker(marker) == stamp:
        return None  # every start but the first: nothing to do, and no lock to wait for
    # Several processes may start at once on a new home (the window and `marble generate`, or a script
    # running a few commands): one installs while the others wait, then find the work done.
    with exclusive_lock(config_folder / _LOCK_NAME, what="installing the demo model"):
        return _install(library, source, marker, stamp)


def install_demo_control(library: Library, source: Path, config_folder: Path) -> LibraryRecord | None:
    """Import the shipped demo ControlNet file on the first start. Returns its record, or None when there
    was nothing to do (installed before, even if the user has removed it since, or not shipped).

    Raises MarbleError or OSError when the copy fails; the marker is then not written, so the next start
    tries again."""
    marker = config_folder / _CONTROL_MARKER_NAME
    if not source.is_file() or marker.exists():
        return None
    with exclusive_lock(config_folder / _LOCK_NAME, what="installing the demo model"):
        if marker.exists():
            return None  # a sibling process installed it while this one waited for the lock
        record = library.find("control", DEMO_CONTROL_NAME) or library.import_path(source, "control", DEMO_CONTROL_NAME)
        partial = marker.with_name(f".{marker.name}.partial")
        partial.write_text(shipped_stamp(source.parent) + "\n", encoding="utf-8")
        os.replace(partial, marker)
    return record


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None


def _install(library: Library, source: Path, marker: Path, stamp: str) -> LibraryRecord | None:
    if not marker.exists():
        existing = library.find("model", DEMO_MODEL_NAME)
        record = existing if existing is not None else library.import_path(source, "model", DEMO_MODEL_NAME)
        record = library.mark_demo(record)
    elif _read_marker(marker) == stamp:
        return None  # a sibling process installed it while this one waited for the lock
    else:
        record = _update(library, source)
    # Whole or not at all: a reader that does not hold the lock may look at any moment.
    partial = marker.with_name(f".{marker.name}.partial")
    partial.write_text(stamp + "\n", encoding="utf-8")
    os.replace(partial, marker)
    return record


def shipped_stamp(source: Path) -> str:
    """A cheap stamp of the shipped folder (names, sizes and modification times, no reading), checked
    at every start; a changed stamp only leads to comparing the files' bytes (`_update`)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        status = path.stat()
        digest.update(f"{path.relative_to(source).as_posix()}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _update(library: Library, source: Path) -> LibraryRecord | None:
    """Replace the installed demo's files with the shipped ones when their bytes differ. The new copy is
    imported beside the old one first, so a failed copy leaves the old one in place."""
    installed = next((record for record in library.records("model") if record.demo), None)
    if library.find("model", _UPDATE_NAME) is not None:
        if installed is None:  # an update cut short after the old copy went: the new one is complete
            return library.mark_demo(library.rename("model", _UPDATE_NAME, DEMO_MODEL_NAME))
        library.remove("model", _UPDATE_NAME)
    if installed is None or _same_files(source, library.path_of(installed)):
        return None  # removed by the user (it stays removed), or already these files
    library.import_path(source, "model", _UPDATE_NAME)
    library.remove("model", installed.name)
    return library.mark_demo(library.rename("model", _UPDATE_NAME, installed.name))


def _same_files(source: Path, installed: Path) -> bool:
    names = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    if not installed.is_dir() or names != sorted(p.relative_to(installed) for p in installed.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(source / name, installed / name, shallow=False) for name in names)


def demo_model_name(library: Library) -> str | None:
    """The library name of the demo model, if the library has it (it may have been renamed)."""
    try:
        records = library.records("model")
    except (MarbleError, OSError):
        return None
    return next((record.name for record in records if record.demo), None)
