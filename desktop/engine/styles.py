"""Prompt styles: named prompt and negative pieces, applied as A1111 applies its `styles.csv`.

A style's prompt that contains `{prompt}` has the user's prompt put in its place; otherwise the style's
text is appended after `, `. The same rule applies to the negative prompt. Styles are kept as JSON in
the data folder (`AppPaths.styles_file`) and can be imported from A1111's `styles.csv`.

Pure Python: no Qt, no torch.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import InvalidRequest, StorageError

SCHEMA_VERSION = 1
PLACEHOLDER = "{prompt}"
MAX_STYLES_FILE = 10 * 1024 * 1024  # a styles.csv is a few KB; refuse anything absurd before parsing


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style piece applied to one prompt, by A1111's rule."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative: str, styles: Iterable[Style]) -> tuple[str, str]:
    """The prompt and negative prompt with every style applied, in order."""
    for style in styles:
        prompt = merge_prompt(style.prompt, prompt)
        negative = merge_prompt(style.negative_prompt, negative)
    return prompt, negative


class StyleStore:
    """The saved styles: read on demand, written atomically (temp file, then `os.replace`)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        return self._path

    def all(self) -> list[Style]:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as error:
            raise StorageError(f"Cannot read the styles file {self._path}: {error}.") from None
        try:
            document = json.loads(text)
            return [Style(str(item["name"]), str(item.get("prompt", "")), str(item.get("negative_prompt", "")))
                    for item in document["styles"]]
        except (ValueError, TypeError, KeyError):
            raise InvalidRequest(
                f"The styles file {self._path} is damaged: fix or delete it, then import your styles again."
            ) from None

    def names(self) -> list[str]:
        return [style.name for style in self.all()]

    def get_many(self, names: Sequence[str]) -> list[Style]:
        """The styles named, in the order given; an unknown name is an error that lists the known ones."""
        by_name = {style.name.casefold(): style for style in self.all()}
        found = []
        for name in names:
            style = by_name.get(name.strip().casefold())
            if style is None:
                known = ", ".join(sorted((s.name for s in by_name.values()), key=str.casefold)) or "none yet"
                raise InvalidRequest(
                    f"There is no style named {name!r} (known: {known}); `marble styles import styles.csv` "
                    "imports A1111's styles."
                )
            found.append(style)
        return found

    def save(self, styles: Sequence[Style]) -> None:
        document = {
            "schema_version": SCHEMA_VERSION,
            "styles": [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles],
        }
        temp = self._path.with_name(self._path.name + ".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            temp.write_text(json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8")
            os.replace(temp, self._path)
        except OSError as error:
            raise StorageError(f"Cannot write the styles file {self._path}: {error}.") from None

    def merge(self, styles: Iterable[Style]) -> tuple[int, int]:
        """Add styles, replacing those of the same name (ignoring case): (added, replaced)."""
        current = {style.name.casefold(): style for style in self.all()}
        added = replaced = 0
        for style in styles:
            key = style.name.casefold()
            replaced += key in current
            added += key not in current
            current[key] = style
        self.save(list(current.values()))
        return added, replaced


def read_a1111_styles(path: Path) -> list[Style]:
    """The styles of an A1111 `styles.csv` (columns name, prompt, negative_prompt; CSV quoting)."""
    try:
        size = path.stat().st_size
        if size > MAX_STYLES_FILE:
            raise InvalidRequest(f"{path} is {size:,} bytes: too large for a styles file.")
        text = path.read_text(encoding="utf-8-sig")  # A1111 on Windows may write a BOM
    except UnicodeDecodeError:
        raise InvalidRequest(f"{path} is not a UTF-8 text file; A1111's styles.csv is.") from None
    except OSError as error:
        raise InvalidRequest(f"Cannot read {path}: {error}.") from None
    return parse_a1111_styles(text, str(path))


def parse_a1111_styles(text: str, label: str = "the styles file") -> list[Style]:
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    try:
        rows = list(reader)
    except csv.Error as error:
        raise InvalidRequest(f"{label} is not valid CSV: {error}.") from None
    if "name" not in (reader.fieldnames or ()):
        raise InvalidRequest(f"{label} has no `name` column: it is not an A1111 styles.csv.")
    styles = []
    for row in rows:
        name = (row.get("name") or "").strip()
        if not name:
            continue  # A1111 skips nameless rows too (its "None" placeholder row has no file entry)
        # Very old A1111 files call the prompt column "text".
        prompt = row.get("prompt") if row.get("prompt") is not None else row.get("text")
        styles.append(Style(name, prompt or "", row.get("negative_prompt") or ""))
    return styles
