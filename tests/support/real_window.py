"""The real window over the real diffusers backend, set up for a tiny 64x64 job on the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from desktop.app import build_main_window, diffusers_runner_factory
from desktop.bridge.controller import GenerationController
from desktop.engine.history.store import HistoryStore
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from desktop.ui.main_window import MainWindow


@contextmanager
def real_window(
    qtbot, paths: AppPaths, *, steps: int, seed: int, model: str = "tiny-sd15", size: int | None = 64,
    history: bool = False,
) -> Iterator[tuple[MainWindow, GenerationController]]:
    """Shown, with `model` (already in `paths.models`) selected; always shut down afterwards.
    `size=None` keeps the size the panel chose for the model. `history=True` gives it the history
    database and panel, as the app has them."""
    catalog = ModelCatalog(paths.models)
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails) if history else None
    factory = diffusers_runner_factory(paths, Resources.default(), catalog, ImageWriter(paths.outputs),
                                       history=store)
    window, controller = build_main_window(paths, factory, catalog, store)
    try:
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        panel = window.parameter_panel
        qtbot.waitUntil(lambda: panel.selected_model() == model, timeout=10_000)
        if size is not None:
            panel.width_spin.setValue(size)
            panel.height_spin.setValue(size)
        panel.steps_spin.setValue(steps)
        panel.seed_spin.setValue(seed)
        # By data: the combo shows "CPU", and setCurrentText("cpu") silently left it on Auto.
        panel.device_combo.setCurrentIndex(panel.device_combo.findData("cpu"))
        assert panel.device_combo.currentData() == "cpu"
        yield window, controller
    finally:
        controller.shutdown()
        window.wait_for_background()
        if store is not None:
            store.close_all()
