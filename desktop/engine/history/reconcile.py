"""Bringing the history in step with the image folder: what is on disk is the truth.

Files without records are indexed from their own metadata; records without files are marked missing
(and unmarked when the file comes back); jobs of dead processes become "interrupted"; the
`.name.partial` temp files of killed writes are removed: only those, and only when no live process
could still be writing them. Nothing here deletes a user's image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import InvalidRequest
from desktop.engine.history.images import ImageTable
from desktop.engine.history.jobs import JobTable
from desktop.engine.history.processes import alive
from desktop.engine.history.records import ReconcileReport

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# A `.partial` temp file this old cannot belong to a write still in progress, whoever is running.
PARTIAL_GRACE_S = 600.0


@dataclass(frozen=True)
class LibraryScan:
    images: frozenset[str]  # resolved paths of the image files
    partials: tuple[Path, ...]  # `.name.partial` temp files of writes


def reconcile(
    images: ImageTable,
    jobs: JobTable,
    library: Path,
    index_file: Callable[[str], object],
    partial_grace_s: float = PARTIAL_GRACE_S,
) -> ReconcileReport:
    """One pass over `library`; safe to run while others write. `index_file` records a found file."""
    interrupted = jobs.interrupt_dead()
    # This process counts too: the window checks the folder while its own job may be writing.
    live_writer = any(alive(pid) for pid in jobs.running_pids())
    scan = scan_library(library)
    removed = remove_partials(scan.partials, partial_grace_s, live_writer, time.time())
    rows = images.untrashed_paths()
    gone, back = missing_changes(rows, scan.images, library)
    images.set_missing(gone, back)
    recorded = {path for _, path, _ in rows}
    indexed, unreadable = 0, []
    for path in sorted(scan.images - recorded):
        try:
            index_file(path)
            indexed += 1
        except (InvalidRequest, OSError) as error:
            # Not an image we can read: leave it alone, say so, and try again next start.
            log.info("not indexed: %s: %s", path, error)
            unreadable.append(path)
    jobs.finish_complete()
    return ReconcileReport(indexed, len(gone), len(back), removed, interrupted, tuple(unreadable))


def scan_library(library: Path) -> LibraryScan:
    """The image files and the temp files under `library`; hidden files and folders are not images."""
    on_disk: set[str] = set()
    partials: list[Path] = []
    for entry in walk(library):
        if entry.name.startswith(".") and entry.name.endswith(".partial"):
            partials.append(Path(entry.path))
        elif entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.name.startswith("."):
            on_disk.add(str(Path(entry.path).resolve()))
    return LibraryScan(frozenset(on_disk), tuple(partials))


def remove_partials(partials: Iterable[Path], grace_s: float, live_writer: bool, now: float) -> int:
    """Delete the temp files no write can still own: all of them when no writer lives, else the old."""
    removed = 0
    for partial in partials:
        with contextlib.suppress(OSError):
            old = now - partial.stat().st_mtime > grace_s
            if old or not live_writer:
                partial.unlink()
                removed += 1
    return removed


def missing_changes(
    rows: Iterable[tuple[int, str, bool]], on_disk: frozenset[str], library: Path
) -> tuple[list[int], list[int]]:
    """(ids whose file is gone, ids marked missing whose file is back), from (id, path, missing) rows."""
    inside = str(library) + os.sep
    gone, back = [], []
    for image_id, path, missing in rows:
        # Files outside the library (`--out`, rescued images) are looked up one by one.
        exists = path in on_disk or (not path.startswith(inside) and os.path.exists(path))
        if exists and missing:
            back.append(image_id)
        elif not exists and not missing:
            gone.append(image_id)
    return gone, back


def walk(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Every file under `folder`, skipping hidden folders (the trash among them) and symlinked ones."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if not entry.name.startswith("."):
                            stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        yield entry
        except OSError as error:
            log.info("cannot read %s: %s", current, error)
