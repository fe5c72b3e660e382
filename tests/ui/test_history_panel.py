"""The history panel in the real window, over a real history database and the scripted fake backend."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QDockWidget, QToolButton

import desktop
from desktop.app import build_main_window
from desktop.bridge.controller import GenerationController
from desktop.bridge.history_model import ICON_SIZE, RecordRole
from desktop.engine.backends.base import ModelInfo
from desktop.engine.history import HistoryStore, NewImage
from desktop.engine.metadata import png_text_chunks, read_image_metadata
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.runner import JobRunner
from desktop.ui.history_panel import HistoryPanel
from desktop.ui.main_window import MainWindow
from tests.support.fake_backend import FakeBackend, colour_for

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    # Offscreen limits: floating docks and the detail window ask for these.
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints",
                              r"This plugin does not support raise\(\)"),
]

FAKE_MODEL = "fake-model"
TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class HistoryStudio:
    window: MainWindow
    controller: GenerationController
    backend: FakeBackend
    paths: AppPaths
    store: HistoryStore

    @property
    def panel(self) -> HistoryPanel:
        assert self.window.history_panel is not None
        return self.window.history_panel


def populate(paths: AppPaths, store: HistoryStore, items: list[tuple[str, str]],
             size: tuple[int, int] = (64, 64)) -> list[int]:
    """Real PNGs with Marble metadata, recorded as the runner records them; (prompt, model) each."""
    writer = ImageWriter(paths.outputs / "2026-01-01", dated=False)
    ids = []
    for n, (prompt, model) in enumerate(items):
        request = GenerationRequest(prompt=prompt, model=model, steps=12, seed=500 + n, width=size[0],
                                    height=size[1], sampler="Euler", negative_prompt="ugly")
        image = Image.new("RGB", size, colour_for(500 + n))
        chunks = png_text_chunks(request, 500 + n, ModelInfo(model, "/m", "sd15", None), desktop.__version__)
        path = writer.save(image, chunks, 500 + n)
        ids.append(store.record_image(NewImage(str(path), request, 500 + n, model, created=1_000_000 + n)).id)
    return ids


def open_studio(qtbot, paths: AppPaths, backend: FakeBackend) -> tuple[MainWindow, GenerationController, HistoryStore]:
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    writer = ImageWriter(paths.outputs)
    window, controller = build_main_window(
        paths, lambda: JobRunner(backend, writer, desktop.__version__, store), history=store
    )
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: window.parameter_panel.selected_model() == FAKE_MODEL, timeout=TIMEOUT_MS)
    return window, controller, store


def close_studio(window: MainWindow, controller: GenerationController, store: HistoryStore) -> None:
    controller.shutdown()
    window.wait_for_background()
    if window.history_panel is not None:
        window.history_panel.model.wait_for_background()
    store.close_all()


@pytest.fixture
def home(tmp_path: Path) -> AppPaths:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    (paths.models / f"{FAKE_MODEL}.safetensors").write_bytes(b"")
    return paths


@pytest.fixture
def hstudio(qtbot, home: AppPaths) -> Iterator[HistoryStudio]:
    backend = FakeBackend(steps=2)
    seed_store = HistoryStore(home.history_db, home.outputs, home.thumbnails)
    populate(home, seed_store, [("a red fox in the snow", "model-a"), ("a blue whale, deep sea", "model-b"),
                                ("portrait of a fox, oil", "model-b")])
    seed_store.close_all()
    window, controller, store = open_studio(qtbot, home, backend)
    try:
        studio = HistoryStudio(window, controller, backend, home, store)
        qtbot.waitUntil(lambda: studio.panel.model.rowCount() == 3, timeout=TIMEOUT_MS)
        yield studio
    finally:
        close_studio(window, controller, store)


def prompts(panel: HistoryPanel) -> list[str]:
    model = panel.model
    return [model.data(model.index(row), RecordRole).prompt for row in range(model.rowCount())]


def select(panel: HistoryPanel, prompt: str) -> None:
    row = prompts(panel).index(prompt)
    panel.select_rows([row])


# ------------------------------------------------------------------------------------------ tests


def test_panel_shows_records_with_thumbnails_and_details(qtbot, hstudio: HistoryStudio):
    panel = hstudio.panel
    assert prompts(panel) == ["portrait of a fox, oil", "a blue whale, deep sea", "a red fox in the snow"]
    assert panel.count_label.text() == "3 images"
    model = panel.model

    def all_thumbnails() -> bool:
        return all(model.data(model.index(row), Qt.ItemDataRole.DecorationRole) is not None for row in range(3))

    qtbot.waitUntil(all_thumbnails, timeout=TIMEOUT_MS)
    assert len(list(hstudio.paths.thumbnails.glob("*.jpg"))) == 3  # cached on disk
    select(panel, "a blue whale, deep sea")
    details = panel.details.toPlainText()
    assert details.startswith("a blue whale, deep sea\nNegative prompt: ugly")
    assert "Model: model-b" in details and "Seed: 501" in details and "Steps: 12" in details


def test_generated_images_appear_in_the_history(qtbot, hstudio: HistoryStudio):
    window, panel = hstudio.window, hstudio.panel
    window.prompt_editor.set_prompts("a brand new picture")
    window.parameter_panel.batch_count_spin.setValue(2)
    with qtbot.waitSignal(hstudio.controller.job_finished, timeout=TIMEOUT_MS) as finished:
        window.generate()
    qtbot.waitUntil(lambda: panel.model.rowCount() == 5, timeout=TIMEOUT_MS)
    assert prompts(panel)[:2] == ["a brand new picture"] * 2
    newest = panel.model.record_at(0)
    assert newest.path in finished.args[0].paths and newest.model == FAKE_MODEL
    assert hstudio.store.job(newest.job_id).state == "finished"


def test_search_by_prompt_and_filter_by_favourite_and_model(qtbot, hstudio: HistoryStudio):
    panel = hstudio.panel
    with qtbot.waitSignal(panel.model.query_changed, timeout=TIMEOUT_MS):
        qtbot.keyClicks(panel.search_edit, "fox")
    assert prompts(panel) == ["portrait of a fox, oil", "a red fox in the snow"]
    assert panel.count_label.text() == "2 images"

    panel.search_edit.clear()
    panel.apply_filters()
    select(panel, "a red fox in the snow")
    panel.favourite_action.trigger()
    panel.favourites_check.setChecked(True)
    assert prompts(panel) == ["a red fox in the snow"]
    panel.favourites_check.setChecked(False)

    assert [panel.model_combo.itemText(i) for i in range(panel.model_combo.count())] == [
        "All models", "model-a", "model-b"]
    panel.model_combo.setCurrentIndex(panel.model_combo.findData("model-b"))
    panel.model_combo.activated.emit(panel.model_combo.currentIndex())
    assert prompts(panel) == ["portrait of a fox, oil", "a blue whale, deep sea"]

    panel.sort_combo.setCurrentIndex(1)
    panel.sort_combo.activated.emit(1)
    assert prompts(panel) == ["a blue whale, deep sea", "portrait of a fox, oil"]

    # The seeded records date from 1970: none of them is from the last 7 days.
    panel.date_combo.setCurrentIndex(panel.date_combo.findText("Last 7 days"))
    panel.date_combo.activated.emit(panel.date_combo.currentIndex())
    assert prompts(panel) == [] and panel.count_label.text() == "0 images"


def test_reuse_parameters_and_seed_fill_the_editor_and_settings(qtbot, hstudio: HistoryStudio):
    window, panel = hstudio.window, hstudio.panel
    select(panel, "a blue whale, deep sea")
    panel.reuse_action.trigger()
    assert window.prompt_editor.prompt() == "a blue whale, deep sea"
    assert window.prompt_editor.negative_prompt() == "ugly"
    request = window.parameters.request("", "")
    assert (request.model, request.steps, request.seed, request.width, request.sampler) == (
        "model-b", 12, 501, 64, "Euler")

    window.parameter_panel.seed_spin.setValue(-1)
    select(panel, "a red fox in the snow")
    panel.reuse_seed_action.trigger()
    assert window.parameters.request("", "").seed == 500


def test_send_to_canvas_makes_the_image_the_source_for_editing(qtbot, hstudio: HistoryStudio):
    window, panel = hstudio.window, hstudio.panel
    select(panel, "portrait of a fox, oil")
    with qtbot.waitSignal(window.canvas_toolbar.source_changed, timeout=TIMEOUT_MS):
        panel.canvas_action.trigger()
    assert window.canvas.shown_file == panel.current_record().path
    assert window.canvas.current_image.pixelColor(5, 5).getRgb()[:3] == colour_for(502)
    assert window.canvas_toolbar.source is not None and window.canvas_toolbar.mode == "img2img"


def test_delete_moves_to_trash_and_restore_brings_it_back(qtbot, hstudio: HistoryStudio):
    panel = hstudio.panel
    select(panel, "a red fox in the snow")
    record = panel.current_record()
    panel.delete_action.trigger()
    assert not Path(record.path).exists()
    trashed = hstudio.store.get(record.id)
    assert Path(trashed.trash_path).exists() and Path(trashed.trash_path).parent == hstudio.paths.outputs / ".trash"
    assert prompts(panel) == ["portrait of a fox, oil", "a blue whale, deep sea"]
    assert "trash" in hstudio.window.message_bar.text()

    panel.trash_check.setChecked(True)
    assert prompts(panel) == ["a red fox in the snow"]
    panel.select_rows([0])
    panel.restore_action.trigger()
    assert Path(record.path).exists() and prompts(panel) == []
    panel.trash_check.setChecked(False)
    assert len(prompts(panel)) == 3


def test_select_many_and_export_without_metadata(qtbot, hstudio: HistoryStudio, tmp_path: Path):
    panel = hstudio.panel
    panel.select_rows([0, 2])
    assert len(panel.selected_records()) == 2
    folder = tmp_path / "exported"
    folder.mkdir()
    written = panel.export_selected(folder, strip_metadata=True)
    assert len(written) == 2
    for path in written:
        with Image.open(path) as image:
            image.load()
            assert "parameters" not in image.info and "marble" not in image.info


def test_disk_full_keeps_the_image_and_saves_it_elsewhere(qtbot, hstudio: HistoryStudio, tmp_path: Path,
                                                          monkeypatch):
    window = hstudio.window
    outputs = str(hstudio.paths.outputs)
    real_fsync = os.fsync

    def full_outputs_disk(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(outputs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr("desktop.engine.outputs.os.fsync", full_outputs_disk)
    window.prompt_editor.set_prompts("not lost")
    window.parameter_panel.seed_spin.setValue(77)
    with qtbot.waitSignal(hstudio.controller.job_failed, timeout=TIMEOUT_MS):
        window.generate()
    assert "disk is full" in window.message_bar.text() and "Save unsaved images" in window.message_bar.text()
    assert window.window_actions.save_unsaved.isEnabled()
    assert len(hstudio.controller.pending_images) == 1

    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    (saved,) = window.save_unsaved_images(str(elsewhere))
    assert saved.parent == elsewhere and read_image_metadata(saved).request.prompt == "not lost"
    assert not window.window_actions.save_unsaved.isEnabled() and hstudio.controller.pending_images == []
    assert hstudio.store.find_by_path(saved).seed == 77
    qtbot.waitUntil(lambda: "not lost" in prompts(hstudio.panel), timeout=TIMEOUT_MS)


def test_unfinished_jobs_are_offered_and_run_again(qtbot, home: AppPaths):
    # A job a killed process left half done: 1 of 3 images written.
    store = HistoryStore(home.history_db, home.outputs, home.thumbnails)
    request = GenerationRequest(prompt="interrupted", model=FAKE_MODEL, seed=10, batch_count=3, width=64,
                                height=64)
    store.add_job("job-old", request, "running")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    store._db.connection().execute("UPDATE jobs SET pid = ?", (child.pid,))
    store.record_image(NewImage(str(home.outputs / "gone.png"), request, 10, FAKE_MODEL, job_id="job-old"))
    store.close_all()

    backend = FakeBackend(steps=1)
    window, controller, store = open_studio(qtbot, home, backend)
    try:
        panel = window.history_panel
        assert panel.recovery_bar.isVisible()
        assert panel.recovery_label.text() == "1 job did not finish last time (2 images to make)."
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as finished:
            qtbot.mouseClick(panel.resume_button, Qt.MouseButton.LeftButton)
        assert finished.args[0].seeds == (11, 12)  # only what was left
        assert not panel.recovery_bar.isVisible()
        assert store.job("job-old").state == "resumed"
    finally:
        close_studio(window, controller, store)


def test_quitting_keeps_queued_jobs_for_the_next_start(qtbot, home: AppPaths):
    backend = FakeBackend(steps=3, block_at_step=1)
    window, controller, store = open_studio(qtbot, home, backend)
    try:
        request = GenerationRequest(prompt="long job", model=FAKE_MODEL, width=64, height=64)
        running = controller.submit(request)
        queued = controller.submit(request)
        assert backend.blocked.wait(10)
    finally:
        close_studio(window, controller, store)
    store = HistoryStore(home.history_db, home.outputs, home.thumbnails)
    assert store.job(running.id).state == "interrupted"
    assert store.job(queued.id).state == "queued"
    store.close_all()


def test_open_reveal_and_copy(qtbot, hstudio: HistoryStudio, monkeypatch):
    opened: list[str] = []
    monkeypatch.setattr("desktop.ui.history_panel.QDesktopServices.openUrl",
                        lambda url: opened.append(url.toLocalFile()))
    panel = hstudio.panel
    select(panel, "a blue whale, deep sea")
    record = panel.current_record()
    panel.open_action.trigger()
    panel.reveal_action.trigger()
    assert opened == [record.path, str(Path(record.path).parent)]
    panel.copy_action.trigger()
    copied = QApplication.clipboard().image()
    assert copied.size().width() == 64 and copied.pixelColor(5, 5).getRgb()[:3] == colour_for(501)


def test_queue_states_are_journaled_as_jobs_move(qtbot, home: AppPaths):
    backend = FakeBackend(steps=2, block_at_step=1)
    window, controller, store = open_studio(qtbot, home, backend)
    try:
        request = GenerationRequest(prompt="queued work", model=FAKE_MODEL, width=64, height=64)
        first = controller.submit(request)
        second = controller.submit(request)
        assert store.job(second.id).state == "queued"  # on disk before it ever runs
        assert backend.blocked.wait(10)
        assert store.job(first.id).state == "running"
        controller.cancel(second.id)
        assert store.job(second.id).state == "cancelled"
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS):
            backend.release.set()
        assert store.job(first.id).state == "finished" and store.job(first.id).images_done == 1
        assert controller.unfinished_jobs() == []
    finally:
        close_studio(window, controller, store)


# ------------------------------------------------------------------------------ the grid (issue 24)


def activate(qtbot, window: MainWindow, panel: HistoryPanel) -> None:
    """Keys reach the grid as a user's would: the window active, the grid focused."""
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=TIMEOUT_MS)
    panel.view.setFocus()
    qtbot.waitUntil(panel.view.hasFocus, timeout=TIMEOUT_MS)


def assert_full_cells(panel: HistoryPanel) -> None:
    """Every cell on screen is a whole thumbnail plus its caption, not a caption-high strip."""
    model = panel.model
    for row in range(model.rowCount()):
        rect = panel.view.visualRect(model.index(row))
        assert rect.height() >= ICON_SIZE + 2 * panel.view.fontMetrics().lineSpacing(), (row, rect)
        assert rect.width() >= ICON_SIZE, (row, rect)


def test_grid_cells_are_whole_thumbnails_after_a_restart_and_a_new_image(qtbot, hstudio: HistoryStudio):
    window, panel = hstudio.window, hstudio.panel
    assert_full_cells(panel)  # a restart with images in the history: nothing loaded yet
    window.prompt_editor.set_prompts("one more")
    with qtbot.waitSignal(panel.model.query_changed, timeout=TIMEOUT_MS):
        with qtbot.waitSignal(hstudio.controller.job_finished, timeout=TIMEOUT_MS):
            window.generate()
    assert panel.model.rowCount() == 4
    assert_full_cells(panel)  # the new row 0 has no thumbnail yet; the cells must not shrink to it


def test_grid_keeps_whole_cells_and_reflows_when_the_panel_is_resized(qtbot, home: AppPaths):
    seed_store = HistoryStore(home.history_db, home.outputs, home.thumbnails)
    populate(home, seed_store, [(f"picture {n}", "model-a") for n in range(6)])
    seed_store.close_all()
    window, controller, store = open_studio(qtbot, home, FakeBackend(steps=1))
    try:
        panel = window.history_panel
        dock = window.findChild(QDockWidget, "history_dock")
        dock.setFloating(True)
        model, view = panel.model, panel.view

        def columns() -> int:
            return len({view.visualRect(model.index(row)).x() for row in range(model.rowCount())})

        dock.resize(view.gridSize().width() * 6 + 80, 700)
        qtbot.waitUntil(lambda: columns() == 6, timeout=TIMEOUT_MS)
        assert_full_cells(panel)
        dock.resize(dock.minimumSizeHint().width(), 700)
        qtbot.waitUntil(lambda: columns() < 6, timeout=TIMEOUT_MS)
        assert_full_cells(panel)
    finally:
        close_studio(window, controller, store)


def test_thumbnails_keep_their_aspect_ratio_and_captions_tell_images_apart(qtbot, home: AppPaths):
    seed_store = HistoryStore(home.history_db, home.outputs, home.thumbnails)
    populate(home, seed_store, [("same prompt", "model-a"), ("same prompt", "model-a")], size=(128, 64))
    seed_store.close_all()
    window, controller, store = open_studio(qtbot, home, FakeBackend(steps=1))
    try:
        panel = window.history_panel
        model, view = panel.model, panel.view
        qtbot.waitUntil(lambda: model.data(model.index(0), Qt.ItemDataRole.DecorationRole) is not None,
                        timeout=TIMEOUT_MS)
        captions = [model.data(model.index(row), Qt.ItemDataRole.DisplayRole) for row in range(2)]
        assert captions[0] != captions[1]
        assert "seed 501" in captions[0] and "model-a" in captions[0] and "1970-01-" in captions[0]
        view.clearSelection()
        frame = view.viewport().grab().toImage()
        rect = view.visualRect(model.index(0))
        centre = rect.center().x()
        box_top = rect.top() + 4  # the delegate's padding
        # A 2:1 image in a square box: its colour in the middle band, background above and below it.
        assert frame.pixelColor(centre, box_top + ICON_SIZE // 2).getRgb()[:3] == pytest.approx(
            colour_for(501), abs=3)
        background = frame.pixelColor(centre, box_top + 8).getRgb()[:3]
        assert background != pytest.approx(colour_for(501), abs=3)
    finally:
        close_studio(window, controller, store)


def test_keyboard_moves_through_the_grid_and_end_reaches_the_oldest(qtbot, home: AppPaths, monkeypatch):
    monkeypatch.setattr("desktop.bridge.history_model.PAGE_SIZE", 4)  # the oldest images are not fetched yet
    seed_store = HistoryStore(home.history_db, home.outputs, home.thumbnails)
    populate(home, seed_store, [(f"picture {n}", "m") for n in range(60)])
    seed_store.close_all()
    window, controller, store = open_studio(qtbot, home, FakeBackend(steps=1))
    try:
        panel = window.history_panel
        activate(qtbot, window, panel)
        assert panel.model.rowCount() < 60
        qtbot.keyClick(panel.view, Qt.Key.Key_Home)
        assert panel.current_record().prompt == "picture 59"
        qtbot.keyClick(panel.view, Qt.Key.Key_Right)
        assert panel.current_record().prompt == "picture 58"
        qtbot.keyClick(panel.view, Qt.Key.Key_Down)  # one grid line down
        row = panel.view.currentIndex().row()
        assert row > 1 and panel.view.visualRect(panel.view.currentIndex()).x() == panel.view.visualRect(
            panel.model.index(1)).x()
        qtbot.keyClick(panel.view, Qt.Key.Key_End)
        assert panel.current_record().prompt == "picture 0"
        qtbot.keyClick(panel.view, Qt.Key.Key_Left)
        assert panel.current_record().prompt == "picture 1"
        qtbot.keyClick(panel.view, Qt.Key.Key_Home)
        assert [r.prompt for r in panel.selected_records()] == ["picture 59"]
    finally:
        close_studio(window, controller, store)


def test_delete_key_trashes_and_selects_the_next_image(qtbot, hstudio: HistoryStudio):
    panel = hstudio.panel
    activate(qtbot, hstudio.window, panel)
    qtbot.keyClick(panel.view, Qt.Key.Key_Home)
    first = panel.current_record()
    qtbot.keyClick(panel.view, Qt.Key.Key_Delete)
    assert hstudio.store.get(first.id).trashed
    assert panel.current_record().prompt == "a blue whale, deep sea"  # so Delete can be pressed again
    qtbot.keyClick(panel.view, Qt.Key.Key_Delete)
    assert prompts(panel) == ["a red fox in the snow"]


def test_enter_opens_the_detail_view_with_the_image_and_its_recipe(qtbot, hstudio: HistoryStudio):
    window, panel = hstudio.window, hstudio.panel
    activate(qtbot, window, panel)
    select(panel, "a blue whale, deep sea")
    qtbot.keyClick(panel.view, Qt.Key.Key_Return)
    detail = panel.detail_view
    assert detail is not None and detail.isVisible()
    qtbot.waitUntil(lambda: not detail.image_label.full_pixmap.isNull(), timeout=TIMEOUT_MS)  # decoded on its pool
    full = detail.image_label.full_pixmap
    assert (full.width(), full.height()) == (64, 64)
    assert full.toImage().pixelColor(5, 5).getRgb()[:3] == colour_for(501)
    recipe = detail.recipe.toPlainText()
    # The file's own A1111 text first (prompt, negative, parameters), then what only the history knows.
    assert recipe.startswith("a blue whale, deep sea\nNegative prompt: ugly\nSteps: 12, Sampler: Euler")
    assert "Seed: 501" in recipe and "Model: model-b" in recipe and f"File: {detail.record.path}" in recipe

    detail.activateWindow()
    qtbot.waitUntil(detail.isActiveWindow, timeout=TIMEOUT_MS)
    qtbot.keyClick(detail, Qt.Key.Key_Right)  # the next image, the grid following
    assert detail.record.prompt == "a red fox in the snow" == panel.current_record().prompt
    assert detail.recipe.toPlainText().startswith("a red fox in the snow")

    buttons = {button.defaultAction(): button for button in detail.findChildren(QToolButton)}
    qtbot.mouseClick(buttons[panel.reuse_action], Qt.MouseButton.LeftButton)
    assert window.prompt_editor.prompt() == "a red fox in the snow"
    fox = detail.record
    qtbot.keyClick(detail, Qt.Key.Key_Delete)  # the panel's shortcut works in the detail window
    assert hstudio.store.get(fox.id).trashed
    assert "a red fox in the snow" not in prompts(panel)
    assert detail.record.prompt == panel.current_record().prompt == "a blue whale, deep sea"


def test_the_detail_view_decodes_off_the_gui_thread_and_only_the_last_of_quick_steps(
    qtbot, hstudio: HistoryStudio, monkeypatch
):
    import threading

    from desktop.ui import history_detail

    panel = hstudio.panel
    select(panel, "a red fox in the snow")
    panel.open_details()
    detail = panel.detail_view
    assert detail is not None

    def colour() -> tuple[int, int, int] | None:
        full = detail.image_label.full_pixmap
        return None if full.isNull() else full.toImage().pixelColor(5, 5).getRgb()[:3]

    qtbot.waitUntil(lambda: colour() == colour_for(500), timeout=TIMEOUT_MS)
    records = {panel.model.record_at(row).prompt: panel.model.record_at(row) for row in range(3)}
    read: list[str] = []

    class CountingReader(history_detail.QImageReader):
        def __init__(self, path: str) -> None:
            read.append(path)
            super().__init__(path)

    monkeypatch.setattr(history_detail, "QImageReader", CountingReader)
    gate = threading.Event()
    detail._pool.start(lambda: gate.wait(30))  # the view's decoding thread is busy until the gate opens
    try:
        detail.show_record(records["portrait of a fox, oil"])
        detail.show_record(records["a blue whale, deep sea"])  # a second step before the first is decoded
        assert detail.recipe.toPlainText().startswith("a blue whale, deep sea")  # the recipe at once
        qtbot.wait(50)
        assert colour() == colour_for(500) and read == []  # the fox stays until the whale is read
    finally:
        gate.set()
    qtbot.waitUntil(lambda: colour() == colour_for(501), timeout=TIMEOUT_MS)
    detail._pool.waitForDone(10_000)
    assert read == [records["a blue whale, deep sea"].path]  # the skipped step was never decoded


def test_a_file_deleted_outside_marble_is_said_not_sent(qtbot, hstudio: HistoryStudio):
    window, panel = hstudio.window, hstudio.panel
    select(panel, "a blue whale, deep sea")
    path = panel.current_record().path
    Path(path).unlink()
    sent: list[str] = []
    panel.send_to_canvas_requested.connect(sent.append)
    panel.upscale_requested.connect(sent.append)
    for action in (panel.canvas_action, panel.upscale_action):
        window.message_bar.clear()
        action.trigger()
        assert sent == []
        assert f"{path} is missing" in window.message_bar.text()
