"""A1111's prompt editing, alternation and AND: which plain prompt conditions each step.

Pure Python, no tokenizer. This runs before `prompt_syntax`: its output is prompt text that may still
hold weights, BREAK and escapes, read by `prompt_syntax` as usual.

- `[a:b:when]` is `a` up to step `when`, then `b`; `[a:when]` adds `a` after step `when`; `[a::when]`
  removes `a` after it. `when` with a decimal point is a fraction of the steps (0.5, 1.0), a whole
  number is a step number (A1111 1.6+; before it, any number under 1 was a fraction: the two agree
  except on decimals of 1 or more). Clamped to the steps, cut to a whole step.
- `[a|b|c]` alternates every step: a, b, c, a, ...
- Both nest (`[[a|b]:c:5]`), and A1111's other brackets pass through as text for `prompt_syntax`.
  A bracket that forms neither (`[a:b]`, `[a:b:c:d]`) is plain text, as in A1111.
- `a :1.2 AND b :0.8` is composable diffusion: each sub-prompt is scheduled on its own and the noise
  prediction is `uncond + cfg * sum(w_i * (cond_i - uncond))`. A trailing `:weight` counts even without
  AND (A1111 reads it the same way); the negative prompt has no AND.

A schedule is A1111's: the distinct prompts, each with the step it ends at. Like A1111's sampler, the
model call with 0-based index `i` uses the first entry ending at or after `i` (`ScheduledPrompt.at`),
so `[a:b:2]` is `a` for three calls, then `b`; and `[a|b]` is a, a, b, a, b, ... -- A1111's own counting,
kept so a copied prompt makes the same image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.DOTALL)
_NUMBER = re.compile(r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")
# A prompt nesting brackets deeper than this schedules nothing (it is all text here, while
# prompt_syntax still reads its emphasis): a pasted wall of brackets cannot exhaust time or the stack.
MAX_DEPTH = 64


@dataclass(frozen=True)
class ScheduledPrompt:
    """A prompt's schedule: (last step, text) pairs, ascending; the last ends at the step count."""

    entries: tuple[tuple[int, str], ...]

    def at(self, index: int) -> str:
        """The text for model call `index` (0-based), by A1111's rule (see the module's docstring)."""
        for end, text in self.entries:
            if index <= end:
                return text
        return self.entries[-1][1]

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(text for _, text in self.entries))


@dataclass(frozen=True)
class SubPrompt:
    """One AND part: its schedule and its weight in the composable sum."""

    schedule: ScheduledPrompt
    weight: float = 1.0


@dataclass(frozen=True)
class PromptPlan:
    """What conditions a generation, step by step: the positive AND parts and the negative prompt."""

    positive: tuple[SubPrompt, ...]
    negative: ScheduledPrompt

    @property
    def is_plain(self) -> bool:
        """One positive prompt of weight 1 and no change between steps: the ordinary path."""
        return (
            len(self.positive) == 1 and self.positive[0].weight == 1.0
            and len(self.positive[0].schedule.entries) == 1 and len(self.negative.entries) == 1
        )

    @property
    def texts(self) -> tuple[str, ...]:
        """Every distinct text any step uses, positive and negative (each is encoded once)."""
        return tuple(dict.fromkeys([t for part in self.positive for t in part.schedule.texts] + [*self.negative.texts]))


def plan_prompts(prompt: str, negative: str, steps: int) -> PromptPlan:
    parts = tuple(SubPrompt(schedule_prompt(text, steps), weight) for text, weight in split_and(prompt))
    return PromptPlan(parts, schedule_prompt(negative, steps))


def split_and(prompt: str) -> tuple[tuple[str, float], ...]:
    """The AND parts, each without its `:weight` (default 1)."""
    parts = []
    for part in _AND.split(prompt):
        match = _WEIGHT.match(part)
        assert match is not None  # every part of the pattern is optional
        text, weight = match.groups()
        # Without a weight the part stays as typed: a plain prompt must reach the encoder unchanged.
        parts.append((text, float(weight)) if weight is not None else (part, 1.0))
    return tuple(parts)


def per_step(schedule: ScheduledPrompt, calls: int) -> list[str]:
    """The text for each of `calls` model calls."""
    return [schedule.at(index) for index in range(calls)]


def schedule_prompt(prompt: str, steps: int) -> ScheduledPrompt:
    """A1111's schedule of one prompt (no AND) over `steps` steps."""
    steps = max(1, steps)
    nodes = _Parser(prompt).parse()
    ends = {steps}
    _collect_steps(nodes, steps, ends)
    entries: list[tuple[int, str]] = []
    for end in sorted(ends):
        text = _render(nodes, end, steps)
        if entries and entries[-1][1] == text:
            entries[-1] = (end, text)  # the same prompt twice in a row is one entry
        else:
            entries.append((end, text))
    return ScheduledPrompt(tuple(entries))


def has_schedule(prompt: str) -> bool:
    """Whether the prompt edits or alternates anything (AND aside)."""
    return _has_construct(_Parser(prompt).parse())


# Nodes: str (text), _Edit, _Alternate; a sequence is a list of nodes.
@dataclass(frozen=True)
class _Edit:
    before: tuple
    after: tuple
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple, ...]


class _Parser:
    """Recursive descent over A1111's schedule grammar; whatever forms no construct stays text."""

    def __init__(self, text: str) -> None:
        self._text = text
        # A bracket without a partner can form nothing, each bracket is parsed once, and never past its
        # partner: a failed bracket is re-read as text, and without these limits a wall of brackets took
        # exponential, then quadratic, time.
        self._closed, self._depth = _closed_brackets(text)
        self._parsed: dict[int, tuple[tuple, int] | None] = {}

    def parse(self) -> tuple:
        if self._depth > MAX_DEPTH:
            return (self._text,) if self._text else ()
        nodes, _ = self._sequence(0, "", 0, len(self._text))
        return nodes

    def _sequence(self, index: int, stops: str, depth: int, end: int) -> tuple[tuple, int]:
        """Nodes from `index` up to (not including) one of `stops` or `end`."""
        text = self._text
        nodes: list = []
        plain: list[str] = []
        while index < end:
            char = text[index]
            if char in stops:
                break
            if char == "\\" and index + 1 < end:
                plain.append(text[index : index + 2])  # an escape stays for prompt_syntax
                index += 2
                continue
            if char in "[(" and depth < MAX_DEPTH and index in self._closed:
                if index not in self._parsed:
                    bracket = self._bracket if char == "[" else self._round
                    self._parsed[index] = bracket(index, depth + 1)
                parsed = self._parsed[index]
                if parsed is not None:
                    inner, index = parsed
                    if plain:
                        nodes.append("".join(plain))
                        plain.clear()
                    nodes.extend(inner)
                    continue
            plain.append(char)
            index += 1
        if plain:
            nodes.append("".join(plain))
        return tuple(nodes), index

    def _round(self, index: int, depth: int) -> tuple[tuple, int] | None:
        # Emphasis: `(...)` may hold a `:` (its weight); constructs inside it still schedule.
        limit = self._closed[index] + 1
        inner, end = self._sequence(index + 1, ")", depth, limit)
        if end >= limit:
            return None
        return ("(", *inner, ")"), end + 1

    def _bracket(self, index: int, depth: int) -> tuple[tuple, int] | None:
        parts: list[tuple] = []
        separators: list[str] = []
        position = index + 1
        limit = self._closed[index] + 1
        while True:
            nodes, position = self._sequence(position, ":|]", depth, limit)
            parts.append(nodes)
            if position >= limit:
                return None
            char = self._text[position]
            position += 1
            if char == "]":
                break
            separators.append(char)
        if not separators:
            return ("[", *parts[0], "]"), position  # `[word]`: emphasis, for prompt_syntax
        if set(separators) == {"|"}:
            return (_Alternate(tuple(parts)),), position
        if separators in ([":"], [":", ":"]):
            number = _NUMBER.fullmatch("".join(parts[-1])) if all(isinstance(n, str) for n in parts[-1]) else None
            if number is None:
                return None
            before = parts[0] if len(parts) == 3 else ()
            return (_Edit(before, parts[-2], number.group(1)),), position
        return None


def _closed_brackets(text: str) -> tuple[dict[int, int], int]:
    """Each `[` or `(` that a later `]` or `)` closes -> where that partner is, escapes skipped; and
    the deepest nesting of brackets."""
    closed: dict[int, int] = {}
    opens: dict[str, list[int]] = {"[": [], "(": []}
    deepest = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char in opens:
            opens[char].append(index)
            deepest = max(deepest, len(opens["["]) + len(opens["("]))
        elif char in "])":
            stack = opens["[" if char == "]" else "("]
            if stack:
                closed[stack.pop()] = index
        index += 1
    return closed, deepest


def _when(edit: _Edit, steps: int) -> int:
    value = float(edit.when)
    if "." in edit.when:
        value *= steps
    return min(steps, int(value))


def _collect_steps(nodes: tuple, steps: int, ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            when = _when(node, steps)
            if when >= 1:
                ends.add(when)
            _collect_steps(node.before, steps, ends)
            _collect_steps(node.after, steps, ends)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, ends)


def _render(nodes: tuple, step: int, steps: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            out.append(_render(node.before if step <= _when(node, steps) else node.after, step, steps))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(out)


def _has_construct(nodes: tuple) -> bool:
    # Emphasis brackets are flattened into their sequence, so any construct is at the top level.
    return any(isinstance(node, (_Edit, _Alternate)) for node in nodes)
