"""An exclusive lock between processes, held on a file: for work that two Marble processes started at
once (the window and a `marble` command, or several commands) must not do side by side.

The operating system drops the lock when its process ends, however it ends (a SIGKILL included), so a
crashed holder never leaves the others waiting for ever.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from desktop.engine.errors import StorageError

POLL_S = 0.05


@contextmanager
def exclusive_lock(path: Path, timeout_s: float = 600.0, what: str = "this work") -> Iterator[None]:
    """Hold the lock on `path` (created if missing) while the block runs; waits up to `timeout_s` for
    another process to finish, then raises StorageError naming `what`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(handle):
            if time.monotonic() > deadline:
                raise StorageError(
                    f"Another Marble process has been busy with {what} for over {timeout_s:.0f} s "
                    f"(it holds {path}). Wait for it to finish, or close it, and try again."
                )
            time.sleep(POLL_S)
        try:
            yield
        finally:
            _unlock(handle)


if os.name == "nt":  # pragma: no cover - Windows only
    import msvcrt

    def _try_lock(handle: BinaryIO) -> bool:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(handle: BinaryIO) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: BinaryIO) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(handle: BinaryIO) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
