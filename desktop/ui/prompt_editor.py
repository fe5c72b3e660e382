"""The prompt and the negative prompt: two plain-text editors."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget


class PromptEditor(QWidget):
    """Prompt and negative prompt, plain text only (a pasted web page must not become rich text).

    Signals: none; read `prompt()` and `negative_prompt()` when a job is submitted.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prompt_edit = _plain_editor(
            "prompt_edit", "Describe the image: a marble statue of a cat, soft light"
        )
        self.negative_edit = _plain_editor("negative_prompt_edit", "What to avoid: blurry, low quality")
        self.prompt_edit.setMinimumHeight(90)
        self.negative_edit.setMinimumHeight(50)
        prompt_label = QLabel("&Prompt")
        prompt_label.setBuddy(self.prompt_edit)
        negative_label = QLabel("&Negative prompt")
        negative_label.setBuddy(self.negative_edit)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(prompt_label)
        layout.addWidget(self.prompt_edit, 3)
        layout.addWidget(negative_label)
        layout.addWidget(self.negative_edit, 2)

    def prompt(self) -> str:
        return self.prompt_edit.toPlainText()

    def negative_prompt(self) -> str:
        return self.negative_edit.toPlainText()

    def set_prompts(self, prompt: str, negative_prompt: str = "") -> None:
        self.prompt_edit.setPlainText(prompt)
        self.negative_edit.setPlainText(negative_prompt)


def _plain_editor(name: str, placeholder: str) -> QPlainTextEdit:
    editor = QPlainTextEdit()
    editor.setObjectName(name)
    editor.setPlaceholderText(placeholder)
    # Tab moves focus on to the next field, as in a form; prompts have no use for tab characters.
    editor.setTabChangesFocus(True)
    return editor
