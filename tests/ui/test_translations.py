"""The window's strings are ready for translators: extracted, and every one goes through Qt's translation.

(a) resources/translations/marble_en.ts is what lupdate extracts from the code today.
(b) A pseudo-translation (every string "⟦…⟧") is compiled with lrelease and installed before the real
window is built: every text the modules in TRANSLATED_MODULES put on screen must then come out
bracketed. A string left unwrapped (or wrapped in the wrong context) stays bare English and fails.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QCoreApplication, QObject, QTranslator
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QDialogButtonBox,
    QGraphicsSimpleTextItem,
    QLabel,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QProgressBar,
    QSpinBox,
    QTableWidget,
    QTabWidget,
    QWidget,
)

import desktop
from desktop.app import build_main_window, open_history
from desktop.engine.history import HistoryStore
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.runner import JobRunner
from desktop.engine.settings import SETTINGS, SettingsStore
from desktop.engine.styles import Style
from desktop.ui.canvas.toolbar import MODES
from desktop.ui.dialogs.settings_dialog import SETTING_TEXTS, SettingsDialog
from desktop.ui.history_detail import HistoryDetailView
from desktop.ui.main_window import MainWindow
from tests.support.fake_backend import FakeBackend

ROOT = Path(__file__).resolve().parents[2]
EXTRACT = ROOT / "installer" / "tools" / "extract_strings.py"
SOURCE_TS = ROOT / "resources" / "translations" / "marble_en.ts"

# The modules whose strings have been wrapped (issue 24, first pass); the second pass extends the list.
TRANSLATED_MODULES = [
    "desktop.ui.queue_panel",
    "desktop.ui.job_status",
    "desktop.ui.history_filters",
    "desktop.ui.history_recovery",
    "desktop.ui.history_detail",
    "desktop.ui.history_grid",
    "desktop.ui.result_strip",
    "desktop.ui.error_hook",
    "desktop.ui.settings_integration",
    "desktop.ui.dialogs.settings_dialog",
    "desktop.ui.canvas.toolbar",
    "desktop.ui.canvas.view",
    "desktop.ui.canvas.mask_layer",
    "desktop.ui.canvas.picture_view",
    "desktop.ui.lora_list",
    "desktop.ui.text_encoder_row",
    "desktop.ui.session_memory",
    "desktop.ui.background_reads",
    "desktop.ui.theme",
    "desktop.ui.dialogs.png_info_dialog",
    # Second pass.
    "desktop.ui.main_window",
    "desktop.ui.window_actions",
    "desktop.ui.parameter_panel",
    "desktop.ui.prompt_editor",
    "desktop.ui.history_panel",
    "desktop.ui.dialogs.library_dialog",
    "desktop.app",
    "desktop.ui.dialogs.plot_dialog",
    "desktop.ui.control_list",
    "desktop.ui.canvas.control_layer",
    "desktop.ui.control_drawing",
]
# Checked and left out: prompt_weights and parameter_model show no text; self_test writes the log (English,
# as the engine's messages and the CLI); translation holds none.
# Widget helpers that show whatever text their maker gives them: a text belongs to the module that
# made the widget, found up the parent chain.
TEXT_FREE_MODULES = {"desktop.ui.elided_label", "desktop.ui.flow_layout"}
# Not words: numbers ("0.75"), symbols ("✕"); data, not language.
NOT_WORDS = re.compile(r"^[\W\d_]*$")


def _lupdate() -> str | None:
    return shutil.which("pyside6-lupdate") or _beside_python("pyside6-lupdate")


def _lrelease() -> str | None:
    return shutil.which("pyside6-lrelease") or _beside_python("pyside6-lrelease")


def _beside_python(name: str) -> str | None:
    tool = Path(sys.executable).with_name(name)
    return str(tool) if tool.is_file() else None


# ------------------------------------------------------------------------------------------- (a)


def test_the_english_source_is_up_to_date():
    if _lupdate() is None:
        pytest.skip("pyside6-lupdate is not installed (it comes with PySide6's tools): cannot extract strings")
    result = subprocess.run([sys.executable, str(EXTRACT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, (
        "resources/translations/marble_en.ts is out of date; run installer/tools/extract_strings.py\n"
        + result.stdout + result.stderr
    )


def test_every_declared_setting_text_is_listed_for_extraction():
    # The settings' declarations are Qt-free, so lupdate cannot see them: the dialog module lists them.
    declared = set()
    for setting in SETTINGS:
        declared |= {setting.title, setting.help, *(label for _, label in setting.choices)}
        if setting.minimum_label:
            declared.add(setting.minimum_label)
    assert declared - set(SETTING_TEXTS) == set()


# ------------------------------------------------------------------------------------------- (b)


def pseudo_ts(source: Path, target: Path) -> None:
    """`source` with every translation set to "⟦" + source + "⟧" ({placeholders} are kept as they are)."""
    tree = ElementTree.parse(source)
    for message in tree.getroot().iter("message"):
        text = message.findtext("source") or ""
        translation = message.find("translation")
        assert translation is not None
        translation.attrib.pop("type", None)  # "unfinished" would make lrelease skip it
        translation.text = f"⟦{text}⟧"
    tree.write(target, encoding="utf-8", xml_declaration=True)


@pytest.fixture
def pseudo_translation(qapp, tmp_path: Path) -> Iterator[QTranslator]:
    """Installed on the application before the window is built (request it before `studio`); removed
    after the test, so other tests see English."""
    if _lrelease() is None:
        pytest.skip("pyside6-lrelease is not installed (it comes with PySide6's tools): cannot compile a .qm")
    ts, qm = tmp_path / "marble_pseudo.ts", tmp_path / "marble_pseudo.qm"
    pseudo_ts(SOURCE_TS, ts)
    subprocess.run([_lrelease(), str(ts), "-qm", str(qm)], check=True, capture_output=True)
    translator = QTranslator()
    assert translator.load(str(qm)), qm
    QCoreApplication.installTranslator(translator)
    try:
        yield translator
    finally:
        QCoreApplication.removeTranslator(translator)


@pytest.fixture
def full_window(pseudo_translation, qtbot, tmp_path: Path) -> Iterator[MainWindow]:
    """The real window as the app builds it, with its history panel and its settings (so every module
    of the window is in it), built after the pseudo-translation is installed."""
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    (paths.models / "fake-model.safetensors").write_bytes(b"")
    write_safetensors(paths.loras / "ink.safetensors", {"lora_unet_down.lora_down.weight": [1.0]}, {"ss_note": "x"})
    history = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    writer = ImageWriter(paths.outputs)
    window, controller = build_main_window(
        paths, lambda: JobRunner(FakeBackend(steps=2), writer, desktop.__version__, history), history=history,
        settings=SettingsStore.open(paths.settings_file),
    )
    try:
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        yield window
    finally:
        controller.shutdown()
        window.wait_for_background()
        if window.history_panel is not None:
            window.history_panel.model.wait_for_background()
        history.close_all()


def write_safetensors(path: Path, tensors: dict[str, list[float]], metadata: dict[str, str]) -> Path:
    """A small real .safetensors file (float32 vectors), written by hand: no torch in this test."""
    header: dict[str, object] = {"__metadata__": metadata}
    data = b""
    for name, values in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def owner_module(widget: QObject) -> str:
    """The desktop module that made `widget`: its own class's, or the nearest ancestor's."""
    current: QObject | None = widget
    while current is not None:
        module = type(current).__module__
        if module.startswith("desktop.") and module not in TEXT_FREE_MODULES:
            return module
        current = current.parent()
    return ""


def widget_texts(widget: QWidget) -> Iterator[tuple[str, str]]:
    """(what, text) for every text a user can read on `widget` (not its contents: typed or loaded data)."""
    if widget.isWindow():
        yield "window title", widget.windowTitle()
    yield "tooltip", widget.toolTip()
    if isinstance(widget, QLabel):
        yield "label", widget.text()
    if isinstance(widget, QAbstractButton):
        box = widget.parent()
        while box is not None and not isinstance(box, QDialogButtonBox):
            box = box.parent()
        standard = isinstance(box, QDialogButtonBox) and box.standardButton(widget) != box.StandardButton.NoButton
        # Qt's own buttons (OK, Cancel) come from Qt's catalogue; a button showing an action has its text.
        if not standard and getattr(widget, "defaultAction", lambda: None)() is None:
            yield "button", widget.text()
    if isinstance(widget, (QLineEdit, QPlainTextEdit)):
        yield "placeholder", widget.placeholderText()
    if isinstance(widget, QMenu):
        yield "menu", widget.title()
    if isinstance(widget, QTabWidget):
        for index in range(widget.count()):
            yield "tab", widget.tabText(index)
    if isinstance(widget, QTableWidget):
        for column in range(widget.columnCount()):
            header = widget.horizontalHeaderItem(column)
            yield "column", header.text() if header is not None else ""
    if isinstance(widget, QProgressBar) and widget.format() != "%p%":  # Qt's default: the percentage
        yield "progress", widget.format()
    if isinstance(widget, QAbstractSpinBox):
        yield "special value", widget.specialValueText()
    if isinstance(widget, QSpinBox):
        yield "prefix", widget.prefix()
        yield "suffix", widget.suffix()
    if isinstance(widget, QComboBox):
        for index in range(widget.count()):
            # An item showing its own data (a model name) is data, not language.
            if widget.itemText(index) != widget.itemData(index):
                yield "combo item", widget.itemText(index)


def object_texts(item: object) -> Iterator[tuple[str, str]]:
    if isinstance(item, QAction):
        yield "action", item.text()
        yield "action tooltip", item.toolTip()
    elif isinstance(item, QMenu):
        yield "menu", item.title()
    elif isinstance(item, QGraphicsSimpleTextItem):
        yield "scene text", item.text()


def untranslated(roots: list[QWidget], modules: list[str]) -> list[str]:
    """Every text the `modules` made under `roots` that did not come out pseudo-translated."""
    found: list[str] = []

    def check(owner: str, name: str, what: str, text: str) -> None:
        text = text.strip()
        if owner in modules and text and not NOT_WORDS.match(text):
            if not (text.startswith("⟦") and text.endswith("⟧")):
                found.append(f"{owner}: {name} {what}: {text!r}")

    objects: list[QObject] = []
    for root in roots:
        objects += [root, *root.findChildren(QObject)]
    for obj in objects:
        owner = owner_module(obj)
        name = obj.objectName() or type(obj).__name__
        if isinstance(obj, QWidget):
            for what, text in widget_texts(obj):
                check(owner, name, what, text)
        if isinstance(obj, QAction):
            for what, text in object_texts(obj):
                check(owner, name, what, text)
        # Objects of these modules keep what they made (a menu on the window's bar, a scene's text).
        if type(obj).__module__ in modules:
            for attribute, value in vars(obj).items():
                for what, text in object_texts(value):
                    check(type(obj).__module__, f"{name}.{attribute}", what, text)
    return sorted(set(found))


def test_every_text_of_the_translated_modules_goes_through_translation(full_window: MainWindow, tmp_path, qtbot):
    window = full_window
    # The plot dialog's cell count needs a model (without one it shows the engine's own message).
    qtbot.waitUntil(lambda: window.parameter_panel.selected_model() == "fake-model", timeout=10_000)
    toolbar = window.canvas_toolbar
    # Dialogs the window makes on demand, built as it builds them.
    store = window.settings_integration.store
    settings_dialog = SettingsDialog(store.declarations, store.values(), window)
    detail_view = HistoryDetailView((), lambda record: "", window)
    plot_dialog = window.plot_integration.dialog  # its error and cell count are checked below too
    plot_dialog.set_axis(0, "steps", "10,20")
    roots = [window, settings_dialog, detail_view, plot_dialog]
    window.parameter_panel.control_list.add_row()  # a control unit's widgets, and its "no image" texts
    assert window.queue_panel.generate_button.text() == "⟦Generate⟧", "the pseudo-translation is not installed"

    problems: list[str] = []
    hints = set()
    for with_source in (False, True):
        if with_source:
            path = tmp_path / "source.png"
            Image.new("RGB", (64, 48), (200, 90, 40)).save(path)
            assert toolbar.load_source_file(str(path))
        for mode, _ in MODES:
            toolbar.set_mode(mode)
            problems += untranslated(roots, TRANSLATED_MODULES)
            hints.add(toolbar.hint)
    toolbar.set_mode("inpaint")
    toolbar.tool_buttons["brush"].click()
    problems += untranslated(roots, TRANSLATED_MODULES)
    plot_dialog.set_axis(0, "steps", "10,lots")  # the error replaces the count
    problems += untranslated(roots, TRANSLATED_MODULES)
    hints.add(toolbar.hint)
    assert len(hints) == 2 * len(MODES), hints  # each mode, with and without a source, and the brush
    assert sorted(set(problems)) == []


def bracketed(text: str) -> bool:
    return text.startswith("⟦") and text.endswith("⟧")


# The detail view raises itself; the offscreen platform cannot, and says so.
@pytest.mark.qt_log_ignore(r"This plugin does not support raise\(\)")
def test_the_window_s_panels_menus_history_and_library_go_through_translation(full_window: MainWindow, qtbot):
    """Pass 2: the parameter panel (its folded Extra row open), the prompt editor and its Styles, every menu
    and action, the history panel with images (its actions, More menu and details) and the library dialog
    opened as the app opens it."""
    window = full_window
    panel, editor, history = window.parameter_panel, window.prompt_editor, window.history_panel
    assert history is not None
    assert window.windowTitle() == "⟦Marble Studio⟧", "the pseudo-translation is not installed"
    qtbot.waitUntil(lambda: panel.selected_model() == "fake-model", timeout=10_000)
    panel.show_extra(True)
    # A style named with no words (its name is the user's data, shown as it is), checked: "Styles (1)".
    editor.set_styles([Style("✦ 1", "oil painting", "blurry")])
    editor.set_checked_styles(["✦ 1"])
    assert editor.styles_button.text() == "⟦Styles (1)⟧"
    panel.set_last_seed(42)

    editor.set_prompts("a marble cat")
    panel.batch_count_spin.setValue(2)
    with qtbot.waitSignal(window.controller.job_finished, timeout=10_000):
        window.generate()
    qtbot.waitUntil(lambda: history.model.rowCount() == 2, timeout=10_000)
    history.select_rows([0])
    history.open_details()

    window.library_integration.library_action.trigger()  # File > Library..., as a user opens it
    library = window.library_integration.dialog
    assert library is not None and library.isVisible()
    qtbot.waitUntil(lambda: library.tabs.tabText(0).endswith("⟧") and "(" in library.tabs.tabText(0),
                    timeout=10_000)
    qtbot.waitUntil(lambda: library.select("lora", "ink"), timeout=10_000)
    # A tab says "{kind} ({count})" with the kind translated inside the translated sentence.
    tabs = [library.tabs.tabText(index) for index in range(library.tabs.count())]
    assert all(re.fullmatch(r"⟦⟦[^⟧]+⟧ \(\d+\)⟧", tab) for tab in tabs), tabs

    problems = untranslated([window, library, history.detail_view], TRANSLATED_MODULES)
    assert window.menuBar().actions(), "no menus"
    for menu_action in window.menuBar().actions():  # File, Edit, Generate, View, Help and every item in them
        menu = menu_action.menu()
        problems += [f"menu {menu.title()!r}"] if not bracketed(menu.title()) else []
        problems += [f"{menu.title()}: {action.text()!r}" for action in menu.actions()
                     if not action.isSeparator() and not bracketed(action.text())]

    # The details: every "Label: value" line after the prompt block has its label translated ...
    details = history.details.toPlainText()
    labels = [line.split(": ", 1)[0] for line in details.split("\n\n", 1)[1].splitlines()]
    assert "⟦Negative prompt: {negative}⟧".split("{")[0] in details
    problems += [f"details label {label!r}" for label in labels if not bracketed(label)]
    # ... and the detail view, showing the file's own parameters, still adds the lines only the history knows.
    recipe = history.detail_view.recipe.toPlainText()
    assert "\n⟦File⟧: " in recipe and "\n⟦Created⟧: " in recipe, recipe
    # The library's details of the selected entry.
    qtbot.waitUntil(lambda: library.details.toPlainText() != "", timeout=10_000)
    # (Indented lines are the file's own header metadata: data.)
    problems += [f"library details {line!r}" for line in library.details.toPlainText().splitlines()
                 if line and not line.startswith("  ") and not bracketed(line)]
    library.close()
    assert sorted(set(problems)) == []


def test_the_app_s_history_unavailable_message_goes_through_translation(pseudo_translation, tmp_path: Path, capsys):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    paths.history_db.parent.mkdir(parents=True, exist_ok=True)
    paths.history_db.write_bytes(b"garbage" * 500)
    history, problem = open_history(paths)
    assert history is None
    assert problem.startswith("⟦The history is unavailable: ") and problem.endswith("⟧"), problem
    assert "marble-studio: The history is unavailable: " in capsys.readouterr().err  # the log stays English
