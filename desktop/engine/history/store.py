"""The history database: every image Marble made or found, and every job it was asked to run.

SQLite in WAL mode, so the window, the generation thread and a `marble` command in another process
read and write the same file at once; `busy_timeout` makes writers wait for each other instead of
failing. sqlite3 connections must not cross threads, so the store keeps one per thread
(`threading.local`); the store object itself may be shared.

Nothing here deletes a user's image without being asked: a record whose file vanished is marked
missing, a file without a record is indexed, and "delete" moves the file into the library's trash
folder, from where it can be restored until the trash is emptied.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from desktop.engine.errors import InvalidRequest, StorageError
from desktop.engine.history import schema
from desktop.engine.metadata import interpret_chunks, parse_parameters, read_text_chunks
from desktop.engine.request import GenerationRequest

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
TRASH_FOLDER = ".trash"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# A `.partial` temp file this old cannot belong to a write still in progress, whoever is running.
PARTIAL_GRACE_S = 600.0

# Job states in the database: the engine's JobState values, plus two the store owns.
INTERRUPTED = "interrupted"  # was running in a process that is gone (crash, kill, power cut)
RESUMED = "resumed"  # the user ran its remaining images again as a new job
DISMISSED = "dismissed"  # the user chose not to run it again
UNFINISHED_STATES = ("queued", "running", INTERRUPTED)
# A text chunk naming the job that made an image: a killed process or a full disk may leave an image
# without its history row, and the next start finds its job from the file itself.
JOB_CHUNK = "marble-job"

_IMAGE_COLUMNS = (
    "id, path, created, prompt, negative, model, model_hash, lora_hashes, seed, sampler, steps, cfg, "
    "width, height, request_json, timings_json, device, favourite, missing, trash_path, trashed_at, "
    "thumbnail, source, job_id"
)


@dataclass(frozen=True)
class ImageRecord:
    """One row of the history, as the panel, the command line and exports see it."""

    id: int
    path: str
    created: float
    prompt: str
    negative: str
    model: str
    model_hash: str | None
    lora_hashes: str
    seed: int | None
    sampler: str
    steps: int | None
    cfg: float | None
    width: int | None
    height: int | None
    request_json: str | None
    timings_json: str
    device: str
    favourite: bool
    missing: bool
    trash_path: str | None
    trashed_at: float | None
    thumbnail: str | None
    source: str
    job_id: str | None

    @property
    def trashed(self) -> bool:
        return self.trashed_at is not None

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}" if self.width and self.height else ""

    @property
    def timings(self) -> dict[str, float]:
        try:
            value = json.loads(self.timings_json or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def request(self) -> GenerationRequest | None:
        """The request that made this image with its concrete seed, or None when the file did not say."""
        if not self.request_json:
            return None
        try:
            return GenerationRequest.from_dict(json.loads(self.request_json))
        except (ValueError, TypeError, InvalidRequest):
            return None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["request"] = json.loads(self.request_json) if self.request_json else None
        data["timings"] = self.timings
        del data["request_json"], data["timings_json"]
        return data


@dataclass(frozen=True)
class NewImage:
    """What the runner knows about an image it has just written."""

    path: str
    request: GenerationRequest
    seed: int
    model_name: str
    model_hash: str | None = None
    lora_hashes: str = ""
    sampler: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    device: str = ""
    job_id: str | None = None
    created: float | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    request: GenerationRequest
    state: str
    created: float
    updated: float
    images_done: int
    message: str
    pid: int | None

    def remaining_request(self) -> GenerationRequest:
        """The part of the job still to do: whole batches already written are not made again.

        Image k uses seed + k, so skipping the first n batches and adding n * batch_size to the seed
        makes exactly the images the interrupted job would have made next.
        """
        request = self.request
        done_batches = min(self.images_done // request.batch_size, request.batch_count - 1)
        if done_batches <= 0:
            return request
        return replace(
            request,
            seed=request.seed + done_batches * request.batch_size,
            batch_count=request.batch_count - done_batches,
        )


@dataclass(frozen=True)
class HistoryQuery:
    """A filter over the history. `text` is full-text search over the prompts."""

    text: str = ""
    model: str | None = None
    favourites_only: bool = False
    since: float | None = None
    until: float | None = None
    trashed: bool = False
    newest_first: bool = True


@dataclass(frozen=True)
class ReconcileReport:
    indexed: int = 0
    marked_missing: int = 0
    found_again: int = 0
    partials_removed: int = 0
    jobs_interrupted: int = 0
    unreadable: tuple[str, ...] = ()


class HistoryStore:
    """The history database and the library folder it describes.

    `library` is the image folder (outputs); its `.trash` subfolder holds deleted images.
    `thumbnails` is a cache folder: thumbnail files there can always be made again.
    """

    def __init__(
        self,
        db_path: Path,
        library: Path,
        thumbnails: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db_path = Path(db_path)
        self._library = Path(library).resolve()
        self._thumbnails = Path(thumbnails)
        self._clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._migrate()
            self._fts = self._has_table("images_fts")
        except sqlite3.Error as error:
            self.close_all()
            raise StorageError(explain_database_error(self._db_path, error, self._library)) from error

    # ---------------------------------------------------------------------------- connections

    @property
    def db_path(self) -> Path:
        return self._db_path

    @property
    def library(self) -> Path:
        return self._library

    @property
    def trash_folder(self) -> Path:
        return self._library / TRASH_FOLDER

    @property
    def has_full_text_search(self) -> bool:
        return self._fts

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self._db_path)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close when the store is closed
        by `close_all`, at shutdown, after those threads have stopped)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._connections_lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            conn.close()

    def close_all(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so busy_timeout applies here and not at a
        # later statement inside the transaction, where SQLite could not wait for it.
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _has_table(self, name: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        return row is not None

    # ------------------------------------------------------------------------------- migration

    def _migrate(self) -> None:
        conn = self._conn()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        target = schema.target_version()
        if version > target:
            raise StorageError(
                f"The history database {self._db_path} was written by a newer Marble (schema {version}); "
                f"this version reads schema {target}. Update Marble, or move the file away to start afresh."
            )
        if version == target:
            return
        if version > 0:
            self._backup(version)
        while version < target:
            with self._transaction() as tx:
                schema.MIGRATIONS[version](tx)
                version += 1
                # PRAGMA takes no parameters; the value is our own integer.
                tx.execute(f"PRAGMA user_version = {int(version)}")

    def _backup(self, version: int) -> Path:
        """A consistent copy (the sqlite backup API includes the WAL) before a migration touches it."""
        target = self._db_path.with_name(f"{self._db_path.name}.v{version}.bak")
        copy = sqlite3.connect(target)
        try:
            self._conn().backup(copy)
        finally:
            copy.close()
        return target

    def integrity_check(self) -> str:
        return ", ".join(row[0] for row in self._conn().execute("PRAGMA integrity_check").fetchall())

    # ---------------------------------------------------------------------------------- images

    def thumbnail_path(self, image_id: int, size: int = 256) -> Path:
        return self._thumbnails / f"{image_id}-{size}.jpg"

    def record_image(self, image: NewImage) -> ImageRecord:
        """Record a written image in one transaction (its job's count of images goes up with it)."""
        request = replace(image.request, seed=image.seed, model=image.model_name or image.request.model)
        values = {
            "path": str(Path(image.path).resolve()),
            "created": image.created if image.created is not None else self._clock(),
            "prompt": request.prompt,
            "negative": request.negative_prompt,
            "model": image.model_name,
            "model_hash": image.model_hash,
            "lora_hashes": image.lora_hashes,
            "seed": image.seed,
            "sampler": image.sampler or request.sampler,
            "steps": request.steps,
            "cfg": float(request.cfg_scale),
            "width": request.width,
            "height": request.height,
            "request_json": json.dumps(request.to_dict()),
            "timings_json": json.dumps(image.timings),
            "device": image.device,
            "source": "marble",
            "job_id": image.job_id,
        }
        with self._transaction() as tx:
            if image.job_id is not None:
                exists = tx.execute("SELECT 1 FROM jobs WHERE id = ?", (image.job_id,)).fetchone()
                if exists is None:
                    values["job_id"] = None
            image_id = self._upsert_image(tx, values)
            if values["job_id"] is not None:
                self._recount_job(tx, values["job_id"])
        record = self.get(image_id)
        assert record is not None
        return record

    def _upsert_image(self, tx: sqlite3.Connection, values: dict[str, Any]) -> int:
        # A file written again at a path already recorded (`--out same.png`) replaces that record.
        row = tx.execute(
            "SELECT id FROM images WHERE path = ? AND trashed_at IS NULL", (values["path"],)
        ).fetchone()
        if row is not None:
            assignments = ", ".join(f"{key} = :{key}" for key in values)
            tx.execute(f"UPDATE images SET {assignments}, missing = 0 WHERE id = :id", values | {"id": row[0]})
            image_id = int(row[0])
        else:
            keys = ", ".join(values)
            marks = ", ".join(f":{key}" for key in values)
            image_id = int(tx.execute(f"INSERT INTO images ({keys}) VALUES ({marks})", values).lastrowid)
        tx.execute("UPDATE images SET thumbnail = ? WHERE id = ?", (str(self.thumbnail_path(image_id)), image_id))
        return image_id

    def index_file(self, path: Path | str) -> ImageRecord:
        """Record an image found on disk, from its own metadata (ours, A1111's, ComfyUI's, ...).

        Raises InvalidRequest when the file is not a readable PNG, JPEG or WebP image.
        """
        path = Path(path).resolve()
        chunks = read_text_chunks(path)
        metadata = interpret_chunks(chunks)
        request = metadata.request
        settings = metadata.settings
        lora_hashes = settings.get("Lora hashes", "")
        values = {
            "path": str(path),
            "created": path.stat().st_mtime,
            "prompt": metadata.prompt,
            "negative": metadata.negative_prompt,
            "model": request.model if request else settings.get("Model", ""),
            "model_hash": settings.get("Model hash"),
            "lora_hashes": lora_hashes,
            "seed": request.seed if request else None,
            "sampler": settings.get("Sampler", request.sampler if request else ""),
            "steps": request.steps if request else None,
            "cfg": float(request.cfg_scale) if request else None,
            "width": request.width if request else None,
            "height": request.height if request else None,
            "request_json": json.dumps(request.to_dict()) if request else None,
            "timings_json": "{}",
            "device": "",
            "source": metadata.format,
            "job_id": None,
        }
        job_id = chunks.get(JOB_CHUNK)
        with self._transaction() as tx:
            if job_id and tx.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None:
                values["job_id"] = job_id
            image_id = self._upsert_image(tx, values)
            if values["job_id"] is not None:
                self._recount_job(tx, job_id)
        record = self.get(image_id)
        assert record is not None
        return record

    def _recount_job(self, tx: sqlite3.Connection, job_id: str) -> None:
        """A job's count is the images it made that the history knows of, one per seed: counted, not
        incremented, so an image recorded twice (a re-index, a rewrite) never counts twice."""
        tx.execute(
            "UPDATE jobs SET images_done = (SELECT count(DISTINCT seed) FROM images WHERE job_id = :id), "
            "updated = :now WHERE id = :id",
            {"id": job_id, "now": self._clock()},
        )

    def get(self, image_id: int) -> ImageRecord | None:
        row = self._conn().execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,)).fetchone()
        return _image(row) if row else None

    def find_by_path(self, path: Path | str) -> ImageRecord | None:
        row = self._conn().execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE path = ? AND trashed_at IS NULL",
            (str(Path(path).resolve()),),
        ).fetchone()
        return _image(row) if row else None

    def query(self, query: HistoryQuery = HistoryQuery(), limit: int = 100, offset: int = 0) -> list[ImageRecord]:
        where, params = self._where(query)
        order = "DESC" if query.newest_first else "ASC"
        rows = self._conn().execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE {where} ORDER BY created {order}, id {order} "
            "LIMIT ? OFFSET ?",
            (*params, int(limit), int(offset)),
        ).fetchall()
        return [_image(row) for row in rows]

    def count(self, query: HistoryQuery = HistoryQuery()) -> int:
        where, params = self._where(query)
        return int(self._conn().execute(f"SELECT count(*) FROM images WHERE {where}", params).fetchone()[0])

    def _where(self, query: HistoryQuery) -> tuple[str, tuple[Any, ...]]:
        clauses = ["trashed_at IS NOT NULL" if query.trashed else "trashed_at IS NULL"]
        params: list[Any] = []
        words = _search_words(query.text)
        if words and self._fts:
            # Each word as a quoted prefix term: user text never becomes FTS syntax.
            match = " AND ".join('"' + word.replace('"', '""') + '"*' for word in words)
            clauses.append("id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
            params.append(f"prompt : ({match})")
        else:
            for word in words:
                clauses.append("prompt LIKE ? ESCAPE '\\'")
                params.append("%" + re.sub(r"([\\%_])", r"\\\1", word) + "%")
        if query.model:
            clauses.append("model = ?")
            params.append(query.model)
        if query.favourites_only:
            clauses.append("favourite = 1")
        if query.since is not None:
            clauses.append("created >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("created < ?")
            params.append(query.until)
        return " AND ".join(clauses), tuple(params)

    def models(self) -> list[str]:
        # Answered from the (model, created) index alone: no trashed filter, which would read every row
        # (a model whose images are all in the trash stays listed until the trash is emptied).
        rows = self._conn().execute("SELECT DISTINCT model FROM images WHERE model != '' ORDER BY model").fetchall()
        return [row[0] for row in rows]

    def set_favourite(self, image_id: int, favourite: bool = True) -> None:
        with self._transaction() as tx:
            tx.execute("UPDATE images SET favourite = ? WHERE id = ?", (int(favourite), image_id))

    # ----------------------------------------------------------------------------------- trash

    def trash(self, image_ids: Iterable[int]) -> list[ImageRecord]:
        """Move the images' files into the trash folder; their records stay, marked trashed."""
        moved = []
        for image_id in image_ids:
            record = self.get(image_id)
            if record is None or record.trashed:
                continue
            source = Path(record.path)
            target: str | None = None
            if source.exists():
                self.trash_folder.mkdir(parents=True, exist_ok=True)
                destination = _free_name(self.trash_folder / f"{record.id}-{source.name}")
                _move(source, destination)
                target = str(destination)
            with self._transaction() as tx:
                tx.execute(
                    "UPDATE images SET trashed_at = ?, trash_path = ? WHERE id = ?",
                    (self._clock(), target, image_id),
                )
            moved.append(self.get(image_id))
        return [record for record in moved if record is not None]

    def restore(self, image_ids: Iterable[int]) -> list[ImageRecord]:
        """Put trashed images back where they were (beside it, if a new file took the name)."""
        restored = []
        for image_id in image_ids:
            record = self.get(image_id)
            if record is None or not record.trashed:
                continue
            original = Path(record.path)
            taken = original.exists() or self.find_by_path(original) is not None
            destination = _free_name(original) if taken else original
            missing = 1
            if record.trash_path and Path(record.trash_path).exists():
                destination.parent.mkdir(parents=True, exist_ok=True)
                _move(Path(record.trash_path), destination)
                missing = 0
            with self._transaction() as tx:
                tx.execute(
                    "UPDATE images SET trashed_at = NULL, trash_path = NULL, path = ?, missing = ? WHERE id = ?",
                    (str(destination), missing, image_id),
                )
            restored.append(self.get(image_id))
        return [record for record in restored if record is not None]

    def empty_trash(self) -> int:
        """Delete the trashed files and their records, for good. Returns how many images went."""
        rows = self._conn().execute("SELECT id, trash_path FROM images WHERE trashed_at IS NOT NULL").fetchall()
        for image_id, trash_path in rows:
            if trash_path:
                with contextlib.suppress(FileNotFoundError):
                    Path(trash_path).unlink()
            with contextlib.suppress(FileNotFoundError):
                self.thumbnail_path(image_id).unlink()
            with self._transaction() as tx:
                tx.execute("DELETE FROM images WHERE id = ?", (image_id,))
        return len(rows)

    # ------------------------------------------------------------------------------------ jobs

    def add_job(self, job_id: str, request: GenerationRequest, state: str = "queued") -> None:
        now = self._clock()
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO jobs (id, request_json, state, created, updated, pid) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET request_json = excluded.request_json, state = excluded.state, "
                "updated = excluded.updated, pid = excluded.pid",
                (job_id, json.dumps(request.to_dict()), state, now, now, os.getpid()),
            )

    def set_job_state(self, job_id: str, state: str, message: str = "") -> None:
        with self._transaction() as tx:
            tx.execute(
                "UPDATE jobs SET state = ?, message = ?, updated = ?, pid = ? WHERE id = ?",
                (state, message, self._clock(), os.getpid(), job_id),
            )

    def job(self, job_id: str) -> JobRecord | None:
        row = self._conn().execute(
            "SELECT id, request_json, state, created, updated, images_done, message, pid FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        return _job(row) if row else None

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs queued or running in a process that is gone: what a restart offers to run again.

        Jobs of a live process (this one, or a `marble` command running beside the window) are
        still in hand and not listed.
        """
        marks = ", ".join("?" for _ in UNFINISHED_STATES)
        rows = self._conn().execute(
            "SELECT id, request_json, state, created, updated, images_done, message, pid FROM jobs "
            f"WHERE state IN ({marks}) ORDER BY created",
            UNFINISHED_STATES,
        ).fetchall()
        jobs = [_job(row) for row in rows]
        return [job for job in jobs if job.state == INTERRUPTED or not _alive(job.pid)]

    def dismiss_job(self, job_id: str) -> None:
        self.set_job_state(job_id, DISMISSED)

    # ------------------------------------------------------------------------------- reconcile

    def reconcile(self, partial_grace_s: float = PARTIAL_GRACE_S) -> ReconcileReport:
        """Bring the database in step with the library folder; safe to run while others write.

        Files without records are indexed from their metadata; records without files are marked
        missing (and unmarked when the file comes back); jobs of dead processes become
        "interrupted"; the `.name.partial` temp files of killed writes are removed: only those,
        and only when no live process could still be writing them.
        """
        interrupted = self._interrupt_dead_jobs()
        # This process counts too: the window checks the folder while its own job may be writing.
        live_writer = any(_alive(pid) for pid in self._running_pids())
        on_disk: set[str] = set()
        partials: list[Path] = []
        for entry in _walk(self._library):
            if entry.name.startswith(".") and entry.name.endswith(".partial"):
                partials.append(Path(entry.path))
            elif entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.name.startswith("."):
                on_disk.add(str(Path(entry.path).resolve()))

        removed = 0
        now = time.time()
        for partial in partials:
            with contextlib.suppress(OSError):
                old = now - partial.stat().st_mtime > partial_grace_s
                if old or not live_writer:
                    partial.unlink()
                    removed += 1

        conn = self._conn()
        rows = conn.execute("SELECT id, path, missing, trash_path FROM images WHERE trashed_at IS NULL").fetchall()
        recorded = {path for _, path, _, _ in rows}
        inside = str(self._library) + os.sep
        gone, back = [], []
        for image_id, path, missing, _ in rows:
            # Files outside the library (`--out`, rescued images) are looked up one by one.
            exists = path in on_disk or (not path.startswith(inside) and os.path.exists(path))
            if exists and missing:
                back.append(image_id)
            elif not exists and not missing:
                gone.append(image_id)
        if gone or back:
            with self._transaction() as tx:
                tx.executemany("UPDATE images SET missing = 1 WHERE id = ?", [(i,) for i in gone])
                tx.executemany("UPDATE images SET missing = 0 WHERE id = ?", [(i,) for i in back])

        indexed, unreadable = 0, []
        for path in sorted(on_disk - recorded):
            try:
                self.index_file(path)
                indexed += 1
            except (InvalidRequest, OSError) as error:
                # Not an image we can read: leave it alone, say so, and try again next start.
                log.info("not indexed: %s: %s", path, error)
                unreadable.append(path)
        self._finish_complete_jobs()
        return ReconcileReport(indexed, len(gone), len(back), removed, interrupted, tuple(unreadable))

    def _finish_complete_jobs(self) -> None:
        """An interrupted job whose every image is on disk (killed after its last image, before it could
        say it had finished) is finished: nothing of it is left to run again."""
        rows = self._conn().execute(
            "SELECT id, request_json, state, created, updated, images_done, message, pid FROM jobs WHERE state = ?",
            (INTERRUPTED,),
        ).fetchall()
        complete = [job.id for job in map(_job, rows) if job.images_done >= job.request.images_total]
        if complete:
            with self._transaction() as tx:
                tx.executemany(
                    "UPDATE jobs SET state = 'finished', message = ?, updated = ? WHERE id = ? AND state = ?",
                    [("every image was made; the process ended before it could say so", self._clock(), job_id,
                      INTERRUPTED) for job_id in complete],
                )

    def _running_pids(self) -> list[int]:
        rows = self._conn().execute("SELECT DISTINCT pid FROM jobs WHERE state = 'running'").fetchall()
        return [row[0] for row in rows if row[0] is not None]

    def _interrupt_dead_jobs(self) -> int:
        dead = [pid for pid in self._running_pids() if not _alive(pid)]
        if not dead:
            return 0
        marks = ", ".join("?" for _ in dead)
        with self._transaction() as tx:
            cursor = tx.execute(
                f"UPDATE jobs SET state = ?, updated = ? WHERE state = 'running' AND pid IN ({marks})",
                (INTERRUPTED, self._clock(), *dead),
            )
            return cursor.rowcount


# -------------------------------------------------------------------------------------- helpers

_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_READ_ONLY = {"SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"}


def explain_database_error(db_path: Path, error: sqlite3.Error, library: Path | None = None) -> str:
    """One sentence a user can act on for a failing history database: what is wrong, and how to recover.

    The images never depend on the database (each carries its own metadata), so moving a broken
    database aside loses only favourites, the trash list and job records: the next start rebuilds the
    rest from the image folder. A migration backup (`history.db.v<n>.bak`) keeps even those.
    """
    name = getattr(error, "sqlite_errorname", "") or ""
    code = name.split("_", 2)[:2]  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
    kind = "_".join(code)
    safe = f" Your images are safe in {library}." if library is not None else " Your images are safe."
    try:
        backups = sorted(db_path.parent.glob(f"{db_path.name}.v*.bak"), key=lambda p: p.stat().st_mtime)
    except OSError:
        backups = []  # a folder we cannot list: the advice goes without the backup
    restore = f"copy the backup {backups[-1]} over it, or " if backups else ""
    rebuild = (f"{restore}move {db_path.name} (and any {db_path.name}-wal, {db_path.name}-shm beside it) to "
               "another name: the next start rebuilds the history from the images' own metadata "
               "(favourites, the trash list and unfinished jobs are lost).")
    if kind in _CORRUPT or "malformed" in str(error) or "not a database" in str(error):
        return f"The history database {db_path} is damaged ({error}).{safe} To recover, {rebuild}"
    if kind == "SQLITE_FULL" or "disk is full" in str(error):
        return (f"The disk holding the history database {db_path} is full ({error}).{safe} "
                "Free some space and try again; nothing recorded so far is lost.")
    if kind in _READ_ONLY or "readonly" in str(error) or "unable to open" in str(error):
        return (f"Marble may not write to the history database {db_path} ({error}).{safe} Make the file and "
                f"its folder writable for your user, or {rebuild}")
    return f"The history database {db_path} cannot be used ({error}).{safe} If this persists, {rebuild}"


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: the store opens its own transactions (BEGIN IMMEDIATE) where it needs them.
    # Each connection is used by one thread only; check_same_thread=False merely lets `close_all`
    # close the connections of threads that have ended (thread-pool threads) at shutdown.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("history database %s is in %s mode, not WAL", path, mode)
    # FULL: a committed record survives a power cut, not only a killed process; one fsync per image.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _image(row: Sequence[Any]) -> ImageRecord:
    values = list(row)
    values[17] = bool(values[17])  # favourite
    values[18] = bool(values[18])  # missing
    return ImageRecord(*values)


def _job(row: Sequence[Any]) -> JobRecord:
    job_id, request_json, state, created, updated, images_done, message, pid = row
    try:
        request = GenerationRequest.from_dict(json.loads(request_json))
    except (ValueError, TypeError, InvalidRequest):
        request = GenerationRequest(prompt="", model="")
    return JobRecord(job_id, request, state, created, updated, images_done, message, pid)


def _search_words(text: str) -> list[str]:
    return [word for word in re.split(r"[\W_]+", text or "") if word]


def _walk(folder: Path) -> Iterator[os.DirEntry[str]]:
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


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    for n in range(2, 100_000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise StorageError(f"No free file name next to {path}.")


def _move(source: Path, destination: Path) -> None:
    try:
        # os.replace is atomic within one file system; shutil.move copes with a trash on another one.
        os.replace(source, destination)
    except OSError:
        try:
            shutil.move(str(source), str(destination))
        except OSError as error:
            raise StorageError(f"Could not move {source} to {destination}: {error.strerror or error}.") from error


def _alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds the id: not ours, but alive
    except OSError:
        return False
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    # A killed child its parent has not reaped yet still answers kill(0); Linux tells them apart.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _alive_windows(pid: int) -> bool:  # pragma: no cover - Windows only
    # os.kill(pid, 0) on Windows would send CTRL_C_EVENT, so ask the kernel instead.
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def parse_lora_hashes(parameters_text: str) -> str:
    """The `Lora hashes` value of A1111 parameters text, as written (empty when there is none)."""
    return parse_parameters(parameters_text).settings.get("Lora hashes", "")
