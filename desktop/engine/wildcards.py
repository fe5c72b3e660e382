"""Wildcards: `__name__` in a prompt becomes one line of `wildcards/name.txt` in the data folder.

The line is chosen by the image's seed, so the same seed gives the same prompt again, and a chosen line
may itself hold wildcards (resolved up to MAX_DEPTH levels, which also stops a file that names itself).
Names are matched against the folder's listing, never joined into a path: a prompt comes from anywhere.

Pure Python: no Qt, no torch.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import InvalidRequest

MAX_DEPTH = 10
MAX_FILE_BYTES = 4 * 1024 * 1024
# `__name__`, `__folder/name__`: word characters, dashes and slashes (no dots, so no `..`).
_WILDCARD = re.compile(r"__([\w\-]+?(?:/[\w\-]+?)*)__")


def has_wildcards(text: str) -> bool:
    return _WILDCARD.search(text) is not None


@dataclass(frozen=True)
class ResolvedPrompts:
    prompt: str
    negative_prompt: str


class Wildcards:
    """The wildcard files of one folder; each file is read when a prompt first needs it."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    @property
    def folder(self) -> Path:
        return self._folder

    def names(self) -> list[str]:
        return sorted(self._listing())

    def _listing(self) -> dict[str, Path]:
        if not self._folder.is_dir():
            return {}
        found = {}
        for path in self._folder.rglob("*.txt"):
            if path.is_file():
                found[path.relative_to(self._folder).with_suffix("").as_posix().casefold()] = path
        return found

    def resolve(self, prompt: str, negative: str, seed: int) -> ResolvedPrompts:
        """Both prompts with every wildcard replaced, chosen by `seed` (deterministic)."""
        if not has_wildcards(prompt) and not has_wildcards(negative):
            return ResolvedPrompts(prompt, negative)
        rng = random.Random(seed)
        listing = self._listing()
        cache: dict[str, list[str]] = {}
        return ResolvedPrompts(self._expand(prompt, rng, listing, cache), self._expand(negative, rng, listing, cache))

    def _expand(self, text: str, rng: random.Random, listing: dict[str, Path], cache: dict[str, list[str]]) -> str:
        for _ in range(MAX_DEPTH):
            if not has_wildcards(text):
                return text
            text = _WILDCARD.sub(lambda match: rng.choice(self._lines(match.group(1), listing, cache)), text)
        if has_wildcards(text):
            name = _WILDCARD.search(text).group(1)  # type: ignore[union-attr]
            raise InvalidRequest(
                f"Wildcards nest more than {MAX_DEPTH} levels deep (still __{name}__): a wildcard file "
                "probably names itself. Edit that file."
            )
        return text

    def _lines(self, name: str, listing: dict[str, Path], cache: dict[str, list[str]]) -> list[str]:
        key = name.casefold()
        if key in cache:
            return cache[key]
        path = listing.get(key)
        if path is None:
            raise InvalidRequest(
                f"The prompt uses the wildcard __{name}__, but there is no {name}.txt in {self._folder}: "
                "add the file (one choice per line) or remove the wildcard."
            )
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise InvalidRequest(f"The wildcard file {path} is larger than {MAX_FILE_BYTES // 1024 // 1024} MB.")
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidRequest(f"Cannot read the wildcard file {path}: {error}.") from None
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            raise InvalidRequest(f"The wildcard file {path} has no lines to choose from.")
        cache[key] = lines
        return lines
