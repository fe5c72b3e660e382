"""How many CLIP tokens a prompt takes, counted on the GUI thread without the tokenizer library.

The prompt editor shows A1111's counter ("12/75", "80/150": tokens used over what its chunks hold).
transformers' tokenizer would give the same count, but importing it on the GUI thread costs seconds
and holds the lock the worker needs, so this is CLIP's byte-pair encoding again, in plain Python,
from the merges file every SD tokenizer ships (SD 1.x, SD 2.x and both SDXL tokenizers share it).
Chunks are packed by `prompt_syntax.pack_prompt`, as the backend packs them, so a BREAK or a comma
near the end of a chunk moves the count just as it moves the encoding.

A textual-inversion embedding's name, where the prompt uses it as a word (as the backend finds it),
counts as its vectors, kept in one chunk as the backend keeps them (`set_embeddings`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.prompt_schedule import schedule_prompt, split_and
from desktop.engine.prompt_syntax import embedding_words, pack_prompt, prompt_pieces

CHUNK_TOKENS = 75  # a 77-token window less its start and end tokens
# The counter does not know the job's steps; A1111's default. Steps only decide which of a prompt's
# scheduled variants exist, not how long each is.
COUNT_STEPS = 20
_END_OF_WORD = "</w>"
_COMMA = "," + _END_OF_WORD
_MAX_CACHED_WORDS = 50_000
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
_SPECIAL = re.compile("(" + "|".join(re.escape(token) for token in _SPECIAL_TOKENS) + ")")
# CLIP's pre-tokenizer: contractions, runs of letters, single numbers, runs of anything else. Python's
# `re` has no \p{L} or \p{N}: [^\W\d_] is letters and the numbers that are not digits (², ½), which
# `_words` splits off.
_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")


@dataclass(frozen=True)
class PromptLength:
    """A prompt's token count and the chunks it fills; `capacity` is what those chunks hold."""

    tokens: int
    chunks: int

    @property
    def capacity(self) -> int:
        return self.chunks * CHUNK_TOKENS


class TokenCounter:
    """Counts CLIP tokens with the byte-pair merges of a tokenizer's `merges.txt`."""

    def __init__(self, merge_ranks: dict[tuple[str, str], int]) -> None:
        self._ranks = merge_ranks
        self._byte_symbols = _byte_symbols()
        self._words: dict[str, tuple[str, ...]] = {}  # a prompt is retyped one key at a time
        self._embeddings: dict[str, int] = {}
        self._embedding_names: re.Pattern[str] | None = None

    def set_embeddings(self, vectors: Mapping[str, int]) -> None:
        """The library's embeddings (name -> vectors), found in prompts as the backend finds them
        (`prompt_syntax.embedding_words`)."""
        self._embeddings = dict(vectors)
        self._embedding_names = embedding_words(self._embeddings)

    @classmethod
    def from_merges_file(cls, file: Path) -> TokenCounter:
        ranks: dict[tuple[str, str], int] = {}
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                parts = line.split()
                if len(parts) == 2 and not line.startswith("#version"):
                    ranks[(parts[0], parts[1])] = len(ranks)
        if not ranks:
            raise ValueError(f"{file} holds no byte-pair merges.")
        return cls(ranks)

    def tokens(self, text: str) -> list[str]:
        """The text's tokens as the tokenizer spells them (words end in "</w>")."""
        out: list[str] = []
        for part in _SPECIAL.split(text):
            if part in _SPECIAL_TOKENS:  # written out in a prompt, still one token each
                out.append(part)
                continue
            for word in _words(" ".join(unicodedata.normalize("NFC", part).lower().split())):
                pieces = self._words.get(word)
                if pieces is None:
                    if len(self._words) >= _MAX_CACHED_WORDS:  # a long session types many half-words
                        self._words.clear()
                    pieces = self._words[word] = self._merge("".join(self._byte_symbols[b] for b in word.encode()))
                out.extend(pieces)
        return out

    def measure(self, prompt: str, emphasis: str = "Original", negative: bool = False) -> PromptLength:
        """Tokens and chunks of a prompt read with A1111's syntax (weights, BREAK, 75-token chunks), or
        with emphasis "None" as plain text, brackets and BREAK counted as words, as the backend reads it.
        A prompt that changes between steps (`[a:b:5]`, `[a|b]`) or has AND parts (not in a negative
        prompt) counts its longest variant, as A1111's counter does: each is encoded on its own."""
        parts = [prompt] if negative else [text for text, _ in split_and(prompt)]
        texts = dict.fromkeys(text for part in parts for text in schedule_prompt(part, COUNT_STEPS).texts)
        return max((self._measure_one(text, emphasis) for text in texts), key=lambda length: length.tokens)

    def _measure_one(self, prompt: str, emphasis: str) -> PromptLength:
        # Packing needs ids only to find commas: 1 for a comma, 0 for the rest, and an embedding's
        # vectors as one group (the packer keeps a group in one chunk).
        def comma_ids(text: str) -> list[int | tuple[int, ...]]:
            ids: list[int | tuple[int, ...]] = []
            parts = self._embedding_names.split(text) if self._embedding_names else [text]
            for index, part in enumerate(parts):
                if index % 2:  # split() puts each embedding name at an odd index
                    vectors = self._embeddings[part]
                    ids.append((0,) * vectors if vectors > 1 else 0)
                else:
                    ids.extend(int(token == _COMMA) for token in self.tokens(part))
            return ids

        chunks = pack_prompt(prompt_pieces(prompt, emphasis), comma_ids, CHUNK_TOKENS, 1)
        return PromptLength(sum(len(chunk.ids) for chunk in chunks), len(chunks))

    def _merge(self, symbols: str) -> tuple[str, ...]:
        """Merge the word's adjacent pair of lowest rank, every occurrence of it, until none is known."""
        never = len(self._ranks)
        word = [*symbols[:-1], symbols[-1] + _END_OF_WORD]
        while len(word) > 1:
            pairs = zip(word, word[1:], strict=False)
            rank, first, second = min((self._ranks.get(pair, never), *pair) for pair in pairs)
            if rank == never:
                break
            merged: list[str] = []
            index = 0
            while index < len(word):
                if word[index] == first and index + 1 < len(word) and word[index + 1] == second:
                    merged.append(first + second)
                    index += 2
                else:
                    merged.append(word[index])
                    index += 1
            word = merged
        return tuple(word)


def _words(text: str) -> list[str]:
    words: list[str] = []
    for word in _WORDS.findall(text):
        if word.isalnum() and not word.isalpha() and not word.isdecimal():
            words.extend(_split_numbers(word))
        else:
            words.append(word)
    return words


def _split_numbers(word: str) -> list[str]:
    """Letters and numbers such as "x²": runs of letters stay whole, each number is a word."""
    parts: list[str] = []
    letters = ""
    for char in word:
        if char.isnumeric():
            parts += [letters, char] if letters else [char]
            letters = ""
        else:
            letters += char
    return parts + [letters] if letters else parts


def _byte_symbols() -> list[str]:
    """Byte-level BPE's table: each of the 256 bytes as a printable character. Printable Latin-1 bytes
    stand for themselves; the others (controls, space) take the characters from 256 up, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]
