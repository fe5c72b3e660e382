"""A1111's prompt syntax: emphasis weights, BREAK, and prompts longer than one 75-token chunk.

Pure Python, no tokenizer: `parse_prompt` turns text into weighted pieces and `pack_chunks` packs
token ids into chunks; the diffusers backend tokenizes the pieces and encodes the chunks. A prompt
copied from an A1111 PNG (or written by us into one) then means here what it meant there:

- `(word)` multiplies the attention to `word` by 1.1, `((word))` by 1.21, `[word]` divides it by 1.1,
  and `(word:1.5)` sets 1.5 (a number only works with round brackets); nested brackets multiply.
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters. A bracket left open applies to the
  rest of the prompt; a closing bracket with nothing to close is text.
- `BREAK` (capitals, a word of its own) ends the current chunk: what follows starts a fresh one.
- A prompt is encoded in chunks of 75 tokens, each read by the text encoder on its own and then
  joined, so words past the 75th count. A full chunk is cut after its last comma when that comma
  is among its last 20 tokens, so a phrase is not split between two chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

EMPHASIS = 1.1
COMMA_BACKTRACK = 20  # tokens: A1111's default "comma padding backtrack"
# Far past any useful emphasis; keeps 20,000 nested brackets or a 400-digit weight from reaching the
# encoder as infinity (and infinity times a zero weight as NaN).
MAX_WEIGHT = 1000.0
# Brackets nested deeper than this are plain text. Each closing bracket rescales every piece since its
# opening, so depth bounds the work per piece: 20,000 nested brackets otherwise took a minute (fuzz).
MAX_NESTING = 64

_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")
_ESCAPABLE = "()[]\\"


@dataclass(frozen=True)
class PromptPiece:
    """A run of prompt text and its attention weight; `is_break` marks a BREAK (text empty)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


@dataclass(frozen=True)
class Chunk:
    """Up to one chunk's worth of token ids (no start, end or padding tokens) and their weights."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


def parse_prompt(text: str) -> tuple[PromptPiece, ...]:
    """The prompt's pieces, neighbours of equal weight merged; one empty piece for an empty prompt."""
    pieces: list[list] = []  # [text, weight]: weights change as brackets close
    round_opens: list[int] = []  # index in `pieces` where each open bracket began
    square_opens: list[int] = []
    ignored = {"(": 0, "[": 0}  # brackets past MAX_NESTING still open, kept as text
    plain: list[str] = []

    def flush() -> None:
        if plain:
            pieces.append(["".join(plain), 1.0])
            plain.clear()

    def scale(start: int, factor: float) -> None:
        factor = _bounded(factor)
        for piece in pieces[start:]:
            piece[1] = _bounded(piece[1] * factor)

    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in _ESCAPABLE:
            plain.append(text[index + 1])
            index += 2
            continue
        in_ignored = ignored["("] > 0
        weight = _EXPLICIT_WEIGHT.match(text, index) if char == ":" and round_opens and not in_ignored else None
        if weight is not None:
            flush()
            scale(round_opens.pop(), float(weight.group(1)))
            index = weight.end()
            continue
        opens = round_opens if char == "(" else square_opens
        if char in "([" and (len(opens) >= MAX_NESTING or ignored[char]):
            ignored[char] += 1
            plain.append(char)
        elif char in ")]" and ignored["(" if char == ")" else "["]:
            ignored["(" if char == ")" else "["] -= 1
            plain.append(char)
        elif char in "([":
            flush()
            opens.append(len(pieces))
        elif char == ")" and round_opens:
            flush()
            scale(round_opens.pop(), EMPHASIS)
        elif char == "]" and square_opens:
            flush()
            scale(square_opens.pop(), 1 / EMPHASIS)
        else:
            plain.append(char)
        index += 1
    flush()
    for start in round_opens:
        scale(start, EMPHASIS)
    for start in square_opens:
        scale(start, 1 / EMPHASIS)
    return _merge(_split_breaks(pieces))


def _bounded(weight: float) -> float:
    return max(-MAX_WEIGHT, min(MAX_WEIGHT, weight))


def prompt_pieces(text: str, emphasis: str = "Original") -> tuple[PromptPiece, ...]:
    """The pieces a prompt is encoded as under one of A1111's emphasis modes (request.EMPHASIS_MODES):
    with "None", brackets, weights and BREAK are plain text, one piece of weight 1."""
    return (PromptPiece(text),) if emphasis == "None" else parse_prompt(text)


def needs_chunked_encoding(pieces: Sequence[PromptPiece]) -> bool:
    """Whether anything but plain text is in the prompt (a weight or a BREAK)."""
    return any(piece.is_break or piece.weight != 1.0 for piece in pieces)


def pack_chunks(
    tokens: Sequence[tuple[Sequence[int | tuple[int, ...]], float] | None], size: int, comma_id: int | None
) -> tuple[Chunk, ...]:
    """Pack each piece's token ids (None for a BREAK) into chunks of at most `size` tokens.

    A tuple among a piece's ids is one embedding's vectors: as A1111 does, it is not split across
    chunks but starts a new chunk when it does not fit in the current one (one longer than a chunk
    still spills over). Always at least one chunk; a BREAK closes the current chunk even when it is
    empty."""
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        chunks.append(Chunk(tuple(ids), tuple(weights)))
        ids, weights, last_comma = [], [], -1

    def close_full() -> None:
        # A full chunk ends at its last comma when that comma is near the end (A1111's backtrack).
        nonlocal ids, weights
        if last_comma >= 0 and size - (last_comma + 1) < COMMA_BACKTRACK:
            carried, carried_weights = ids[last_comma + 1 :], weights[last_comma + 1 :]
            ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
            close()
            ids, weights = carried, carried_weights
        else:
            close()

    for piece in tokens:
        if piece is None:
            close()
            continue
        piece_ids, weight = piece
        for item in piece_ids:
            group = item if isinstance(item, tuple) else (item,)
            if len(group) > 1:
                if len(ids) == size:
                    close_full()
                if ids and len(ids) + len(group) > size:
                    close()
            for token in group:
                if len(ids) == size:
                    # As A1111: a comma arriving at a full chunk starts the next one; only another
                    # token makes the chunk end at its last comma.
                    if token == comma_id:
                        close()
                    else:
                        close_full()
                if token == comma_id:
                    last_comma = len(ids)
                ids.append(token)
                weights.append(weight)
    if ids or not chunks:
        close()
    return tuple(chunks)


def pack_prompt(
    pieces: Sequence[PromptPiece],
    tokenize: Callable[[str], Sequence[int | tuple[int, ...]]],
    size: int,
    comma_id: int | None,
) -> tuple[Chunk, ...]:
    """`pack_chunks` of parsed pieces, each piece's text turned into ids (tuples for embeddings) by
    `tokenize`."""
    return pack_chunks([None if p.is_break else (tokenize(p.text), p.weight) for p in pieces], size, comma_id)


def embedding_words(names: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern finding embedding names in a prompt as A1111 does: each name exactly, as a word of
    its own (no letter, digit, `_` or `-` on either side), the longest name first where two start
    together; None for no names. The one rule the backend (which embeddings to load) and the token
    counter (which words are vectors) share."""
    ordered = sorted(set(names), key=len, reverse=True)
    if not ordered:
        return None
    return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, ordered)) + r")(?![\w-])")


def _split_breaks(pieces: list[list]) -> list[PromptPiece]:
    out: list[PromptPiece] = []
    for text, weight in pieces:
        parts = _BREAK.split(text)
        for number, part in enumerate(parts):
            if number:
                out.append(PromptPiece("", 1.0, is_break=True))
            if part:
                out.append(PromptPiece(part, weight))
    return out


def _merge(pieces: list[PromptPiece]) -> tuple[PromptPiece, ...]:
    merged: list[PromptPiece] = []
    for piece in pieces:
        if merged and not piece.is_break and not merged[-1].is_break and merged[-1].weight == piece.weight:
            merged[-1] = PromptPiece(merged[-1].text + piece.text, piece.weight)
        else:
            merged.append(piece)
    return tuple(merged) or (PromptPiece(""),)
