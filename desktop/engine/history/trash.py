"""The library's trash folder: "delete" moves an image there, from where it can be restored until
the trash is emptied. Nothing else in the history removes a user's image."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from desktop.engine.errors import StorageError
from desktop.engine.history.database import Database
from desktop.engine.history.images import ImageTable
from desktop.engine.history.records import ImageRecord

TRASH_FOLDER = ".trash"


class Trash:
    """Moves image files in and out of `folder`, and marks their records."""

    def __init__(self, db: Database, images: ImageTable, folder: Path, clock: Callable[[], float]) -> None:
        self._db = db
        self._images = images
        self.folder = folder
        self._clock = clock

    def trash(self, image_ids: Iterable[int]) -> list[ImageRecord]:
        """Move the images' files into the trash folder; their records stay, marked trashed."""
        moved = []
        for image_id in image_ids:
            record = self._images.get(image_id)
            if record is None or record.trashed:
                continue
            source = Path(record.path)
            target: str | None = None
            if source.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                destination = free_name(self.folder / f"{record.id}-{source.name}")
                move_file(source, destination)
                target = str(destination)
            with self._db.transaction() as tx:
                tx.execute(
                    "UPDATE images SET trashed_at = ?, trash_path = ? WHERE id = ?",
                    (self._clock(), target, image_id),
                )
            moved.append(self._images.get(image_id))
        return [record for record in moved if record is not None]

    def restore(self, image_ids: Iterable[int]) -> list[ImageRecord]:
        """Put trashed images back where they were (beside it, if a new file took the name)."""
        restored = []
        for image_id in image_ids:
            record = self._images.get(image_id)
            if record is None or not record.trashed:
                continue
            original = Path(record.path)
            taken = original.exists() or self._images.find_by_path(original) is not None
            destination = free_name(original) if taken else original
            missing = 1
            if record.trash_path and Path(record.trash_path).exists():
                destination.parent.mkdir(parents=True, exist_ok=True)
                move_file(Path(record.trash_path), destination)
                missing = 0
            with self._db.transaction() as tx:
                tx.execute(
                    "UPDATE images SET trashed_at = NULL, trash_path = NULL, path = ?, missing = ? WHERE id = ?",
                    (str(destination), missing, image_id),
                )
            restored.append(self._images.get(image_id))
        return [record for record in restored if record is not None]

    def empty(self) -> int:
        """Delete the trashed files and their records, for good. Returns how many images went."""
        conn = self._db.connection()
        rows = conn.execute("SELECT id, trash_path FROM images WHERE trashed_at IS NOT NULL").fetchall()
        for image_id, trash_path in rows:
            if trash_path:
                with contextlib.suppress(FileNotFoundError):
                    Path(trash_path).unlink()
            with contextlib.suppress(FileNotFoundError):
                self._images.thumbnail_path(image_id).unlink()
            with self._db.transaction() as tx:
                tx.execute("DELETE FROM images WHERE id = ?", (image_id,))
        return len(rows)


def free_name(path: Path) -> Path:
    """`path`, or the first `name-2.png`, `name-3.png`, ... beside it that no file has taken."""
    if not path.exists():
        return path
    for n in range(2, 100_000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise StorageError(f"No free file name next to {path}.")


def move_file(source: Path, destination: Path) -> None:
    try:
        # os.replace is atomic within one file system; shutil.move copes with a trash on another one.
        os.replace(source, destination)
    except OSError:
        try:
            shutil.move(str(source), str(destination))
        except OSError as error:
            raise StorageError(f"Could not move {source} to {destination}: {error.strerror or error}.") from error
