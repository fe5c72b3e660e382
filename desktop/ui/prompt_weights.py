"""Ctrl+Up / Ctrl+Down in a prompt: raise or lower the A1111 weight of the selected words.

Pure text editing, no Qt, so it is tested on strings. As in A1111: with nothing selected, the word
under the cursor (or the weighted group the cursor is in) is the target; plain words become
`(words:1.1)`, a weighted group's number moves by the step, and a weight back at 1.0 loses its
brackets. The returned selection covers the words again, so presses repeat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STEP = 0.1
_WORD_DELIMITERS = set(" \t\n,.;:!?()[]{}<>|/\\\"'=`~")
_GROUP = re.compile(r"\(([^()]*?):\s*(-?(?:\d+\.?\d*|\.\d+))\s*\)")
_MAX_WEIGHT = 10.0


@dataclass(frozen=True)
class WeightEdit:
    """Replace `text[start:end]` with `replacement`; then select `selection_start:selection_end` of the
    result (the words, without brackets or weight)."""

    start: int
    end: int
    replacement: str
    selection_start: int
    selection_end: int

    def apply(self, text: str) -> str:
        return text[: self.start] + self.replacement + text[self.end :]


def adjust_weight(text: str, start: int, end: int, delta: float) -> WeightEdit | None:
    """The prompt with the target's weight moved by `delta`, or None when there is nothing to weigh."""
    start, end = sorted((max(0, start), min(len(text), end)))
    group = _group_around(text, start, end)
    if group is None:
        if start == end:
            start, end = _word_around(text, start)
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start == end:
            return None
        group = _group_around(text, start, end) or (start, end, start, end, 1.0)
    outer_start, outer_end, inner_start, inner_end, weight = group
    inner = text[inner_start:inner_end]
    weight = min(_MAX_WEIGHT, max(0.0, round(weight + delta, 2)))
    replacement = inner if weight == 1.0 else f"({inner}:{_format(weight)})"
    new_start = outer_start if weight == 1.0 else outer_start + 1
    return WeightEdit(outer_start, outer_end, replacement, new_start, new_start + len(inner))


def _group_around(text: str, start: int, end: int) -> tuple[int, int, int, int, float] | None:
    """(outer start, outer end, inner start, inner end, weight) of the `(inner:weight)` group that holds
    the span, if any."""
    for match in _GROUP.finditer(text):
        if match.start() <= start and end <= match.end():
            return match.start(), match.end(), match.start(1), match.end(1), float(match.group(2))
    return None


def _word_around(text: str, position: int) -> tuple[int, int]:
    start = end = position
    while start > 0 and text[start - 1] not in _WORD_DELIMITERS:
        start -= 1
    while end < len(text) and text[end] not in _WORD_DELIMITERS:
        end += 1
    return start, end


def _format(weight: float) -> str:
    text = f"{weight:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
