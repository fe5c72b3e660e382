"""Ctrl+Up / Ctrl+Down weights in the prompt editor: the text edit on strings, then the real widget."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor

from desktop.engine.prompt_syntax import parse_prompt
from desktop.ui.prompt_editor import PromptEditor
from desktop.ui.prompt_weights import adjust_weight

pytestmark = pytest.mark.qt_log_level_fail("WARNING")


def edited(text: str, start: int, end: int, delta: float) -> tuple[str, str]:
    """(new text, the selected part of it)."""
    edit = adjust_weight(text, start, end, delta)
    assert edit is not None
    new = edit.apply(text)
    return new, new[edit.selection_start : edit.selection_end]


def test_a_selection_is_wrapped_and_its_weight_moves_by_a_tenth() -> None:
    text = "a red fox, snow"
    assert edited(text, 2, 9, 0.1) == ("a (red fox:1.1), snow", "red fox")
    assert edited(text, 2, 9, -0.1) == ("a (red fox:0.9), snow", "red fox")
    assert edited("a (red fox:1.1), snow", 3, 10, 0.1) == ("a (red fox:1.2), snow", "red fox")
    assert edited("a (red fox:1.1), snow", 3, 10, -0.1) == ("a red fox, snow", "red fox")  # back at 1


def test_without_a_selection_the_word_or_the_group_at_the_cursor_is_the_target() -> None:
    assert edited("a red fox", 4, 4, 0.1) == ("a (red:1.1) fox", "red")
    assert edited("a (red fox:1.5), snow", 8, 8, -0.1) == ("a (red fox:1.4), snow", "red fox")
    assert edited("(masterpiece:1.2)", 0, 0, 0.1) == ("(masterpiece:1.3)", "masterpiece")
    assert edited("a red fox", 1, 1, 0.1)[0] == "(a:1.1) red fox"  # at the end of a word: that word
    assert adjust_weight("a  red", 2, 2, 0.1) is None  # between two spaces: nothing to weigh
    assert adjust_weight("", 0, 0, 0.1) is None


def test_surrounding_spaces_stay_outside_and_weights_stay_in_range() -> None:
    assert edited("a  red  fox", 1, 7, 0.1) == ("a  (red:1.1)  fox", "red")
    assert edited("(red:0.1)", 1, 4, -0.1)[0] == "(red:0.0)"
    assert edited("(red:0.0)", 1, 4, -0.1)[0] == "(red:0.0)"
    assert edited("(red:9.95)", 1, 4, 0.1)[0] == "(red:10.0)"


def test_what_it_writes_parses_to_the_weight_it_shows() -> None:
    text = "a red fox"
    for _ in range(3):
        text = edited(text, 2, 5, 0.1)[0] if "(" not in text else edited(text, 3, 6, 0.1)[0]
    assert text == "a (red:1.3) fox"
    assert [(piece.text, round(piece.weight, 4)) for piece in parse_prompt(text)] == [
        ("a ", 1.0), ("red", 1.3), (" fox", 1.0)
    ]  # fmt: skip


def test_ctrl_up_and_down_in_the_editor_and_ctrl_z_undoes(qtbot) -> None:
    editor = PromptEditor()
    qtbot.addWidget(editor)
    editor.set_prompts("a 🦊 red fox")
    edit = editor.prompt_edit
    cursor = edit.textCursor()
    cursor.setPosition(5)  # inside "red", after the emoji (two UTF-16 units in Qt)
    edit.setTextCursor(cursor)
    qtbot.keyClick(edit, Qt.Key.Key_Up, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(edit, Qt.Key.Key_Up, Qt.KeyboardModifier.ControlModifier)
    assert editor.prompt() == "a 🦊 (red:1.2) fox"
    assert edit.textCursor().selectedText() == "red"
    qtbot.keyClick(edit, Qt.Key.Key_Down, Qt.KeyboardModifier.ControlModifier)
    assert editor.prompt() == "a 🦊 (red:1.1) fox"
    qtbot.keyClick(edit, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert editor.prompt() == "a 🦊 (red:1.2) fox"
    # Plain Up still moves the cursor and changes nothing.
    edit.moveCursor(QTextCursor.MoveOperation.End)
    qtbot.keyClick(edit, Qt.Key.Key_Up)
    assert editor.prompt() == "a 🦊 (red:1.2) fox"
