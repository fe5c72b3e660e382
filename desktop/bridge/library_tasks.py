"""Library work off the GUI thread: listing, hashing, importing (with progress and cancel), removing.

Every call returns at once and runs on this object's own QThreadPool; results come back as signals,
queued to the GUI thread because this object lives there. Never the generation thread: an import of a
7 GB checkpoint must not hold up a job, nor a job an import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QThreadPool, Signal

from desktop.engine.errors import Cancelled, MarbleError
from desktop.engine.library.index import KINDS, Library, guess_kind


class LibraryTasks(QObject):
    """Runs `Library` operations on a thread pool.

    Signals:
        records_listed(str, object): a kind and its records (a list of LibraryRecord).
        info_ready(object, object): a fully hashed LibraryRecord and its header metadata (a dict).
        import_progressed(int, int): bytes done and total of the running import (per mille on huge files).
        import_finished(object): the LibraryRecord of a finished import.
        import_cancelled(): the running import was cancelled; nothing was added.
        failed(str): an operation failed; the text says what happened and what to do.
        library_changed(str): a kind whose entries changed (import, remove, rename); its new
            records_listed follows.
    """

    records_listed = Signal(str, object)
    info_ready = Signal(object, object)
    import_progressed = Signal(int, int)
    import_finished = Signal(object)
    import_cancelled = Signal()
    failed = Signal(str)
    library_changed = Signal(str)

    def __init__(self, library: Library, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._library = library
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(2)
        self._cancel = threading.Event()
        self._importing = False

    @property
    def library(self) -> Library:
        return self._library

    @property
    def importing(self) -> bool:
        return self._importing

    def wait(self, msecs: int = 5000) -> bool:
        return self._pool.waitForDone(msecs)

    def shutdown(self, msecs: int = 30000) -> bool:
        """Cancel a running import and wait for the pool: call before the window goes away."""
        self._cancel.set()
        return self._pool.waitForDone(msecs)

    # --------------------------------------------------------------------------------- requests

    def list(self, kind: str) -> None:
        self._run(lambda: self.records_listed.emit(kind, self._library.records(kind)))

    def list_all(self) -> None:
        for kind in KINDS:
            self.list(kind)

    def info(self, kind: str, name: str) -> None:
        def work() -> None:
            record = self._library.info(kind, name)
            self.info_ready.emit(record, self._library.header_metadata(record))

        self._run(work)

    def import_path(self, path: str | Path, kind: str | None = None, convert_pickle: bool = False) -> bool:
        """Start an import; False when one is already running (one at a time keeps the disk sane)."""
        if self._importing:
            return False
        self._importing = True
        self._cancel.clear()

        def progress(done: int, total: int) -> None:
            # Signals carry C ints: scale huge files down to per mille.
            if total > 2**31 - 1:
                done, total = done * 1000 // total, 1000
            self.import_progressed.emit(done, total)

        def work() -> None:
            try:
                chosen = kind or guess_kind(path)
                record = self._library.import_path(
                    path, chosen, convert_pickle=convert_pickle, on_progress=progress,
                    should_cancel=self._cancel.is_set,
                )  # fmt: skip
            except Cancelled:
                self.import_cancelled.emit()
                return
            finally:
                self._importing = False
            self.import_finished.emit(record)
            self._changed(record.kind)

        self._run(work, reset_importing=True)
        return True

    def cancel_import(self) -> None:
        self._cancel.set()

    def remove(self, kind: str, name: str) -> None:
        def work() -> None:
            self._library.remove(kind, name)
            self._changed(kind)

        self._run(work)

    def rename(self, kind: str, name: str, new_name: str) -> None:
        def work() -> None:
            self._library.rename(kind, name, new_name)
            self._changed(kind)

        self._run(work)

    def choose_variant(self, name: str, variant: str) -> None:
        def work() -> None:
            self._library.choose_variant(name, variant)  # may hash a hand-copied file first: off the GUI thread
            self._changed("model")

        self._run(work)

    def choose_few_step(self, name: str, kind: str) -> None:
        def work() -> None:
            self._library.choose_few_step(name, kind)  # may hash a hand-copied file first: off the GUI thread
            self._changed("lora")

        self._run(work)

    # -------------------------------------------------------------------------------- internals

    def _changed(self, kind: str) -> None:
        # Listed again here, on the pool, so every view (dialog, parameter panel) gets one fresh list.
        self.library_changed.emit(kind)
        self.records_listed.emit(kind, self._library.records(kind))

    def _run(self, work: Callable[[], None], reset_importing: bool = False) -> None:
        def task() -> None:
            try:
                work()
            except MarbleError as error:
                self.failed.emit(str(error))
            except OSError as error:
                self.failed.emit(f"{error.strerror or error}: {error.filename or ''}".strip(": "))
            finally:
                if reset_importing:
                    self._importing = False

        self._pool.start(task)
