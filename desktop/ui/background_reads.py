"""The window's reads that are too slow for the GUI thread: the models folder scan, the tokenizer's
merges for the token counters, and the embeddings' vector counts. Each runs on the window's thread
pool and reports back by a signal, on the GUI thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QThreadPool, Signal

from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.embedding_vectors import vector_counts
from desktop.engine.library.native_size import (
    model_family,
    native_size,
    needs_components,
    reads_control_picture,
    reference_limit,
)
from desktop.engine.token_count import TokenCounter
from desktop.ui.translation import translate

log = logging.getLogger(__name__)


class _Relay(QObject):
    """Emitted from the pool's threads; the connections to `BackgroundReads` queue to the GUI thread.
    A separate object, so no signal is emitted on an object that is being destroyed."""

    scanned = Signal(int, object)  # a models scan's number and its _Scan
    token_counter_loaded = Signal(object)
    embedding_vectors_read = Signal(object)


@dataclass(frozen=True)
class _Scan:
    """What one models scan found, handed to the GUI thread whole."""

    names: list[str]
    sizes: dict[str, int]
    families: dict[str, str]
    error: str
    components: frozenset[str]
    references: dict[str, int]
    control_inputs: frozenset[str]
    demo_model: str | None


class BackgroundReads(QObject):
    """Starts the reads and re-emits their results on the GUI thread.

    Signals:
        models_listed(object, object, str): model names found (a list), their native sizes (a dict of
            name -> side in pixels, for the models that tell) and an error text ("" when none).
        families_listed(object): each model's family (a dict of name -> "sd1", "sd2", "sdxl", ...),
            emitted just before `models_listed` for the same scan.
        component_models_listed(object): the models that hold a transformer only and need a text-encoder
            folder (a frozenset of names), emitted with `families_listed`.
        reference_models_listed(object): the models that read reference images beside the prompt (a dict
            of name -> how many at most), emitted with `families_listed`.
        control_input_models_listed(object): the models that read a control picture through their own input
            (Flux.1 Canny / Depth dev; a frozenset of names), emitted with `families_listed`.
        demo_model_found(object): after each `models_listed`, the demo model's name in the library
            (it may have been renamed), or None when the library has none.
        token_counter_loaded(object): a `TokenCounter`, or None when its merges file is unreadable.
        embedding_vectors_read(object): the library's embeddings, a dict of name -> vectors.
    """

    models_listed = Signal(object, object, str)
    families_listed = Signal(object)
    component_models_listed = Signal(object)
    reference_models_listed = Signal(object)
    control_input_models_listed = Signal(object)
    demo_model_found = Signal(object)
    token_counter_loaded = Signal(object)
    embedding_vectors_read = Signal(object)

    def __init__(
        self,
        pool: QThreadPool,
        catalog: ModelCatalog,
        parent: QObject | None = None,
        demo_model: Callable[[], str | None] | None = None,
        chosen_variants: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        """`demo_model` names the library's demo model, `chosen_variants` the variants the user chose for its model
        files (Library.chosen_variants); both read the library index: off the GUI thread."""
        super().__init__(parent)
        self._pool = pool
        self._catalog = catalog
        self._demo_model = demo_model
        self._chosen_variants = chosen_variants
        self._embeddings_folder: Path | None = None
        # Scans may overlap (the library changes twice in a row): the latest started one's answer stands, and an
        # older one finishing after it is dropped, so a stale answer never replaces a newer one.
        self._scans_started = 0
        self._scan_shown = 0
        self._relay = _Relay(self)
        self._relay.scanned.connect(self._on_scanned)
        self._relay.token_counter_loaded.connect(self.token_counter_loaded)
        self._relay.embedding_vectors_read.connect(self.embedding_vectors_read)

    def scan_models(self) -> None:
        catalog, relay, demo_model = self._catalog, self._relay, self._demo_model
        chosen_variants = self._chosen_variants
        self._scans_started += 1
        number = self._scans_started

        def scan() -> None:
            variants = chosen_variants() if chosen_variants is not None else {}
            names, sizes, families, error = _scan(catalog, variants)
            found = _Scan(
                names, sizes, families, error,
                components=_component_models(catalog) if not error else frozenset(),
                references=_reference_models(catalog, variants) if not error else {},
                control_inputs=_control_input_models(catalog) if not error else frozenset(),
                demo_model=demo_model() if demo_model is not None else None,
            )  # fmt: skip
            relay.scanned.emit(number, found)

        self._pool.start(scan)

    def _on_scanned(self, number: int, found: _Scan) -> None:
        if number < self._scan_shown:
            return  # a later scan has answered already
        self._scan_shown = number
        self.families_listed.emit(found.families)
        self.component_models_listed.emit(found.components)
        self.reference_models_listed.emit(found.references)
        self.control_input_models_listed.emit(found.control_inputs)
        self.models_listed.emit(found.names, found.sizes, found.error)
        self.demo_model_found.emit(found.demo_model)

    def load_token_counter(self, merges_file: Path, embeddings_folder: Path | None = None) -> None:
        """Read the tokenizer's merges (~60 ms of Python). With the library's embeddings folder, an
        embedding's name counts as its vectors (headers only)."""
        relay = self._relay
        self._embeddings_folder = embeddings_folder
        self._pool.start(lambda: relay.token_counter_loaded.emit(_token_counter(merges_file, embeddings_folder)))

    def refresh_embedding_counts(self) -> None:
        """Read the embeddings' vector counts again (the library changed)."""
        folder, relay = self._embeddings_folder, self._relay
        if folder is not None:
            self._pool.start(lambda: relay.embedding_vectors_read.emit(_embedding_vectors(folder)))


def _scan(catalog: ModelCatalog, variants: dict[str, str]) -> tuple[list[str], dict[str, int], dict[str, str], str]:
    sizes: dict[str, int] = {}
    families: dict[str, str] = {}
    try:
        entries = catalog.entries()
        for entry in entries:
            side = native_size(entry.path)
            if side is not None:
                sizes[entry.name] = side
            family = model_family(entry.path, variants.get(entry.name, ""))
            if family is not None:
                families[entry.name] = family
    except OSError as exc:
        text = translate("BackgroundReads", "Cannot read the models folder {folder}: {reason}.")
        return [], {}, {}, text.format(folder=catalog.folder, reason=exc.strerror or exc)
    return [entry.name for entry in entries], sizes, families, ""


def _token_counter(merges_file: Path, embeddings_folder: Path | None) -> TokenCounter | None:
    try:
        counter = TokenCounter.from_merges_file(merges_file)
    except (OSError, ValueError, UnicodeDecodeError):
        log.warning("No token counts: cannot read %s", merges_file, exc_info=True)
        return None
    if embeddings_folder is not None:
        counter.set_embeddings(_embedding_vectors(embeddings_folder))
    return counter


def _embedding_vectors(folder: Path) -> dict[str, int]:
    """The embeddings' vector counts; none when the folder cannot be read (names then count as words)."""
    try:
        return vector_counts(folder)
    except OSError:
        log.warning("Embedding names count as words: cannot read %s", folder, exc_info=True)
        return {}


def _reference_models(catalog: ModelCatalog, variants: dict[str, str]) -> dict[str, int]:
    try:
        limits = {entry.name: reference_limit(entry.path, variants.get(entry.name, "")) for entry in catalog.entries()}
    except OSError:
        return {}
    return {name: limit for name, limit in limits.items() if limit > 0}


def _control_input_models(catalog: ModelCatalog) -> frozenset[str]:
    try:
        return frozenset(entry.name for entry in catalog.entries() if reads_control_picture(entry.path))
    except OSError:
        return frozenset()


def _component_models(catalog: ModelCatalog) -> frozenset[str]:
    try:
        return frozenset(entry.name for entry in catalog.entries() if needs_components(entry.path))
    except OSError:
        return frozenset()
