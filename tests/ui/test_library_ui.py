"""The library in the window: LoRA rows in the parameter panel, the library dialog, drag-and-drop import."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from desktop.engine.errors import Cancelled
from desktop.engine.request import GenerationRequest, LoraRef
from tests.support import tiny_loras, tiny_models
from tests.ui.conftest import answer_library_choice

TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def lora_source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ui-lora")
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=21)
    return tiny_loras.save_lora(tensors, folder / "inkwash.safetensors", {"trigger": "<b>ink</b>"})


@pytest.fixture
def integration(studio):
    integration = studio.window.library_integration
    yield integration
    integration.tasks.shutdown()


def test_panel_lora_rows_become_request_loras_and_back(studio, integration, qtbot, lora_source):
    panel = studio.window.parameter_panel
    (studio.paths.loras / "inkwash.safetensors").write_bytes(lora_source.read_bytes())
    integration.tasks.list("lora")
    qtbot.waitUntil(lambda: panel.lora_list.names() == ["inkwash"], timeout=TIMEOUT_MS)
    row = panel.lora_list.add_row()
    row.weight_spin.setValue(0.65)
    assert panel.model.request("a cat").loras == (LoraRef("inkwash", 0.65),)

    from_history = GenerationRequest(prompt="x", model="m", loras=(LoraRef("gone-lora", -0.5), LoraRef("inkwash", 1)))
    panel.model.set_from_request(from_history)
    assert panel.model.request("x").loras == from_history.loras  # a LoRA the library lacks stays visible
    with qtbot.waitSignal(studio.window.job_submitted, timeout=TIMEOUT_MS) as submitted:
        studio.window.prompt_editor.set_prompts("a cat")
        studio.window.generate()
    assert submitted.args[0].request.loras == from_history.loras
    panel.lora_list.set_loras(())
    assert panel.model.request("x").loras == ()


def test_library_dialog_import_info_rename_remove(studio, integration, qtbot, lora_source):
    dialog = integration.show_dialog()
    qtbot.addWidget(dialog)
    tasks = integration.tasks
    with qtbot.waitSignal(tasks.import_finished, timeout=TIMEOUT_MS):
        assert dialog.import_file(str(lora_source), "lora")
    qtbot.waitUntil(lambda: dialog.select("lora", "inkwash"), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: "AutoV3:" in dialog.details.toPlainText(), timeout=TIMEOUT_MS)
    details = dialog.details.toPlainText()
    assert "Format: kohya" in details and "trigger: <b>ink</b>" in details  # metadata as plain text
    assert "Imported inkwash" in dialog.message.text()
    # The panel hears about new LoRAs too.
    qtbot.waitUntil(lambda: studio.window.parameter_panel.lora_list.names() == ["inkwash"], timeout=TIMEOUT_MS)

    with qtbot.waitSignal(tasks.library_changed, timeout=TIMEOUT_MS):
        dialog.rename_selected("inkwash-v2")
    qtbot.waitUntil(lambda: dialog.select("lora", "inkwash-v2"), timeout=TIMEOUT_MS)
    assert (studio.paths.loras / "inkwash-v2.safetensors").is_file()

    with qtbot.waitSignal(tasks.library_changed, timeout=TIMEOUT_MS):
        dialog.remove_selected(confirm=False)
    qtbot.waitUntil(lambda: dialog.tables["lora"].rowCount() == 0, timeout=TIMEOUT_MS)
    assert not any(studio.paths.loras.iterdir())

    opened = []
    dialog.open_url = opened.append
    dialog.reveal_selected()
    assert opened and Path(opened[0].toLocalFile()) == studio.paths.loras
    dialog.close()


def test_a_pickle_import_fails_with_an_offer_to_convert(studio, integration, qtbot, tmp_path):
    source = tmp_path / "old.ckpt"
    torch.save({"w": torch.ones(2)}, source)
    dialog = integration.show_dialog()
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(integration.tasks.failed, timeout=TIMEOUT_MS):
        dialog.import_file(str(source), "model")
    assert "pickled" in dialog.message.text() and dialog.convert_button.isVisibleTo(dialog)
    assert not any(p.name.startswith("old") for p in studio.paths.models.iterdir())
    dialog.close()


# Qt 6 marks the QPoint constructor deprecated but offers no other for a synthetic drag-enter event.
@pytest.mark.filterwarnings("ignore:Function.*QDragEnterEvent:DeprecationWarning")
def test_dropping_a_lora_on_the_window_imports_it(studio, integration, qtbot, lora_source):
    window = studio.window
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(lora_source))])
    point = QPoint(10, 10)
    enter = QDragEnterEvent(
        point, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    drop = QDropEvent(point, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(integration.tasks.import_finished, timeout=TIMEOUT_MS) as finished:
        QApplication.sendEvent(window, drop)
    assert finished.args[0].kind == "lora"  # judged from the header, not the extension
    assert (studio.paths.loras / "inkwash.safetensors").is_file()
    qtbot.waitUntil(lambda: window.parameter_panel.lora_list.names() == ["inkwash"], timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: "Imported inkwash" in window.message_bar.message_label.text(), timeout=TIMEOUT_MS)

    # Anything else (a text file) is not taken: the drop stays with whoever else wants it.
    other = QMimeData()
    other.setUrls([QUrl.fromLocalFile(str(lora_source.with_suffix(".txt")))])
    ignored = QDragEnterEvent(
        point, Qt.DropAction.CopyAction, other, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    ignored.ignore()
    QApplication.sendEvent(window, ignored)
    assert not ignored.isAccepted()


@pytest.mark.filterwarnings("ignore:Function.*QDragEnterEvent:DeprecationWarning")
def test_a_t5_gguf_dropped_on_the_window_is_imported_as_a_text_encoder(studio, integration, qtbot, tmp_path):
    from tests.support.tiny_components import save_t5_gguf
    from tests.support.tiny_dit import _t5

    t5 = save_t5_gguf(_t5(), tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(t5))])
    point = QPoint(10, 10)
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(point, Qt.DropAction.CopyAction, mime, buttons, mods)
    QApplication.sendEvent(studio.window, enter)
    assert enter.isAccepted()  # a .gguf is a weights file the window takes, as the library's Import… does
    drop = QDropEvent(point, Qt.DropAction.CopyAction, mime, buttons, mods)
    with qtbot.waitSignal(integration.tasks.import_finished, timeout=TIMEOUT_MS) as finished:
        QApplication.sendEvent(studio.window, drop)
    assert finished.args[0].kind == "encoder"
    assert (studio.paths.text_encoders / t5.name).is_file()


def test_library_action_is_in_the_file_menu(studio, integration):
    assert integration.library_action in studio.window.file_menu.actions()


def test_cancel_button_stops_an_import(studio, integration, qtbot, lora_source, monkeypatch):
    library = integration.tasks.library
    started = []

    def slow_import(path, kind, name=None, *, convert_pickle=False, on_progress=None, should_cancel=None):
        # Stands in for a long copy: reports progress until the dialog's cancel reaches it.
        on_progress(1, 100)
        started.append(path)
        for _ in range(500):
            if should_cancel():
                raise Cancelled("The import was cancelled; nothing was added to the library.")
            time.sleep(0.01)
        raise AssertionError("cancel never arrived")

    monkeypatch.setattr(library, "import_path", slow_import)
    dialog = integration.show_dialog()
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(integration.tasks.import_progressed, timeout=TIMEOUT_MS):
        dialog.import_file(str(lora_source), "lora")
    assert dialog.cancel_button.isVisibleTo(dialog) and dialog.progress.isVisibleTo(dialog)
    with qtbot.waitSignal(integration.tasks.import_cancelled, timeout=TIMEOUT_MS):
        dialog.cancel_button.click()
    assert "cancelled" in dialog.message.text() and not dialog.cancel_button.isVisibleTo(dialog)
    assert not integration.tasks.importing
    dialog.close()


def test_a_vae_imported_in_the_dialog_is_listed_and_offered_in_the_panel(studio, integration, qtbot, tmp_path):
    source = tiny_models.save_vae_file(tiny_models.build_tiny_vae(seed=5), tmp_path / "crisp.safetensors")
    dialog = integration.show_dialog()
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(integration.tasks.import_finished, timeout=TIMEOUT_MS) as finished:
        assert dialog.import_file(str(source), "vae")
    assert finished.args[0].kind == "vae"
    qtbot.waitUntil(lambda: dialog.select("vae", "crisp"), timeout=TIMEOUT_MS)
    assert dialog.tabs.tabText(dialog.tabs.currentIndex()).startswith("VAEs")
    panel = studio.window.parameter_panel
    qtbot.waitUntil(lambda: panel.vae_combo.findData("crisp") >= 0, timeout=TIMEOUT_MS)
    panel.vae_combo.setCurrentIndex(panel.vae_combo.findData("crisp"))
    assert panel.model.request("a cat").vae == "crisp"
    dialog.close()


def test_a_model_file_is_marked_as_its_edit_model_in_the_dialog(studio, integration, qtbot, tmp_path, monkeypatch):
    """A LongCat-Image file whose tensors cannot say it is LongCat-Image-Edit: the Variant button offers its family's
    variants by their labels, and the library lists it as the one chosen (Library.choose_variant)."""
    from tests.support.tiny_longcat import build_tiny_longcat, save_transformer

    source = save_transformer(build_tiny_longcat(), tmp_path / "longcat_image_edit.safetensors")
    dialog = integration.show_dialog()
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(integration.tasks.import_finished, timeout=TIMEOUT_MS):
        assert dialog.import_file(str(source), "model")
    qtbot.waitUntil(lambda: dialog.select("model", "longcat_image_edit"), timeout=TIMEOUT_MS)
    assert dialog.variant_button.isVisible() and dialog.variant_button.isEnabled()
    offered = answer_library_choice(monkeypatch, "LongCat-Image Edit")
    with qtbot.waitSignal(integration.tasks.library_changed, timeout=TIMEOUT_MS):
        dialog.variant_button.click()
    assert offered == [(["LongCat-Image (as the file says)", "LongCat-Image Edit"], 0)]
    table = dialog.tables["model"]

    def shown() -> dict[str, str]:
        return {table.item(row, 0).text(): table.item(row, 1).text() for row in range(table.rowCount())}

    qtbot.waitUntil(lambda: shown()["longcat_image_edit"].startswith("LongCat-Image Edit"), timeout=TIMEOUT_MS)
    assert integration.tasks.library.get("model", "longcat_image_edit").chosen_variant == "edit"
    dialog.tabs.setCurrentIndex(dialog.tabs.indexOf(dialog.tables["lora"]))
    assert not dialog.variant_button.isVisible()
    dialog.close()


def test_the_variant_button_is_offered_for_an_ernie_folder_and_not_for_folders_that_say(studio, integration, qtbot,
                                                                                        tmp_path):  # fmt: skip
    """ERNIE-Image-Turbo's folder has the base's pipeline and configs, so the user says which it is; a LongCat-Image
    folder's pipeline class says whether it is the Edit model, so it offers no choice."""
    from tests.support.tiny_ernie import build_tiny_ernie
    from tests.support.tiny_longcat import build_tiny_longcat

    for name, build in (("ernie-folder", build_tiny_ernie), ("longcat-folder", build_tiny_longcat)):
        build().save_pretrained(str(tmp_path / name), safe_serialization=True)
        integration.tasks.library.import_path(tmp_path / name, "model")
    dialog = integration.show_dialog()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: dialog.select("model", "ernie-folder"), timeout=TIMEOUT_MS)
    assert dialog.variant_button.isVisible() and dialog.variant_button.isEnabled()
    assert dialog.select("model", "longcat-folder")
    assert dialog.variant_button.isVisible() and not dialog.variant_button.isEnabled()
    dialog.close()


def test_a_variant_chosen_in_the_library_reaches_the_windows_family_and_reference_rows(studio, integration, qtbot,
                                                                                      tmp_path):  # fmt: skip
    """A Qwen-Image file marked as Edit Plus: the window's models scan gives it Edit Plus's family (its defaults and
    text encoders) and its two reference images beside the source, as the job will run it."""
    from tests.support.tiny_qwen_edit import build_tiny_qwen_edit
    from tests.support.tiny_qwen_zimage import save_transformer_file

    state = dict(build_tiny_qwen_edit().transformer.state_dict())
    file = save_transformer_file(state, studio.paths.models / "qwen_edit_2509.safetensors",
                                 prefix="model.diffusion_model.")  # fmt: skip
    window = studio.window
    with qtbot.waitSignal(window.families_listed, timeout=TIMEOUT_MS) as listed:
        window.refresh_models()
    assert listed.args[0]["qwen_edit_2509"] == "qwen-image"
    with qtbot.waitSignal(window.families_listed, timeout=TIMEOUT_MS) as listed:
        integration.tasks.choose_variant("qwen_edit_2509", "edit-plus")  # hashes the hand-put file, then rescans
    assert listed.args[0]["qwen_edit_2509"] == "qwen-image-edit-plus"
    assert integration.tasks.library.chosen_variant_of(file) == "edit-plus"
    panel = window.parameter_panel
    qtbot.waitUntil(lambda: panel.model_combo.findText("qwen_edit_2509") >= 0, timeout=TIMEOUT_MS)
    panel.model_combo.setCurrentIndex(panel.model_combo.findText("qwen_edit_2509"))
    qtbot.waitUntil(lambda: panel.references_row.isVisibleTo(panel), timeout=TIMEOUT_MS)
    panel.references_row.add_images([str(file)] * 3)  # not pictures, but the limit is checked first
    assert "at most 2" in panel.references_row.problem.text()
