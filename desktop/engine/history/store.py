"""The history: every image Marble made or found, and every job it was asked to run.

`HistoryStore` is the one object callers hold; each of its jobs lives in its own module:
`database` (connections, transactions, migrations), `images` and `queries` (image records),
`rows` (the one builder of an image row), `jobs` (job records), `trash`, and `reconcile` (keeping the
database in step with the folder). Nothing here deletes a user's image without being asked: a
record whose file vanished is marked missing, a file without a record is indexed, and "delete" moves
the file into the library's trash folder, from where it can be restored until the trash is emptied.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from desktop.engine.errors import StorageError
from desktop.engine.history import reconcile as reconciling
from desktop.engine.history.database import BUSY_TIMEOUT_MS, Database, explain_database_error
from desktop.engine.history.images import ImageTable
from desktop.engine.history.jobs import (
    DISMISSED,
    INTERRUPTED,
    JOB_CHUNK,
    RESUMED,
    UNFINISHED_STATES,
    JobTable,
)
from desktop.engine.history.reconcile import IMAGE_SUFFIXES, PARTIAL_GRACE_S
from desktop.engine.history.records import HistoryQuery, ImageRecord, JobRecord, NewImage, ReconcileReport
from desktop.engine.history.rows import found_image_row, new_image_row
from desktop.engine.history.trash import TRASH_FOLDER, Trash
from desktop.engine.metadata import interpret_chunks, read_text_chunks
from desktop.engine.request import GenerationRequest

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DISMISSED",
    "IMAGE_SUFFIXES",
    "INTERRUPTED",
    "JOB_CHUNK",
    "PARTIAL_GRACE_S",
    "RESUMED",
    "TRASH_FOLDER",
    "UNFINISHED_STATES",
    "HistoryQuery",
    "HistoryStore",
    "ImageRecord",
    "JobRecord",
    "NewImage",
    "ReconcileReport",
    "explain_database_error",
]

# The default query: every image not in the trash, newest first (a frozen dataclass, safe to share).
_EVERY_IMAGE = HistoryQuery()


class HistoryStore:
    """The history database and the library folder it describes.

    `library` is the image folder (outputs); its `.trash` subfolder holds deleted images.
    `thumbnails` is a cache folder: thumbnail files there can always be made again.
    The store may be shared between threads; each thread gets its own SQLite connection.
    """

    def __init__(
        self,
        db_path: Path,
        library: Path,
        thumbnails: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._library = Path(library).resolve()
        self._clock = clock
        self._db = Database(Path(db_path))
        self._db.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db.migrate()
            self._images = ImageTable(self._db, Path(thumbnails), clock)
        except sqlite3.Error as error:
            self._db.close_all()
            raise StorageError(explain_database_error(self._db.path, error, self._library)) from error
        self._jobs = JobTable(self._db, clock)
        self._trash = Trash(self._db, self._images, self._library / TRASH_FOLDER, clock)

    @property
    def db_path(self) -> Path:
        return self._db.path

    @property
    def library(self) -> Path:
        return self._library

    @property
    def trash_folder(self) -> Path:
        return self._trash.folder

    @property
    def has_full_text_search(self) -> bool:
        return self._images.full_text

    def close(self) -> None:
        """Close this thread's connection (the others close in `close_all`, at shutdown)."""
        self._db.close()

    def close_all(self) -> None:
        self._db.close_all()

    def integrity_check(self) -> str:
        return self._db.integrity_check()

    # ---------------------------------------------------------------------------------- images

    def thumbnail_path(self, image_id: int, size: int = 256) -> Path:
        return self._images.thumbnail_path(image_id, size)

    def record_image(self, image: NewImage) -> ImageRecord:
        """Record a written image in one transaction (its job's count of images goes up with it)."""
        created = image.created if image.created is not None else self._clock()
        return self._images.add(new_image_row(image, created))

    def index_file(self, path: Path | str) -> ImageRecord:
        """Record an image found on disk, from its own metadata (ours, A1111's, ComfyUI's, ...).

        Raises InvalidRequest when the file is not a readable PNG, JPEG or WebP image.
        """
        path = Path(path).resolve()
        chunks = read_text_chunks(path)
        row = found_image_row(path, path.stat().st_mtime, interpret_chunks(chunks), chunks.get(JOB_CHUNK))
        return self._images.add(row)

    def get(self, image_id: int) -> ImageRecord | None:
        return self._images.get(image_id)

    def find_by_path(self, path: Path | str) -> ImageRecord | None:
        return self._images.find_by_path(path)

    def query(self, query: HistoryQuery = _EVERY_IMAGE, limit: int = 100, offset: int = 0) -> list[ImageRecord]:
        return self._images.query(query, limit, offset)

    def count(self, query: HistoryQuery = _EVERY_IMAGE) -> int:
        return self._images.count(query)

    def models(self) -> list[str]:
        return self._images.models()

    def set_favourite(self, image_id: int, favourite: bool = True) -> None:
        self._images.set_favourite(image_id, favourite)

    # ----------------------------------------------------------------------------------- trash

    def trash(self, image_ids: Iterable[int]) -> list[ImageRecord]:
        """Move the images' files into the trash folder; their records stay, marked trashed."""
        return self._trash.trash(image_ids)

    def restore(self, image_ids: Iterable[int]) -> list[ImageRecord]:
        """Put trashed images back where they were (beside it, if a new file took the name)."""
        return self._trash.restore(image_ids)

    def empty_trash(self) -> int:
        """Delete the trashed files and their records, for good. Returns how many images went."""
        return self._trash.empty()

    # ------------------------------------------------------------------------------------ jobs

    def add_job(self, job_id: str, request: GenerationRequest, state: str = "queued") -> None:
        self._jobs.add(job_id, request, state)

    def set_job_state(self, job_id: str, state: str, message: str = "") -> None:
        self._jobs.set_state(job_id, state, message)

    def job(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs queued or running in a process that is gone: what a restart offers to run again."""
        return self._jobs.unfinished()

    def dismiss_job(self, job_id: str) -> None:
        self._jobs.set_state(job_id, DISMISSED)

    # ------------------------------------------------------------------------------- reconcile

    def reconcile(self, partial_grace_s: float = PARTIAL_GRACE_S) -> ReconcileReport:
        """Bring the database in step with the library folder; safe to run while others write
        (see `desktop.engine.history.reconcile`)."""
        return reconciling.reconcile(self._images, self._jobs, self._library, self.index_file, partial_grace_s)

