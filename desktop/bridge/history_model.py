"""A lazy Qt list model over the history database, with thumbnails made on a thread pool.

Stays smooth with tens of thousands of images: rows are fetched a page at a time as the view scrolls
(`canFetchMore`/`fetchMore`), a page is one indexed SQLite query (about a millisecond), and thumbnails
are made, cached on disk and decoded on pool threads. The GUI thread only turns finished QImages
into pixmaps. Only what the view asks for is ever loaded, and thumbnail requests are served newest
first, so the rows on screen come before the ones scrolled past.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    QThreadPool,
    Signal,
    Slot,
)
from PySide6.QtGui import QImage, QImageReader, QPixmap

from desktop.engine.errors import MarbleError
from desktop.engine.history import (
    HistoryQuery,
    HistoryStore,
    ImageRecord,
    ReconcileReport,
    explain_database_error,
    make_thumbnail,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 200
ICON_SIZE = 128
# Thumbnails kept as pixmaps: a few screens' worth; the rest is on disk and comes back in milliseconds.
PIXMAP_CACHE = 1500
# Requests waiting for a pool thread; older ones (scrolled past) are dropped and asked again if seen.
MAX_WAITING = 300

RecordRole = Qt.ItemDataRole.UserRole + 1
IdRole = Qt.ItemDataRole.UserRole + 2
PathRole = Qt.ItemDataRole.UserRole + 3

Index = QModelIndex | QPersistentModelIndex


class _Relay(QObject):
    """Carries pool results to the GUI thread.

    Signals:
        thumbnail_loaded(int, QImage): an image id and its thumbnail (null when unreadable).
        reconciled(object): a ReconcileReport, or an error text.
    """

    thumbnail_loaded = Signal(int, QImage)
    reconciled = Signal(object)


class _ThumbnailQueue:
    """Thread-safe, last in first out, bounded: what the view asked for most recently goes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[int, str, str]] = deque()
        self.workers = 0

    def push(self, item: tuple[int, str, str]) -> list[int]:
        with self._lock:
            self._items.append(item)
            dropped = []
            while len(self._items) > MAX_WAITING:
                dropped.append(self._items.popleft()[0])
            return dropped

    def pop(self) -> tuple[int, str, str] | None:
        with self._lock:
            if self._items:
                return self._items.pop()
            self.workers -= 1
            return None

    def claim_worker(self, limit: int) -> bool:
        with self._lock:
            if self.workers >= limit or not self._items:
                return False
            self.workers += 1
            return True


class HistoryModel(QAbstractListModel):
    """The images of one HistoryQuery, newest first by default. Lives on the GUI thread.

    Signals:
        query_changed(int): the rows were reloaded for a new query; the total count of matches.
        reconciled(object): the start-up check against the image folder ended (a ReconcileReport,
            or a str saying why it could not run).
    """

    query_changed = Signal(int)
    reconciled = Signal(object)

    def __init__(
        self,
        store: HistoryStore,
        pool: QThreadPool | None = None,
        icon_size: int = ICON_SIZE,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._store = store
        self._pool = pool if pool is not None else QThreadPool.globalInstance()
        self._icon_size = icon_size
        self._query = HistoryQuery()
        self._records: list[ImageRecord] = []
        self._row_of: dict[int, int] = {}
        self._total = 0
        self._pixmaps: OrderedDict[int, QPixmap | None] = OrderedDict()
        self._requested: set[int] = set()
        self._queue = _ThumbnailQueue()
        # Unparented and referenced by the pool tasks, so it outlives a model deleted mid-task.
        self._relay = _Relay()
        self._relay.thumbnail_loaded.connect(self._on_thumbnail_loaded)
        self._relay.reconciled.connect(self._on_reconciled)
        self._reload()

    # ------------------------------------------------------------------------------ Qt overrides

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._records)

    def canFetchMore(self, parent: Index = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and len(self._records) < self._total

    def fetchMore(self, parent: Index = QModelIndex()) -> None:  # noqa: B008
        if parent.isValid():
            return
        self._append(PAGE_SIZE)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        if not index.isValid() or not 0 <= index.row() < len(self._records):
            return None
        record = self._records[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return caption(record)
        if role == Qt.ItemDataRole.DecorationRole:
            return self._pixmap(record)
        if role == Qt.ItemDataRole.ToolTipRole:
            # Plain text, escaped: a prompt from a downloaded file must never render as HTML.
            return Qt.convertFromPlainText(record.prompt[:500] + (f"\n\n{record.path}" if record.path else ""))
        if role == RecordRole:
            return record
        if role == IdRole:
            return record.id
        if role == PathRole:
            return record.path
        return None

    # ----------------------------------------------------------------------------------- public

    @property
    def store(self) -> HistoryStore:
        return self._store

    @property
    def query(self) -> HistoryQuery:
        return self._query

    @property
    def total(self) -> int:
        return self._total

    def set_query(self, query: HistoryQuery) -> None:
        self._query = query
        self._reload()

    def refresh(self) -> None:
        """Reload after the database changed (a new image, a delete): cheap, one count and one page."""
        self._reload()

    def fetch_all(self) -> None:
        """Load every remaining row in one query (End in the grid: the user asked for the oldest)."""
        if self.canFetchMore():
            self._append(self._total - len(self._records))

    def record_at(self, row: int) -> ImageRecord | None:
        return self._records[row] if 0 <= row < len(self._records) else None

    def row_of(self, image_id: int) -> int:
        return self._row_of.get(image_id, -1)

    def update_record(self, image_id: int) -> None:
        """Re-read one record (favourite toggled) without reloading the list."""
        row = self.row_of(image_id)
        record = self._safe(lambda: self._store.get(image_id), None)
        if row < 0 or record is None:
            return
        self._records[row] = record
        index = self.index(row)
        self.dataChanged.emit(index, index)

    def reconcile_in_background(self) -> None:
        """Check the database against the image folder on the pool; `reconciled` says when done."""
        store, relay = self._store, self._relay

        def run() -> None:
            try:
                result: object = store.reconcile()
            except sqlite3.Error as error:
                result = explain_database_error(store.db_path, error, store.library)
            except (MarbleError, OSError) as error:
                result = f"The history could not be checked against the image folder: {error}"
            finally:
                store.close()  # this pool thread's connection: pool threads come and go
            relay.reconciled.emit(result)

        self._pool.start(run)

    def thumbnails_waiting(self) -> int:
        return len(self._requested)

    def wait_for_background(self, msecs: int = 5000) -> bool:
        """Wait for thumbnails and the folder check (tests and shutdown; never mid-session)."""
        return self._pool.waitForDone(msecs)

    # ---------------------------------------------------------------------------------- private

    def _reload(self) -> None:
        self.beginResetModel()
        self._records = []
        self._row_of = {}
        self._total = self._safe(lambda: self._store.count(self._query), 0)
        self.endResetModel()
        # The first page now, so a view shows rows at once; the rest as it scrolls.
        if self.canFetchMore():
            self.fetchMore()
        self.query_changed.emit(self._total)

    def _append(self, limit: int) -> None:
        first = len(self._records)
        records = self._safe(lambda: self._store.query(self._query, limit, first), [])
        if not records:
            self._total = first  # the database shrank under us: stop asking
            return
        self.beginInsertRows(QModelIndex(), first, first + len(records) - 1)
        for offset, record in enumerate(records):
            self._row_of[record.id] = first + offset
        self._records.extend(records)
        self.endInsertRows()

    def _safe(self, read: Callable[[], object], fallback: object) -> object:  # type: ignore[type-arg]
        try:
            return read()
        except sqlite3.Error as error:
            log.warning("history database: %s", error)
            return fallback

    def _pixmap(self, record: ImageRecord) -> QPixmap | None:
        if record.id in self._pixmaps:
            self._pixmaps.move_to_end(record.id)
            return self._pixmaps[record.id]
        if record.missing or record.id in self._requested:
            return None
        source = record.trash_path if record.trashed and record.trash_path else record.path
        target = record.thumbnail or str(self._store.thumbnail_path(record.id))
        self._requested.add(record.id)
        for dropped in self._queue.push((record.id, source, target)):
            self._requested.discard(dropped)
        self._start_workers()
        return None

    def _start_workers(self) -> None:
        queue, relay, size = self._queue, self._relay, self._icon_size
        limit = max(1, min(2, self._pool.maxThreadCount()))
        while queue.claim_worker(limit):

            def drain() -> None:
                while (item := queue.pop()) is not None:
                    image_id, source, target = item
                    image = _load_thumbnail(source, target, size)
                    try:
                        relay.thumbnail_loaded.emit(image_id, image)
                    except RuntimeError:  # the relay died with the app at exit: nobody is waiting
                        return

            self._pool.start(drain)

    @Slot(int, QImage)
    def _on_thumbnail_loaded(self, image_id: int, image: QImage) -> None:
        self._requested.discard(image_id)
        self._pixmaps[image_id] = None if image.isNull() else QPixmap.fromImage(image)
        while len(self._pixmaps) > PIXMAP_CACHE:
            self._pixmaps.popitem(last=False)
        row = self.row_of(image_id)
        if row >= 0:
            index = self.index(row)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    @Slot(object)
    def _on_reconciled(self, result: object) -> None:
        if isinstance(result, ReconcileReport) and (result.indexed or result.marked_missing or result.found_again):
            self.refresh()
        self.reconciled.emit(result)


def caption(record: ImageRecord) -> str:
    """Two lines that tell images apart at a glance: when, then seed and model (a batch shares the rest)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
    seed = f"seed {record.seed}" if record.seed is not None else Path(record.path).name
    return f"{when}\n{seed} · {record.model}" if record.model else f"{when}\n{seed}"


def _load_thumbnail(source: str, target: str, size: int) -> QImage:
    """On a pool thread: make (or reuse) the cached thumbnail file and decode it."""
    try:
        path = make_thumbnail(source, target)
    except (MarbleError, OSError) as error:
        log.info("no thumbnail for %s: %s", source, error)
        return QImage()
    reader = QImageReader(str(path))
    image = reader.read()
    if image.isNull():
        return image
    return image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
