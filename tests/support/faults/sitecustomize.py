"""Fault injection for a real `python -m desktop ...` child process (tests only).

Put this folder first on PYTHONPATH and set MARBLE_TEST_FAULT to `ACTION:POINT:N`; Python imports this
module at start-up, before the command line runs, and wraps the engine at these points:

  step     after the Nth denoising step was reported
  half     with half of the Nth PNG's bytes written (and flushed) wherever the writer writes them
  partial  after the Nth PNG's bytes are in its hidden temp file, before the rename
  png      after the Nth PNG was renamed into place, before its history row
  row      after the Nth image's history row was committed
  now      at start-up (with `full`: a disk that is full before the command runs; N is ignored)

ACTION `kill` sends the process SIGKILL there (a crash, a power cut for everything but the page cache);
ACTION `full` makes the disk full from there on: every later PNG write in the output folder fails with
ENOSPC and every history transaction with SQLite's "database or disk is full" (reads still work, as on a
real full disk). The rescue folder counts as another disk and keeps working.

MARBLE_TEST_BARRIER=FOLDER:N lines up N processes right before the first-start demo install.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sqlite3
from collections.abc import Callable

POINTS = ("step", "half", "partial", "png", "row", "now")


def _install(action: str, point: str, nth: int) -> None:
    from desktop.engine import outputs
    from desktop.engine.events import StepProgress
    from desktop.engine.history.database import Database
    from desktop.engine.history.store import HistoryStore
    from desktop.engine.runner import JobRunner

    counts = dict.fromkeys(POINTS, 0)
    full = [action == "full" and point == "now"]

    def reached(name: str) -> None:
        counts[name] += 1
        if name != point or counts[name] != nth:
            return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        full[0] = True

    real_run = JobRunner.run

    def run(self: JobRunner, job: object, emit: Callable[[object], None]) -> object:
        def counting_emit(event: object) -> None:
            emit(event)
            if isinstance(event, StepProgress):
                reached("step")

        return real_run(self, job, counting_emit)  # type: ignore[arg-type]

    real_write_atomically = outputs.write_atomically

    def write_atomically(path, write):  # type: ignore[no-untyped-def]
        def writing(stream):  # type: ignore[no-untyped-def]
            if full[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if path.suffix == ".png" and point == "half":
                # The encoder's bytes in two writes, so a kill can land between them: a real writer
                # stopped half way, whatever file it writes into.
                buffer = io.BytesIO()
                write(buffer)
                data = buffer.getvalue()
                stream.write(data[: len(data) // 2])
                stream.flush()
                reached("half")
                stream.write(data[len(data) // 2 :])
            else:
                write(stream)
            if path.suffix == ".png":
                stream.flush()
                reached("partial")

        real_write_atomically(path, writing)

    real_save = outputs.ImageWriter.save

    def save(self, image, text_chunks, seed, *rest):  # type: ignore[no-untyped-def]
        path = real_save(self, image, text_chunks, seed, *rest)
        reached("png")
        return path

    real_transaction = Database.transaction

    def transaction(self):  # type: ignore[no-untyped-def]
        if full[0]:
            raise sqlite3.OperationalError("database or disk is full")
        return real_transaction(self)

    real_record = HistoryStore.record_image

    def record_image(self, image):  # type: ignore[no-untyped-def]
        record = real_record(self, image)
        reached("row")
        return record

    JobRunner.run = run  # type: ignore[method-assign]
    outputs.write_atomically = write_atomically
    outputs.ImageWriter.save = save  # type: ignore[method-assign]
    Database.transaction = transaction  # type: ignore[method-assign]
    HistoryStore.record_image = record_image  # type: ignore[method-assign]


def _install_barrier(spec: str) -> None:
    """MARBLE_TEST_BARRIER=FOLDER:N: each process waits, right before it looks at the demo model, until N
    processes have arrived, so "started at once" means at once and not a few hundred ms apart."""
    import time
    from pathlib import Path

    from desktop.engine.library import demo

    folder, count = Path(spec.rsplit(":", 1)[0]), int(spec.rsplit(":", 1)[1])
    real_stamp = demo.shipped_stamp

    def shipped_stamp(source):  # type: ignore[no-untyped-def]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return real_stamp(source)

    demo.shipped_stamp = shipped_stamp


def install_from_environment() -> None:
    """Install what MARBLE_TEST_BARRIER and MARBLE_TEST_FAULT ask for: at start-up, or in a child forked by
    tests/support/forked_cli.py once it has its environment."""
    if os.environ.get("MARBLE_TEST_BARRIER"):
        _install_barrier(os.environ["MARBLE_TEST_BARRIER"])
    spec = os.environ.get("MARBLE_TEST_FAULT", "")
    if spec:
        action, point, nth = spec.split(":")
        if action not in ("kill", "full") or point not in POINTS:
            raise SystemExit(f"MARBLE_TEST_FAULT={spec!r}: expected kill|full:{'|'.join(POINTS)}:N")
        _install(action, point, int(nth))


install_from_environment()
