"""A HistoryQuery as SQL: the WHERE clause and its parameters. User text is always a parameter."""

from __future__ import annotations

import re
from typing import Any

from desktop.engine.history.records import HistoryQuery


def where_clause(query: HistoryQuery, full_text: bool) -> tuple[str, tuple[Any, ...]]:
    """The `images` rows `query` selects. With `full_text` (the FTS5 table exists) the prompt words are
    matched as prefixes through it; without it, as substrings with LIKE."""
    clauses = ["trashed_at IS NOT NULL" if query.trashed else "trashed_at IS NULL"]
    params: list[Any] = []
    words = search_words(query.text)
    if words and full_text:
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


def search_words(text: str) -> list[str]:
    return [word for word in re.split(r"[\W_]+", text or "") if word]
