"""Generate > X/Y/Z plot... through the real window: the cells are ordinary jobs (queue, history, Cancel
all) and the last one brings the labelled grid, saved in grids/ and shown on the canvas."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import desktop
from desktop.app import build_main_window
from desktop.engine.history import HistoryStore
from desktop.engine.metadata import read_text_chunks
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.plot import LABEL_BAND, Y_LABEL_WIDTH, grid_size, parse_axis
from desktop.engine.runner import JobRunner
from desktop.ui.dialogs.plot_dialog import PlotIntegration
from tests.support.fake_backend import FakeBackend, colour_for
from tests.ui.conftest import FAKE_MODEL, FAKE_STEPS, TIMEOUT_MS, Studio

SIZE = 64


class StepsColourBackend(FakeBackend):
    """Colours each image by its seed and its steps, so all four cells of a seed x steps plot differ;
    with `block_from` set, the calls from that one on stop at step 1 until released or cancelled."""

    block_from = 0

    def generate(self, request, batch_index, on_step, cancel):  # type: ignore[no-untyped-def]
        if self.block_from and len(self.generated) + 1 >= self.block_from:
            self.block_at_step = 1
        batch = super().generate(request, batch_index, on_step, cancel)
        return replace(batch, images=tuple(Image.new("RGB", image.size, cell_colour(seed, request.steps))
                                           for image, seed in zip(batch.images, batch.seeds, strict=True)))


def cell_colour(seed: int, steps: int) -> tuple[int, int, int]:
    red, green, _ = colour_for(seed)
    return red, green, 10 * steps


@pytest.fixture
def fake_backend() -> FakeBackend:
    return StepsColourBackend(steps=FAKE_STEPS)


@pytest.fixture
def history_studio(qtbot, tmp_path: Path, fake_backend: FakeBackend) -> Iterator[tuple[Studio, HistoryStore]]:
    """The window as the app builds it with a history, so every cell must land in it."""
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    (paths.models / f"{FAKE_MODEL}.safetensors").write_bytes(b"")
    history = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    writer = ImageWriter(paths.outputs)
    window, controller = build_main_window(
        paths, lambda: JobRunner(fake_backend, writer, desktop.__version__, history), history=history
    )
    try:
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        qtbot.waitUntil(lambda: window.parameter_panel.selected_model() == FAKE_MODEL, timeout=TIMEOUT_MS)
        yield Studio(window, controller, fake_backend, paths), history
    finally:
        controller.shutdown()
        window.wait_for_background()
        if window.history_panel is not None:
            window.history_panel.model.wait_for_background()
        history.close_all()


def open_plot(studio: Studio) -> PlotIntegration:
    window = studio.window
    window.prompt_editor.set_prompts("a red cat", "")
    window.parameters.update(width=SIZE, height=SIZE, seed=5)
    plot = window.plot_integration
    assert plot.action in window.window_actions.job_menu.actions()
    plot.action.trigger()
    assert plot.dialog.isVisible()
    return plot


def test_a_2x2_plot_queues_its_cells_and_shows_their_grid(qtbot, history_studio):
    studio, history = history_studio
    plot = open_plot(studio)
    dialog = plot.dialog
    dialog.set_axis(0, "seed", "11, 22")
    dialog.set_axis(1, "steps", "3-4")
    assert dialog.queue_button.isEnabled(), dialog.error_label.text()
    assert dialog.count_label.text() == "4 cells (2 × 2)"

    with qtbot.waitSignal(plot.plot_queued, timeout=TIMEOUT_MS) as queued, \
            qtbot.waitSignal(plot.grid_saved, timeout=TIMEOUT_MS) as saved:
        dialog.queue_button.click()
    jobs = queued.args[0]
    cells = [(11, 3), (22, 3), (11, 4), (22, 4)]  # X innermost
    assert [(job.request.seed, job.request.steps) for job in jobs] == cells
    assert all(job.request.prompt == "a red cat" and job.request.width == SIZE and job.request.batch_count == 1
               for job in jobs)
    assert [(request.seed, request.steps) for request, _ in studio.backend.generated] == cells

    grid_path = Path(saved.args[0])
    assert grid_path.parent == studio.paths.outputs / "grids"
    x, y = parse_axis("seed=11,22"), parse_axis("steps=3,4")
    with Image.open(grid_path) as grid:
        assert grid.size == grid_size((SIZE, SIZE), x, y)
        for (seed, steps), (ix, iy) in zip(cells, [(0, 0), (1, 0), (0, 1), (1, 1)], strict=True):
            centre = (Y_LABEL_WIDTH + ix * SIZE + SIZE // 2, LABEL_BAND + iy * SIZE + SIZE // 2)
            assert grid.convert("RGB").getpixel(centre) == cell_colour(seed, steps), (seed, steps)
    text = read_text_chunks(grid_path)
    assert "marble-plot" in text and "XML:com.adobe.xmp" in text  # the axes, and the provenance mark
    qtbot.waitUntil(lambda: studio.window.canvas.shown_file == str(grid_path), timeout=TIMEOUT_MS)

    recorded = {(record.seed, record.steps): record.path for record in history.query()}
    assert set(cells) <= set(recorded)
    assert {recorded[cell] for cell in cells} == {job_path for job_path in studio.window.result_paths()[:-1]}


def test_a_bad_axis_value_disables_queue_and_names_the_axis(qtbot, studio):
    dialog = open_plot(studio).dialog
    dialog.set_axis(0, "seed", "1,2")
    assert dialog.queue_button.isEnabled()
    dialog.set_axis(1, "steps", "10, lots")
    assert not dialog.queue_button.isEnabled()
    assert dialog.error_label.text().startswith("Y axis:")
    assert "'lots' is not a whole number" in dialog.error_label.text()
    assert dialog.count_label.text() == ""
    dialog.set_axis(1, "steps", "10, 20")
    assert dialog.queue_button.isEnabled() and dialog.error_label.text() == ""


def test_cancel_all_during_a_plot_leaves_no_grid(qtbot, studio):
    studio.backend.block_from = 2  # the first cell is made, the second waits
    plot = open_plot(studio)
    plot.dialog.set_axis(0, "cfg", "5, 6, 7")
    with qtbot.waitSignal(plot.plot_queued, timeout=TIMEOUT_MS):
        plot.dialog.queue_button.click()
    qtbot.waitUntil(studio.backend.blocked.is_set, timeout=TIMEOUT_MS)  # the GUI thread starts each next job
    with qtbot.waitSignal(plot.plot_stopped, timeout=TIMEOUT_MS) as stopped, \
            qtbot.waitSignal(studio.controller.busy_changed, timeout=TIMEOUT_MS,
                             check_params_cb=lambda busy: not busy):
        studio.window.window_actions.cancel_all.trigger()
    assert "no grid" in stopped.args[0]
    assert len(studio.backend.generated) == 2  # the third cell never ran
    assert not (studio.paths.outputs / "grids").exists()
    assert len(studio.output_files()) == 1  # the first cell's image, and nothing else
    assert "no grid" in studio.window.message_bar.text()


def test_the_cells_are_checked_again_when_the_prompt_changes(qtbot, studio):
    dialog = open_plot(studio).dialog
    dialog.set_axis(0, "prompt", "red, blue")
    assert dialog.queue_button.isEnabled(), dialog.error_label.text()
    studio.window.prompt_editor.set_prompts("a green cat", "")
    assert not dialog.queue_button.isEnabled()
    assert "did not find 'red'" in dialog.error_label.text()
