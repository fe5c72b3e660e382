"""The history database's schema and its forward migrations (PRAGMA user_version is the version).

Migration n turns version n into n + 1. A migration runs inside one transaction, after the store has
copied the database file aside (`history.db.v<n>.bak`), so a failed or buggy migration loses nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

_V1_TABLES = """
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    request_json TEXT NOT NULL,
    state        TEXT NOT NULL,
    created      REAL NOT NULL,
    updated      REAL NOT NULL,
    images_done  INTEGER NOT NULL DEFAULT 0,
    message      TEXT NOT NULL DEFAULT '',
    pid          INTEGER
);
CREATE INDEX jobs_state ON jobs(state);

CREATE TABLE images (
    id           INTEGER PRIMARY KEY,
    path         TEXT NOT NULL,
    created      REAL NOT NULL,
    prompt       TEXT NOT NULL DEFAULT '',
    negative     TEXT NOT NULL DEFAULT '',
    model        TEXT NOT NULL DEFAULT '',
    model_hash   TEXT,
    lora_hashes  TEXT NOT NULL DEFAULT '',
    seed         INTEGER,
    sampler      TEXT NOT NULL DEFAULT '',
    steps        INTEGER,
    cfg          REAL,
    width        INTEGER,
    height       INTEGER,
    request_json TEXT,
    timings_json TEXT NOT NULL DEFAULT '{}',
    device       TEXT NOT NULL DEFAULT '',
    favourite    INTEGER NOT NULL DEFAULT 0,
    missing      INTEGER NOT NULL DEFAULT 0,
    trash_path   TEXT,
    trashed_at   REAL,
    thumbnail    TEXT,
    source       TEXT NOT NULL DEFAULT 'marble',
    job_id       TEXT REFERENCES jobs(id) ON DELETE SET NULL
);
-- One live record per file; trashed records keep their old path so they can be restored.
CREATE UNIQUE INDEX images_live_path ON images(path) WHERE trashed_at IS NULL;
CREATE INDEX images_created ON images(created);
CREATE INDEX images_model ON images(model, created);
CREATE INDEX images_favourite ON images(favourite, created);
CREATE INDEX images_job ON images(job_id);
"""

# External-content FTS5 index over the prompts, kept in step by triggers.
_V1_FTS = """
CREATE VIRTUAL TABLE images_fts USING fts5(prompt, negative, content='images', content_rowid='id');
CREATE TRIGGER images_fts_insert AFTER INSERT ON images BEGIN
    INSERT INTO images_fts(rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative);
END;
CREATE TRIGGER images_fts_delete AFTER DELETE ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative) VALUES ('delete', old.id, old.prompt, old.negative);
END;
CREATE TRIGGER images_fts_update AFTER UPDATE OF prompt, negative ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative) VALUES ('delete', old.id, old.prompt, old.negative);
    INSERT INTO images_fts(rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative);
END;
"""


def fts5_available(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("CREATE VIRTUAL TABLE temp._marble_fts_probe USING fts5(x)")
        conn.execute("DROP TABLE temp._marble_fts_probe")
    except sqlite3.OperationalError:
        return False
    return True


def _to_v1(conn: sqlite3.Connection) -> None:
    for statement in _split(_V1_TABLES):
        conn.execute(statement)
    # Some SQLite builds (older distributions, a few Windows Pythons) lack FTS5: search then uses LIKE.
    if fts5_available(conn):
        for statement in _split(_V1_FTS):
            conn.execute(statement)


def _split(script: str) -> list[str]:
    """Statements of a script; trigger bodies keep their inner semicolons."""
    statements, current = [], []
    for line in script.strip().splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        current.append(line)
        text = "\n".join(current)
        is_trigger = text.lstrip().upper().startswith("CREATE TRIGGER")
        if (is_trigger and line.strip() == "END;") or (not is_trigger and line.rstrip().endswith(";")):
            statements.append(text)
            current = []
    return statements


# Index n migrates version n to n + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_to_v1]


def target_version() -> int:
    return len(MIGRATIONS)
