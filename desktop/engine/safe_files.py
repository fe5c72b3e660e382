"""Reading a file Marble did not write: only a regular file, of a sane size, and JSON of a sane depth.

Every file read from a model folder, the library, the settings or an image path goes through
`open_regular`, so a name that is really a FIFO (an open would wait forever), a device such as
`/dev/zero` behind a symlink (a read would never end) or a socket is refused with a sentence instead.
The open itself never blocks: it is non-blocking, and the kind of file is judged from the open
descriptor (`fstat`), so a file swapped between a check and the open cannot slip through.
JSON is checked for nesting before it is parsed: Python's parser recurses per level, and a
200,000-level document would end in a RecursionError instead of a message.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any, BinaryIO

import numpy as np

from desktop.engine.errors import MarbleError, ModelError

StrPath = str | os.PathLike[str]

# Configs, indexes and settings are kilobytes; 16 MB is far past any real one and still cheap to read.
MAX_JSON_BYTES = 16 * 1024 * 1024
# Real configs nest a handful of levels; ComfyUI graphs in images about ten.
MAX_JSON_DEPTH = 64

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = np.zeros(256, dtype=np.int8)
_OPENERS[list(b"[{")] = 1
_OPENERS[list(b"]}")] = -1
_DEPTH_CHUNK = 1 << 20


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def open_regular(
    path: StrPath,
    *,
    label: str | None = None,
    max_bytes: int | None = None,
    error: type[MarbleError] = ModelError,
    missing_ok: bool = False,
) -> BinaryIO | None:
    """Open `path` for binary reading if it is a regular file of at most `max_bytes` (None: any size).

    Anything else raises `error` with a sentence naming `label` (default: the file's name). A missing
    file returns None when `missing_ok`, otherwise raises `error` too. Symlinks are followed: what
    counts is the file they lead to.
    """
    label = label or os.path.basename(os.fspath(path)) or os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise error(f"Cannot read {label}: it does not exist.") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"Cannot read {label}: {reason}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"Cannot read {label}: it is {_kind(info.st_mode)}, not an ordinary file.")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(
                f"Cannot read {label}: it is {info.st_size:,} bytes, more than the {max_bytes:,} such a file "
                "can sensibly be."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(
    path: StrPath,
    *,
    max_bytes: int,
    label: str | None = None,
    error: type[MarbleError] = ModelError,
    missing_ok: bool = False,
) -> bytes | None:
    """The whole content of a regular file of at most `max_bytes` (checked again while reading, for a
    file that grows); None for a missing file when `missing_ok`."""
    label = label or os.path.basename(os.fspath(path))
    stream = open_regular(path, label=label, max_bytes=max_bytes, error=error, missing_ok=missing_ok)
    if stream is None:
        return None
    try:
        with stream:
            data = stream.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"Cannot read {label}: {exc.strerror or exc}.") from None
    if len(data) > max_bytes:
        raise error(f"Cannot read {label}: it is larger than the {max_bytes:,} bytes such a file can sensibly be.")
    return data


def json_depth_exceeds(data: bytes | str, max_depth: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than `max_depth` (malformed text may also say yes).

    Strings are removed first (brackets inside them do not count), then the brackets are counted in
    numpy chunks: linear time, no recursion, whatever the input.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= max_depth:
        return False
    depth = 0
    for start in range(0, len(brackets), _DEPTH_CHUNK):
        steps = _OPENERS[np.frombuffer(brackets, dtype=np.uint8, count=min(_DEPTH_CHUNK, len(brackets) - start),
                                       offset=start)].astype(np.int64)
        levels = np.cumsum(steps) + depth
        if levels.max() > max_depth:
            return True
        depth = int(levels[-1])
    return False


def loads_json(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with the nesting checked first; every failure is a ValueError (never RecursionError)."""
    if json_depth_exceeds(data, max_depth):
        raise ValueError(f"it nests more than {max_depth} levels deep")
    try:
        return json.loads(data)
    except RecursionError:  # cannot happen after the check; kept so no caller ever sees one
        raise ValueError(f"it nests more than {max_depth} levels deep") from None


def read_json_file(
    path: StrPath,
    *,
    label: str | None = None,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    error: type[MarbleError] = ModelError,
    missing_ok: bool = False,
) -> Any:
    """A JSON document from a regular file of sane size and depth; None for a missing file when
    `missing_ok`. Unreadable, oversized, non-UTF-8 or invalid JSON raises `error`."""
    label = label or os.path.basename(os.fspath(path))
    raw = read_regular_bytes(path, max_bytes=max_bytes, label=label, error=error, missing_ok=missing_ok)
    if raw is None:
        return None
    try:
        return loads_json(raw.decode("utf-8"), max_depth=max_depth)
    except UnicodeDecodeError as exc:
        raise error(f"{label} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except ValueError as exc:
        raise error(f"{label} is not valid JSON ({exc}).") from None
