"""The prompt fields' token counters (A1111's "12/75"), with the real merges file, in the real window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtGui import QTextCursor
from safetensors.numpy import save_file

from desktop.engine.request import GenerationRequest
from desktop.engine.resources import TOKENIZER_FOLDER, Resources
from desktop.engine.token_count import TokenCounter
from desktop.ui.prompt_editor import PromptEditor

MERGES = Resources.default().tokenizers / TOKENIZER_FOLDER / "merges.txt"
TIMEOUT_MS = 5000


def test_each_field_counts_its_tokens_once_typing_pauses(qtbot) -> None:
    editor = PromptEditor()
    qtbot.addWidget(editor)
    editor.show()
    editor.set_prompts("a red fox", "blurry")
    assert editor.prompt_count.isHidden()  # no counter yet: no count, rather than a wrong one
    editor.set_token_counter(TokenCounter.from_merges_file(MERGES))
    assert not editor.prompt_count.isHidden()
    assert (editor.prompt_count.text(), editor.negative_count.text()) == ("3/75", "1/75")
    editor.prompt_edit.moveCursor(QTextCursor.MoveOperation.End)
    qtbot.keyClicks(editor.prompt_edit, " cat" * 73)
    qtbot.waitUntil(lambda: editor.prompt_count.text() == "76/150", timeout=TIMEOUT_MS)
    editor.negative_edit.setPlainText("(blurry:1.4) BREAK lowres")
    qtbot.waitUntil(lambda: editor.negative_count.text() == "3/150", timeout=TIMEOUT_MS)  # blurry, low, res
    # Prompt editing and AND count their longest variant; in the negative field AND is a word.
    editor.set_prompts("[a red fox:cat:0.5] AND dog", "blurry AND ugly")
    qtbot.waitUntil(lambda: editor.prompt_count.text() == "3/75", timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: editor.negative_count.text() == "3/75", timeout=TIMEOUT_MS)


def test_the_window_loads_the_counter_in_the_background(studio, qtbot) -> None:
    editor = studio.window.prompt_editor
    editor.set_prompts("a lighthouse at dusk, oil painting")
    studio.window.load_token_counter(MERGES)
    qtbot.waitUntil(lambda: not editor.prompt_count.isHidden(), timeout=TIMEOUT_MS)
    assert editor.prompt_count.text() == "7/75"


def test_an_unreadable_merges_file_leaves_the_fields_without_counts(studio, qtbot, tmp_path: Path) -> None:
    window = studio.window
    window.load_token_counter(tmp_path / "missing.txt")
    window.wait_for_background()
    qtbot.wait(100)  # the pool's queued signal, had it carried a counter, would have arrived
    assert window.prompt_editor.prompt_count.isHidden()
    assert window.prompt_editor.negative_count.isHidden()


def _embedding(path: Path, vectors: int) -> Path:
    save_file({"emb_params": np.zeros((vectors, 768), dtype=np.float32)}, str(path))
    return path


def test_an_embedding_name_counts_as_its_vectors_and_follows_the_library(studio, qtbot, tmp_path: Path) -> None:
    window = studio.window
    editor = window.prompt_editor
    studio.paths.embeddings.mkdir(parents=True, exist_ok=True)
    _embedding(studio.paths.embeddings / "glowstyle.safetensors", 6)
    editor.set_prompts("a cat, glowstyle", "inkwash")
    window.load_token_counter(MERGES, studio.paths.embeddings)
    qtbot.waitUntil(lambda: editor.prompt_count.text() == "9/75", timeout=TIMEOUT_MS)  # a, cat, comma, 6 vectors
    assert editor.negative_count.text() == "2/75"  # ink, wash: not in the library yet
    # Imported through the library, a new embedding counts at once, without typing.
    tasks = window.library_integration.tasks
    try:
        tasks.import_path(str(_embedding(tmp_path / "inkwash.safetensors", 3)))
        qtbot.waitUntil(lambda: editor.negative_count.text() == "3/75", timeout=TIMEOUT_MS)
    finally:
        tasks.shutdown()


def test_with_emphasis_none_brackets_and_break_count_as_words(studio, qtbot) -> None:
    window = studio.window
    editor, panel = window.prompt_editor, window.parameter_panel
    editor.set_prompts("a cat", "(blurry:1.4) BREAK lowres")
    window.load_token_counter(MERGES)
    qtbot.waitUntil(lambda: editor.negative_count.text() == "3/150", timeout=TIMEOUT_MS)  # BREAK: a 2nd chunk
    # As the backend will read it: ( blurry : 1 . 4 ) break low res, one chunk.
    panel.emphasis_combo.setCurrentIndex(panel.emphasis_combo.findData("None"))
    assert editor.negative_count.text() == "10/75"
    assert editor.prompt_count.text() == "2/75"
    # A request shown from history brings its emphasis, and the count follows it.
    panel.model.set_from_request(GenerationRequest(prompt="a cat", model=studio.model_name, emphasis="Original"))
    assert panel.emphasis_combo.currentData() == "Original"
    assert editor.negative_count.text() == "3/150"


def test_the_counter_follows_how_the_chosen_family_reads_a_prompt(studio, qtbot) -> None:
    """A1111's chunks for the UNet families; for Flux.1 and SD3 the CLIP window read once (no second chunk)
    with T5's limit in the tooltip; no CLIP count for a family no CLIP encoder reads (Qwen-Image)."""
    window = studio.window
    panel, editor = window.parameter_panel, window.prompt_editor
    window.load_token_counter(MERGES)
    qtbot.waitUntil(lambda: not editor.prompt_count.isHidden(), timeout=TIMEOUT_MS)
    editor.set_prompts("cat " * 80, "blurry")
    panel.set_families({"sd": "sd1", "dev": "flux-dev", "qwen": "qwen-image"})
    panel.set_models(["sd", "dev", "qwen"], "/models")
    for name, prompt_text, tooltip in (("sd", "80/150", "another chunk"), ("dev", "80/75", "up to 512"),
                                       ("sd", "80/150", "another chunk")):  # fmt: skip
        panel.model_combo.setCurrentIndex(panel.model_combo.findText(name))
        qtbot.waitUntil(lambda text=prompt_text: editor.prompt_count.text() == text, timeout=TIMEOUT_MS)
        assert tooltip in editor.prompt_count.toolTip() and not editor.prompt_count.isHidden()
        assert editor.negative_count.text() == "1/75"
    panel.model_combo.setCurrentIndex(panel.model_combo.findText("qwen"))
    assert editor.prompt_count.isHidden() and editor.negative_count.isHidden()
