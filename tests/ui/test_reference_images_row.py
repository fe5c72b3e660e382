"""The parameter panel's "References" row: shown for a model that reads reference images (a Flux.2 Klein
transformer file, which reads up to 4), hidden for others; its pictures reach the job's request, at most
the model's count, and stay listed (but out of the request) while another model is chosen."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from desktop.engine.library.native_size import reference_limit
from desktop.engine.paths import AppPaths
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import FAKE_MODEL, TIMEOUT_MS
from tests.ui.test_session_memory import pick
from tests.ui.test_settings_and_logs import close_window, open_window


def _klein_file(models: Path) -> Path:
    from tests.support.tiny_flux2 import flux2_to_bfl, save_transformer_file, tiny_transformer

    state = flux2_to_bfl(tiny_transformer("klein-4b").state_dict())
    return save_transformer_file(state, models / "zz-klein.safetensors")


def _pictures(folder: Path, count: int) -> list[str]:
    paths = []
    for index in range(count):
        path = folder / f"ref{index}.png"
        Image.new("RGB", (24, 16), (40 * index, 90, 200)).save(path)
        paths.append(str(path))
    return paths


def _drop(widget, paths: list[str]) -> None:
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(path) for path in paths])
    event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, data, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)  # fmt: skip
    widget.dropEvent(event)


def test_the_references_row_follows_the_model_and_its_pictures_reach_the_request(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    klein = _klein_file(paths.models)
    assert reference_limit(klein) == 4 and reference_limit(tmp_path) == 0
    pictures = _pictures(tmp_path, 6)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    row = panel.references_row
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-klein") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, FAKE_MODEL)
        assert not row.isVisibleTo(panel)
        pick(panel.model_combo, "zz-klein")
        qtbot.waitUntil(lambda: row.isVisibleTo(panel), timeout=TIMEOUT_MS)
        row.add_images(pictures[:3])
        _drop(row, [*pictures[3:], str(tmp_path / "notes.txt")])  # 3 more images and a text file
        assert row.images() == tuple(pictures[:4])  # the model reads 4: the rest refused, said so
        assert row.problem.isVisibleTo(panel) and "at most 4" in row.problem.text()
        assert not row.add_button.isEnabled()
        qtbot.waitUntil(lambda: not row.list.item(0).icon().isNull(), timeout=TIMEOUT_MS)  # decoded small
        assert window.current_request().reference_images == tuple(pictures[:4])
        row.list.setCurrentRow(1)
        row.remove_button.click()
        assert window.current_request().reference_images == (pictures[0], pictures[2], pictures[3])
        # Another model reads none: the row hides and the job goes without them, but they are kept.
        pick(panel.model_combo, FAKE_MODEL)
        assert not row.isVisibleTo(panel)
        assert window.current_request().reference_images == ()
        pick(panel.model_combo, "zz-klein")
        assert window.current_request().reference_images == (pictures[0], pictures[2], pictures[3])
        # Reusing a recipe brings its references back.
        request = window.current_request()
        panel.model.update(reference_images=())
        assert row.images() == ()
        window.parameters.set_from_request(request)
        assert row.images() == (pictures[0], pictures[2], pictures[3])
    finally:
        close_window(window, controller)


def _edit_plus_folder(models: Path) -> Path:
    """A Qwen-Image-Edit Plus diffusers folder as the library scan reads it: the pipeline class in
    model_index.json names the variant (no weights are read to show the row)."""
    folder = models / "zz-qwen-edit-plus"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "QwenImageEditPlusPipeline"}')
    (folder / "transformer" / "config.json").write_text('{"_class_name": "QwenImageTransformer2DModel"}')
    return folder


def test_a_qwen_edit_plus_model_shows_the_row_for_two_references(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    assert reference_limit(_edit_plus_folder(paths.models)) == 2
    pictures = _pictures(tmp_path, 3)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    row = panel.references_row
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-qwen-edit-plus") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, FAKE_MODEL)
        assert not row.isVisibleTo(panel) and not panel.references_label.isVisibleTo(panel)
        pick(panel.model_combo, "zz-qwen-edit-plus")
        qtbot.waitUntil(lambda: row.isVisibleTo(panel), timeout=TIMEOUT_MS)
        _drop(row, pictures)
        assert row.problem.isVisibleTo(panel) and "at most 2" in row.problem.text()
        request = window.current_request()
        assert request.reference_images == tuple(pictures[:2]) and request.model == "zz-qwen-edit-plus"
    finally:
        close_window(window, controller)


def test_reusing_a_history_image_brings_back_its_references_still_there_and_names_the_rest(
    qtbot, tmp_path: Path
) -> None:
    import desktop
    from desktop.engine.backends.base import ModelInfo
    from desktop.engine.history import HistoryStore, NewImage
    from desktop.engine.metadata import png_text_chunks
    from desktop.engine.outputs import ImageWriter
    from desktop.engine.request import GenerationRequest
    from tests.ui.test_history_panel import close_studio, open_studio, select

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    (paths.models / f"{FAKE_MODEL}.safetensors").write_bytes(b"")
    _edit_plus_folder(paths.models)
    kept, gone = _pictures(tmp_path, 2)
    request = GenerationRequest(prompt="the hat from picture 2", model="zz-qwen-edit-plus", steps=2, seed=5,
                                width=64, height=64, reference_images=(kept, gone))  # fmt: skip
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    chunks = png_text_chunks(request, 5, ModelInfo("zz-qwen-edit-plus", "/m", "qwen-image", None), desktop.__version__)
    image = ImageWriter(paths.outputs, dated=False).save(Image.new("RGB", (64, 64)), chunks, 5)
    store.record_image(NewImage(str(image), request, 5, "zz-qwen-edit-plus", created=1_000_000))
    store.close_all()
    Path(gone).unlink()  # deleted since the picture was made
    window, controller, store = open_studio(qtbot, paths, FakeBackend(steps=2))
    try:
        panel = window.history_panel
        qtbot.waitUntil(lambda: panel.model.rowCount() == 1, timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: window.parameter_panel.model_combo.findText("zz-qwen-edit-plus") >= 0,
                        timeout=TIMEOUT_MS)  # fmt: skip
        select(panel, "the hat from picture 2")
        panel.reuse_action.trigger()
        assert window.parameter_panel.references_row.images() == (kept,)
        assert window.current_request().reference_images == (kept,)
        assert gone in window.message_bar.text()
    finally:
        close_studio(window, controller, store)


def test_references_are_remembered_across_a_restart_and_deleted_ones_named(qtbot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _edit_plus_folder(AppPaths.for_root(home).ensure().models)
    kept, gone = _pictures(tmp_path, 2)
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2))
    panel = window.parameter_panel
    try:
        qtbot.waitUntil(lambda: panel.model_combo.findText("zz-qwen-edit-plus") >= 0, timeout=TIMEOUT_MS)
        pick(panel.model_combo, "zz-qwen-edit-plus")
        panel.references_row.add_images([kept, gone])
    finally:
        close_window(window, controller)
    Path(gone).unlink()
    window, controller, _ = open_window(qtbot, home, FakeBackend(steps=2), model="zz-qwen-edit-plus")
    try:
        assert window.parameter_panel.references_row.images() == (kept,)
        assert window.current_request().reference_images == (kept,)
        assert gone in window.message_bar.text()
    finally:
        close_window(window, controller)


def test_thumbnails_are_decoded_on_the_pool_not_on_the_gui_thread(qtbot, tmp_path: Path) -> None:
    """A big picture added to the row must not freeze the window while it decodes: the row lists it at
    once and its thumbnail comes from the pool when the pool gets to it. A huge one (past the canvas's
    pixel cap, refused from its header) stays listed without a thumbnail."""
    import threading

    from PySide6.QtCore import QThreadPool

    from desktop.ui.reference_images_row import ReferenceImagesRow

    pool = QThreadPool()
    pool.setMaxThreadCount(1)
    gate = threading.Event()
    pool.start(lambda: gate.wait(30))  # the pool's only thread is busy until the gate opens
    row = ReferenceImagesRow(pool)
    qtbot.addWidget(row)
    row.set_limit(3)
    picture = tmp_path / "photo.jpg"
    Image.new("RGB", (3000, 2000), (200, 30, 30)).save(picture)
    huge = tmp_path / "huge.png"
    Image.new("1", (20_000, 5_000)).save(huge)  # 100 megapixels, a few kB on disk
    try:
        row.add_images([str(picture), str(huge)])
        assert row.images() == (str(picture), str(huge))
        qtbot.wait(50)
        assert row.list.item(0).icon().isNull()  # not decoded here: the pool has not run yet
    finally:
        gate.set()
    qtbot.waitUntil(lambda: not row.list.item(0).icon().isNull(), timeout=TIMEOUT_MS)
    pixmap = row.list.item(0).icon().pixmap(40, 40)
    assert pixmap.width() == 40 and pixmap.height() in (26, 27)  # the photo's shape, 40 wide
    assert pixmap.toImage().pixelColor(20, 13).red() > 150  # its colour
    pool.waitForDone(30_000)
    qtbot.wait(50)
    assert row.list.item(1).icon().isNull()
