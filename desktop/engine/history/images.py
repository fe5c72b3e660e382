"""The `images` table: recording, reading and searching image records."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from desktop.engine.history.database import Database
from desktop.engine.history.jobs import job_exists, recount_job
from desktop.engine.history.queries import where_clause
from desktop.engine.history.records import IMAGE_COLUMNS, HistoryQuery, ImageRecord, image_from_row


class ImageTable:
    """The `images` table. `thumbnails` is the cache folder each record's thumbnail path points into."""

    def __init__(self, db: Database, thumbnails: Path, clock: Callable[[], float]) -> None:
        self._db = db
        self._thumbnails = Path(thumbnails)
        self._clock = clock
        # Whether the FTS5 table exists (SQLite builds without FTS5 search with LIKE instead).
        self.full_text = db.has_table("images_fts")

    def thumbnail_path(self, image_id: int, size: int = 256) -> Path:
        return self._thumbnails / f"{image_id}-{size}.jpg"

    def add(self, values: dict[str, Any]) -> ImageRecord:
        """Record a row in one transaction; its job, when the database knows it, counts it."""
        with self._db.transaction() as tx:
            job_id = values["job_id"]
            if job_id is not None and not job_exists(tx, job_id):
                values = values | {"job_id": None}
            image_id = self.upsert(tx, values)
            if values["job_id"] is not None:
                recount_job(tx, values["job_id"], self._clock())
        record = self.get(image_id)
        assert record is not None
        return record

    def upsert(self, tx: sqlite3.Connection, values: dict[str, Any]) -> int:
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

    def get(self, image_id: int) -> ImageRecord | None:
        conn = self._db.connection()
        row = conn.execute(f"SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,)).fetchone()
        return image_from_row(row) if row else None

    def find_by_path(self, path: Path | str) -> ImageRecord | None:
        row = self._db.connection().execute(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE path = ? AND trashed_at IS NULL",
            (str(Path(path).resolve()),),
        ).fetchone()
        return image_from_row(row) if row else None

    def query(self, query: HistoryQuery, limit: int, offset: int) -> list[ImageRecord]:
        where, params = where_clause(query, self.full_text)
        order = "DESC" if query.newest_first else "ASC"
        rows = self._db.connection().execute(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE {where} ORDER BY created {order}, id {order} "
            "LIMIT ? OFFSET ?",
            (*params, int(limit), int(offset)),
        ).fetchall()
        return [image_from_row(row) for row in rows]

    def count(self, query: HistoryQuery) -> int:
        where, params = where_clause(query, self.full_text)
        return int(self._db.connection().execute(f"SELECT count(*) FROM images WHERE {where}", params).fetchone()[0])

    def models(self) -> list[str]:
        # Answered from the (model, created) index alone: no trashed filter, which would read every row
        # (a model whose images are all in the trash stays listed until the trash is emptied).
        conn = self._db.connection()
        rows = conn.execute("SELECT DISTINCT model FROM images WHERE model != '' ORDER BY model").fetchall()
        return [row[0] for row in rows]

    def set_favourite(self, image_id: int, favourite: bool) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE images SET favourite = ? WHERE id = ?", (int(favourite), image_id))

    def untrashed_paths(self) -> list[tuple[int, str, bool]]:
        """(id, path, missing) of every record not in the trash."""
        conn = self._db.connection()
        rows = conn.execute("SELECT id, path, missing FROM images WHERE trashed_at IS NULL").fetchall()
        return [(int(image_id), path, bool(missing)) for image_id, path, missing in rows]

    def set_missing(self, gone: Sequence[int], back: Sequence[int]) -> None:
        if gone or back:
            with self._db.transaction() as tx:
                tx.executemany("UPDATE images SET missing = 1 WHERE id = ?", [(i,) for i in gone])
                tx.executemany("UPDATE images SET missing = 0 WHERE id = ?", [(i,) for i in back])
