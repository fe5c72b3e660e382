"""Reading a recipe in the window: images dropped, opened or pasted open PNG info; its buttons restore the
exact fields; a plain image dropped on the canvas stays the source; dropped weights are imported."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QWidget

from desktop.engine.metadata import read_image_metadata
from tests.support import tiny_loras, tiny_models
from tests.support.recipe_images import BIG_SEED, CASES
from tests.ui.conftest import FAKE_MODEL, TIMEOUT_MS

pytestmark = pytest.mark.filterwarnings("ignore:Function.*QDragEnterEvent:DeprecationWarning")


def drop(target: QWidget, path: Path) -> bool:
    """A real drag-enter then drop of one local file onto `target`, as Qt delivers them."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(QPoint(20, 20), Qt.DropAction.CopyAction, mime, buttons, mods)
    enter.ignore()
    QApplication.sendEvent(target, enter)
    event = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(target, event)
    return enter.isAccepted()


def window_fields(window, names) -> dict:
    values = {name: window.parameters.value(name) for name in names if name not in ("prompt", "negative_prompt")}
    values["prompt"] = window.prompt_editor.prompt()
    values["negative_prompt"] = window.prompt_editor.negative_prompt()
    return values


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_dropping_each_format_restores_its_exact_fields(qtbot, studio, tmp_path, case):
    window = studio.window
    path = case.write(tmp_path)
    # On the canvas an image with a recipe opens PNG info too (not the source).
    assert drop(window.canvas.viewport(), path)
    dialog = window.recipes.dialog
    qtbot.waitUntil(dialog.isVisible, timeout=TIMEOUT_MS)
    assert dialog.recipe.format == case.format
    assert window.canvas_toolbar.source is None
    assert case.fields["prompt"] in dialog.text.toPlainText()
    assert "Seed: " in dialog.changes_text.toPlainText()
    dialog.use_all_button.click()
    assert not dialog.isVisible()
    assert window_fields(window, case.fields) == case.fields
    # The seed field shows the seed exactly, and the next job's request carries it.
    assert window.parameter_panel.seed_spin.text() == str(case.fields["seed"])
    assert window.parameters.request("x").seed == case.fields["seed"]
    # No model the library lacks is put into the model box.
    assert window.parameter_panel.selected_model() == FAKE_MODEL
    assert window.parameter_panel.model_combo.count() == 1


def test_missing_model_is_a_warning_and_never_enters_the_model_box(qtbot, studio, tmp_path):
    window = studio.window
    path = CASES[3].write(tmp_path)  # ComfyUI, naming comfy-model
    assert drop(window.prompt_editor, path)  # anywhere in the window
    dialog = window.recipes.dialog
    qtbot.waitUntil(dialog.isVisible, timeout=TIMEOUT_MS)
    assert "The model 'comfy-model' is not in the library" in dialog.text.toPlainText()
    dialog.use_all_button.click()
    assert window.parameters.value("model") == FAKE_MODEL
    assert window.parameter_panel.model_combo.findData("comfy-model") < 0


def test_use_prompt_only_keeps_the_settings(qtbot, studio, tmp_path):
    window = studio.window
    before = window.parameters.parameters
    assert window.recipes.open_image(str(CASES[0].write(tmp_path)))
    window.recipes.dialog.use_prompt_button.click()
    assert window.prompt_editor.prompt() == "a red fox, snow"
    assert window.prompt_editor.negative_prompt() == "blurry"
    assert window.parameters.parameters == before


def test_an_image_without_recipe_on_the_canvas_becomes_the_source(qtbot, studio, tmp_path):
    window = studio.window
    path = tmp_path / "photo.png"
    Image.new("RGB", (96, 72), (10, 200, 30)).save(path)
    with qtbot.waitSignal(window.canvas_toolbar.source_changed, timeout=TIMEOUT_MS):
        assert drop(window.canvas.viewport(), path)
    assert not window.recipes.dialog.isVisible()
    assert (window.canvas_toolbar.source.width(), window.canvas_toolbar.source.height()) == (96, 72)


def test_use_as_source_does_what_a_plain_drop_did(qtbot, studio, tmp_path):
    window = studio.window
    assert drop(window.canvas.viewport(), CASES[0].write(tmp_path))
    dialog = window.recipes.dialog
    qtbot.waitUntil(dialog.isVisible, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(window.canvas_toolbar.source_changed, timeout=TIMEOUT_MS):
        dialog.use_source_button.click()
    assert window.canvas_toolbar.source.width() == 64


def test_pasting_a_file_with_a_recipe_opens_png_info(qtbot, studio, tmp_path):
    window = studio.window
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(CASES[4].write(tmp_path)))])
    QApplication.clipboard().setMimeData(mime)
    window.window_actions.paste_image.trigger()
    assert window.recipes.dialog.isVisible()
    assert window.recipes.dialog.recipe.format == "invokeai"
    QApplication.clipboard().clear()


def test_a_huge_seed_survives_to_the_request_and_the_png(qtbot, studio, tmp_path):
    window = studio.window
    assert window.recipes.open_image(str(CASES[3].write(tmp_path)))  # ComfyUI, seed 2**64 - 1
    window.recipes.dialog.use_all_button.click()
    with qtbot.waitSignal(window.controller.job_finished, timeout=TIMEOUT_MS) as finished:
        job = window.generate()
    assert job is not None and job.request.seed == BIG_SEED
    saved = finished.args[0].paths[0]
    metadata = read_image_metadata(saved)
    assert metadata.request.seed == BIG_SEED
    assert f"Seed: {BIG_SEED}" in metadata.raw["parameters"]
    # The image Marble wrote is itself a recipe: dropping it back restores the same fields.
    window.parameters.update(seed=-1, steps=5)
    assert drop(window.prompt_editor, Path(saved))
    window.recipes.dialog.use_all_button.click()
    assert window.parameters.value("seed") == BIG_SEED and window.parameters.value("steps") == 22


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("png-info-lora")
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=3)
    return tiny_loras.save_lora(tensors, folder / "sketchy.safetensors")


def test_a_lora_dropped_on_the_canvas_is_imported(qtbot, studio, lora_file):
    window = studio.window
    tasks = window.library_integration.tasks
    try:
        with qtbot.waitSignal(tasks.import_finished, timeout=TIMEOUT_MS) as finished:
            assert drop(window.canvas.viewport(), lora_file)
        assert finished.args[0].kind == "lora"
        assert (studio.paths.loras / "sketchy.safetensors").is_file()
        assert window.canvas_toolbar.source is None
    finally:
        tasks.shutdown()


def test_a_t5_gguf_dropped_on_the_canvas_is_imported_as_a_text_encoder(qtbot, studio, tmp_path):
    from tests.support.tiny_components import save_t5_gguf
    from tests.support.tiny_dit import _t5

    t5 = save_t5_gguf(_t5(), tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    window = studio.window
    tasks = window.library_integration.tasks
    try:
        with qtbot.waitSignal(tasks.import_finished, timeout=TIMEOUT_MS) as finished:
            assert drop(window.canvas.viewport(), t5)
        assert finished.args[0].kind == "encoder"
        assert (studio.paths.text_encoders / t5.name).is_file()
    finally:
        tasks.shutdown()


def test_reading_a_recipe_reads_no_file_headers_on_the_gui_thread(qtbot, studio, tmp_path, monkeypatch):
    # A recipe matches names and hashes; a LoRA or control file put in the library by hand is not opened for it.
    from desktop.engine.library import index

    def no_reading(*args, **kwargs):
        raise AssertionError("a header was read on the GUI thread")

    monkeypatch.setattr(index, "few_step_of_file", no_reading)
    monkeypatch.setattr(index, "_control_header", no_reading)
    window = studio.window
    library = window.recipes._library
    for kind in ("lora", "control"):
        library.folder(kind).mkdir(parents=True, exist_ok=True)
        (library.folder(kind) / "by-hand.safetensors").write_bytes(b"x" * 16)
    assert window.recipes.open_image(str(CASES[0].write(tmp_path)))
    assert window.recipes.dialog.recipe.prompt == "a red fox, snow"
