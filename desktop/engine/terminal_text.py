"""Text from files and libraries, made safe to print or to put in a message.

A prompt, a model's header metadata or a file name is data: printed raw, `ESC[2J` clears the user's
terminal, an OSC sequence retitles it, CR overwrites a line, U+202E reverses what follows. The command
line prints such text through `printable`, which shows every control character as an escape instead.
Messages quoting a library's own exception text use `library_text`, which drops terminal styling
(torch bolds parts of its refusals with ANSI codes) and control characters altogether.
"""

from __future__ import annotations

import re
import unicodedata

# Characters that change how the text around them is laid out: bidi embeddings, overrides and isolates,
# the marks, and the Unicode line/paragraph separators some terminals honour.
BIDI_AND_SEPARATORS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and other two-character escapes; C1 CSI too.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, screen clears
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC: window titles, hyperlinks
    r"|\x1b[@-Z\\-_]"  # the other two-character escapes
)


def is_unsafe_char(char: str) -> bool:
    """A control character (C0, DEL, C1), a bidi control or a line separator."""
    return unicodedata.category(char) == "Cc" or char in BIDI_AND_SEPARATORS or "\ud800" <= char <= "\udfff"


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, multiline: bool = False) -> str:
    """`text` with every unsafe character shown as a Python-style escape (`\\x1b`, `\\u202e`).

    With `multiline`, newlines (and tabs) are kept, for a prompt that spans lines; a CR never is.
    """
    value = str(text)
    if not any(is_unsafe_char(c) for c in value):
        return value
    kept = "\n\t" if multiline else ""
    return "".join(_escape(c) if is_unsafe_char(c) and c not in kept else c for c in value)


def library_text(text: object) -> str:
    """Another library's message made fit for ours: terminal styling removed, control characters and
    line breaks turned into single spaces."""
    value = _ANSI.sub("", str(text))
    cleaned = "".join(" " if is_unsafe_char(c) else c for c in value)
    return re.sub(r" {2,}", " ", cleaned).strip()


def library_error(error: BaseException, limit: int = 300) -> str:
    """The first line of another library's exception, made fit for ours (`library_text`) and cut to `limit`
    characters: what Marble's own message quotes after "does not load (...)" and the like. An exception without
    text is named by its class."""
    lines = str(error).strip().splitlines()
    return library_text(lines[0] if lines else type(error).__name__)[:limit]
