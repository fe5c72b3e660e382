"""The prompt and the negative prompt: two plain-text editors, each with A1111's token counter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import QT_TRANSLATE_NOOP, Qt, QTimer
from PySide6.QtGui import QKeyEvent, QTextCursor
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMenu, QPlainTextEdit, QToolButton, QVBoxLayout, QWidget

from desktop.engine.library.native_size import CLIP_FREE_FAMILIES, T5_TOKENS
from desktop.engine.styles import Style, apply_styles
from desktop.engine.token_count import CHUNK_TOKENS, TokenCounter
from desktop.ui.prompt_weights import STEP, adjust_weight
from desktop.ui.translation import translate

# Translated where shown (translate("PromptEditor", ...)); the constants stay English.
PROMPT_PLACEHOLDER = QT_TRANSLATE_NOOP("PromptEditor", "Describe the image: a marble statue of a cat, soft light")
COUNT_DELAY_MS = 150  # counting waits for a pause in typing: a pasted 5,000-token prompt takes ~20 ms
COUNT_TOOLTIP = QT_TRANSLATE_NOOP(
    "PromptEditor",
    "Tokens used / what the prompt's chunks hold. The text encoder reads {chunk} tokens at a"
    " time; a longer prompt (or BREAK) starts another chunk of {chunk}, encoded on its own and"
    " joined, as in AUTOMATIC1111.",
)
CLIP_ONCE_TOOLTIP = QT_TRANSLATE_NOOP(
    "PromptEditor",
    "CLIP tokens / the {chunk} this model's CLIP encoder reads: it takes no further chunks. Its T5 encoder"
    " reads the whole prompt, up to {limit} of its own tokens; the job says if the prompt is longer.",
)


class PromptEditor(QWidget):
    """Prompt and negative prompt, plain text only (a pasted web page must not become rich text).
    Ctrl+Up / Ctrl+Down raise or lower the selected words' weight, as in A1111. Once a token counter
    is given (`set_token_counter`, loaded off the GUI thread at start-up), each field shows its count.

    The Styles button picks saved styles (`set_styles`), applied only when a job is submitted
    (`styled_prompts`), as A1111 does: the fields keep what the user typed.

    Signals: none; read `styled_prompts()` when a job is submitted.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prompt_edit = _plain_editor("prompt_edit", self.tr(PROMPT_PLACEHOLDER))
        self.negative_edit = _plain_editor("negative_prompt_edit", self.tr("What to avoid: blurry, low quality"))
        self.prompt_edit.setMinimumHeight(90)
        self.negative_edit.setMinimumHeight(50)
        prompt_label = QLabel(self.tr("&Prompt"))
        prompt_label.setBuddy(self.prompt_edit)
        negative_label = QLabel(self.tr("&Negative prompt"))
        negative_label.setBuddy(self.negative_edit)

        self.prompt_count = _TokenCount(self.prompt_edit, "prompt_token_count", self)
        self.negative_count = _TokenCount(self.negative_edit, "negative_token_count", self, negative=True)

        self.styles_button = QToolButton(self)
        self.styles_button.setObjectName("styles_button")
        self.styles_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.styles_button.setToolTip(self.tr("Saved styles added to the prompts when you generate "
                                              "(`marble styles import styles.csv` imports A1111's)"))
        self.styles_button.setMenu(QMenu(self.styles_button))
        self._styles: list[Style] = []
        self.set_styles([])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        header = _header(prompt_label, self.prompt_count)
        header.insertWidget(1, self.styles_button)
        layout.addLayout(header)
        layout.addWidget(self.prompt_edit, 3)
        layout.addLayout(_header(negative_label, self.negative_count))
        layout.addWidget(self.negative_edit, 2)

    def set_token_counter(self, counter: TokenCounter) -> None:
        """Show both fields' token counts from now on, counted with `counter`."""
        self.prompt_count.start(counter)
        self.negative_count.start(counter)

    def set_embeddings(self, vectors: Mapping[str, int]) -> None:
        """The library's embeddings changed (name -> vectors): count with them from now on, at once.
        Before a counter is given there is nothing to count; the counter arrives with its own."""
        counter = self.prompt_count.counter
        if counter is not None:
            counter.set_embeddings(vectors)
            self.prompt_count.recount()
            self.negative_count.recount()

    def set_family(self, family: str | None) -> None:
        """Count as the selected model's family reads the prompt (`model_family`; None when unknown): A1111's
        chunks for the UNet families, CLIP's one window beside T5 for Flux.1 and SD3, no counter where no CLIP
        encoder reads it (Chroma, Qwen-Image, Z-Image, Flux.2)."""
        limit = T5_TOKENS.get(family or "")  # CLIP read once beside T5 (`native_size`)
        hidden = (family or "").startswith(CLIP_FREE_FAMILIES)  # no CLIP count would mean anything
        for count in (self.prompt_count, self.negative_count):
            count.set_window(limit, hidden)

    def set_emphasis(self, emphasis: str) -> None:
        """Count as the next job will read the prompts: with emphasis "None" brackets are words."""
        for count in (self.prompt_count, self.negative_count):
            count.emphasis = emphasis
            count.recount()

    def set_model_hint(self, hint: str) -> None:
        """Say in the empty prompt field what the selected model can draw ("" for the general hint):
        a model that knows only a few things (the demo model) says which."""
        self.prompt_edit.setPlaceholderText(hint or self.tr(PROMPT_PLACEHOLDER))

    def prompt(self) -> str:
        return self.prompt_edit.toPlainText()

    def negative_prompt(self) -> str:
        return self.negative_edit.toPlainText()

    def set_styles(self, styles: Sequence[Style]) -> None:
        """The saved styles to offer; those checked before stay checked when still offered."""
        checked = set(self.checked_styles())
        self._styles = list(styles)
        menu = self.styles_button.menu()
        menu.clear()
        for style in self._styles:
            action = menu.addAction(style.name)
            action.setCheckable(True)
            action.setChecked(style.name in checked)
            action.setToolTip(self.tr("{prompt}\nNegative: {negative}").format(prompt=style.prompt,
                                                                              negative=style.negative_prompt))
            action.toggled.connect(self._show_style_count)
        self.styles_button.setEnabled(bool(self._styles))
        self._show_style_count()

    def checked_styles(self) -> list[str]:
        return [action.text() for action in self.styles_button.menu().actions() if action.isChecked()]

    def set_checked_styles(self, names: Sequence[str]) -> None:
        for action in self.styles_button.menu().actions():
            action.setChecked(action.text() in names)

    def styled_prompts(self) -> tuple[str, str]:
        """The prompt and negative prompt with the checked styles applied, in the menu's order."""
        checked = set(self.checked_styles())
        return apply_styles(self.prompt(), self.negative_prompt(), [s for s in self._styles if s.name in checked])

    def _show_style_count(self) -> None:
        count = len(self.checked_styles())
        self.styles_button.setText(self.tr("Styles ({count})").format(count=count) if count else self.tr("Styles"))

    def set_prompts(self, prompt: str, negative_prompt: str = "") -> None:
        self.prompt_edit.setPlainText(prompt)
        self.negative_edit.setPlainText(negative_prompt)


class _TokenCount(QLabel):
    """A field's "12/75" (tokens over what its chunks hold), hidden until there is a counter. Counted
    on the GUI thread after a pause in typing. Signals: QLabel's."""

    def __init__(self, editor: QPlainTextEdit, name: str, parent: QWidget, negative: bool = False) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self.setToolTip(translate("PromptEditor", COUNT_TOOLTIP).format(chunk=CHUNK_TOKENS))
        self.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.hide()
        self._editor = editor
        self._negative = negative  # a negative prompt has no AND parts
        self._counter: TokenCounter | None = None
        self.emphasis = "Original"  # request.EMPHASIS_MODES; PromptEditor.set_emphasis keeps it
        self._once: int | None = None  # CLIP read once beside a long encoder of this many tokens (Flux.1, SD3)
        self._hidden = False  # no CLIP encoder reads the prompt: no count to show
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(COUNT_DELAY_MS)
        self._timer.timeout.connect(self.recount)
        editor.textChanged.connect(self._timer.start)

    @property
    def counter(self) -> TokenCounter | None:
        return self._counter

    def start(self, counter: TokenCounter) -> None:
        self._counter = counter
        self.recount()
        self.setVisible(not self._hidden)

    def set_window(self, once: int | None, hidden: bool) -> None:
        """`once`: the long encoder's tokens when CLIP reads the prompt once (its count is then over 75, never
        over chunks); `hidden`: no CLIP reads the prompt."""
        self._once, self._hidden = once, hidden
        tooltip = COUNT_TOOLTIP if once is None else CLIP_ONCE_TOOLTIP
        self.setToolTip(translate("PromptEditor", tooltip).format(chunk=CHUNK_TOKENS, limit=once))
        self.setVisible(self._counter is not None and not hidden)
        self.recount()

    def recount(self) -> None:
        if self._counter is not None:
            length = self._counter.measure(self._editor.toPlainText(), self.emphasis, self._negative)
            self.setText(f"{length.tokens}/{CHUNK_TOKENS if self._once else length.capacity}")


def _header(label: QLabel, count: QLabel) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(label)
    row.addStretch(1)
    row.addWidget(count)
    return row


class _PromptTextEdit(QPlainTextEdit):
    """A plain-text prompt field where Ctrl+Up / Ctrl+Down change a weight. Signals: QPlainTextEdit's."""

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        steps = {Qt.Key.Key_Up: STEP, Qt.Key.Key_Down: -STEP}
        if event.modifiers() == Qt.KeyboardModifier.ControlModifier and event.key() in steps:
            self._adjust_weight(steps[event.key()])
            return
        super().keyPressEvent(event)

    def _adjust_weight(self, delta: float) -> None:
        cursor = self.textCursor()
        old = self.toPlainText()
        start, end = (_index_of(old, cursor.selectionStart()), _index_of(old, cursor.selectionEnd()))
        edit = adjust_weight(old, start, end, delta)
        if edit is None:
            return
        new = edit.apply(old)
        cursor.beginEditBlock()  # one undo step, so Ctrl+Z takes the change back
        cursor.setPosition(_qt_position(old, edit.start))
        cursor.setPosition(_qt_position(old, edit.end), QTextCursor.MoveMode.KeepAnchor)
        cursor.insertText(edit.replacement)
        cursor.endEditBlock()
        cursor.setPosition(_qt_position(new, edit.selection_start))
        cursor.setPosition(_qt_position(new, edit.selection_end), QTextCursor.MoveMode.KeepAnchor)
        self.setTextCursor(cursor)


# Qt counts positions in UTF-16 units, Python in code points: they differ after an emoji.
def _qt_position(text: str, index: int) -> int:
    return index + sum(1 for char in text[:index] if ord(char) > 0xFFFF)


def _index_of(text: str, position: int) -> int:
    index = units = 0
    while index < len(text) and units < position:
        units += 2 if ord(text[index]) > 0xFFFF else 1
        index += 1
    return index


def _plain_editor(name: str, placeholder: str) -> QPlainTextEdit:
    editor = _PromptTextEdit()
    editor.setObjectName(name)
    editor.setPlaceholderText(placeholder)
    # Tab moves focus on to the next field, as in a form; prompts have no use for tab characters.
    editor.setTabChangesFocus(True)
    return editor
