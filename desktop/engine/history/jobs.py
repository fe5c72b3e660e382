"""Job records: every job Marble was asked to run, so a restart can offer what a crash left undone."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable

from desktop.engine.history.database import Database
from desktop.engine.history.processes import alive
from desktop.engine.history.records import JOB_COLUMNS, JobRecord, job_from_row
from desktop.engine.request import GenerationRequest

# Job states in the database: the engine's JobState values, plus three the store owns.
INTERRUPTED = "interrupted"  # was running in a process that is gone (crash, kill, power cut)
RESUMED = "resumed"  # the user ran its remaining images again as a new job
DISMISSED = "dismissed"  # the user chose not to run it again
UNFINISHED_STATES = ("queued", "running", INTERRUPTED)
# A text chunk naming the job that made an image: a killed process or a full disk may leave an image
# without its history row, and the next start finds its job from the file itself.
JOB_CHUNK = "marble-job"


class JobTable:
    """The `jobs` table."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    def add(self, job_id: str, request: GenerationRequest, state: str = "queued") -> None:
        now = self._clock()
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO jobs (id, request_json, state, created, updated, pid) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET request_json = excluded.request_json, state = excluded.state, "
                "updated = excluded.updated, pid = excluded.pid",
                (job_id, json.dumps(request.to_dict()), state, now, now, os.getpid()),
            )

    def set_state(self, job_id: str, state: str, message: str = "") -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE jobs SET state = ?, message = ?, updated = ?, pid = ? WHERE id = ?",
                (state, message, self._clock(), os.getpid(), job_id),
            )

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.connection().execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def unfinished(self) -> list[JobRecord]:
        """Jobs queued or running in a process that is gone: what a restart offers to run again.

        Jobs of a live process (this one, or a `marble` command running beside the window) are
        still in hand and not listed.
        """
        marks = ", ".join("?" for _ in UNFINISHED_STATES)
        rows = self._db.connection().execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY created", UNFINISHED_STATES
        ).fetchall()
        jobs = [job_from_row(row) for row in rows]
        return [job for job in jobs if job.state == INTERRUPTED or not alive(job.pid)]

    def running_pids(self) -> list[int]:
        rows = self._db.connection().execute("SELECT DISTINCT pid FROM jobs WHERE state = 'running'").fetchall()
        return [row[0] for row in rows if row[0] is not None]

    def interrupt_dead(self) -> int:
        """Mark the running jobs of processes that are gone as interrupted; returns how many."""
        dead = [pid for pid in self.running_pids() if not alive(pid)]
        if not dead:
            return 0
        marks = ", ".join("?" for _ in dead)
        with self._db.transaction() as tx:
            cursor = tx.execute(
                f"UPDATE jobs SET state = ?, updated = ? WHERE state = 'running' AND pid IN ({marks})",
                (INTERRUPTED, self._clock(), *dead),
            )
            return cursor.rowcount

    def finish_complete(self) -> None:
        """An interrupted job whose every image is on disk (killed after its last image, before it could
        say it had finished) is finished: nothing of it is left to run again."""
        rows = self._db.connection().execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?", (INTERRUPTED,)
        ).fetchall()
        complete = [job.id for job in map(job_from_row, rows) if job.images_done >= job.request.images_total]
        if complete:
            with self._db.transaction() as tx:
                tx.executemany(
                    "UPDATE jobs SET state = 'finished', message = ?, updated = ? WHERE id = ? AND state = ?",
                    [("every image was made; the process ended before it could say so", self._clock(), job_id,
                      INTERRUPTED) for job_id in complete],
                )


def job_exists(tx: sqlite3.Connection, job_id: str) -> bool:
    return tx.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None


def recount_job(tx: sqlite3.Connection, job_id: str, now: float) -> None:
    """A job's count is the images it made that the history knows of, one per seed: counted, not
    incremented, so an image recorded twice (a re-index, a rewrite) never counts twice."""
    tx.execute(
        "UPDATE jobs SET images_done = (SELECT count(DISTINCT seed) FROM images WHERE job_id = :id), "
        "updated = :now WHERE id = :id",
        {"id": job_id, "now": now},
    )
