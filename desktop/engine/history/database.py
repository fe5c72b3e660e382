"""The history's SQLite file: one connection per thread, write transactions, and schema migrations.

SQLite in WAL mode, so the window, the generation thread and a `marble` command in another process
read and write the same file at once; `busy_timeout` makes writers wait for each other instead of
failing. sqlite3 connections must not cross threads, so this keeps one per thread
(`threading.local`); the `Database` object itself may be shared.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from desktop.engine.errors import StorageError
from desktop.engine.history import schema

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000


class Database:
    """The connections to one history file, opened lazily, one per thread."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self._path)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close this thread's connection (other threads' connections close in `close_all`, at
        shutdown, after those threads have stopped)."""
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so busy_timeout applies here and not at a
        # later statement inside the transaction, where SQLite could not wait for it.
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def has_table(self, name: str) -> bool:
        row = self.connection().execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        return row is not None

    def integrity_check(self) -> str:
        return ", ".join(row[0] for row in self.connection().execute("PRAGMA integrity_check").fetchall())

    def migrate(self) -> None:
        """Bring the file to the current schema, after a backup copy when it held an older one."""
        version = self.connection().execute("PRAGMA user_version").fetchone()[0]
        target = schema.target_version()
        if version > target:
            raise StorageError(
                f"The history database {self._path} was written by a newer Marble (schema {version}); "
                f"this version reads schema {target}. Update Marble, or move the file away to start afresh."
            )
        if version == target:
            return
        if version > 0:
            self.backup(version)
        while version < target:
            with self.transaction() as tx:
                schema.MIGRATIONS[version](tx)
                version += 1
                # PRAGMA takes no parameters; the value is our own integer.
                tx.execute(f"PRAGMA user_version = {int(version)}")

    def backup(self, version: int) -> Path:
        """A consistent copy (the sqlite backup API includes the WAL) before a migration touches it."""
        target = self._path.with_name(f"{self._path.name}.v{version}.bak")
        copy = sqlite3.connect(target)
        try:
            self.connection().backup(copy)
        finally:
            copy.close()
        return target


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
