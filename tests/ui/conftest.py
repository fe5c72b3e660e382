"""Window test fixtures: the real controller, worker, runner and writer, over a scripted fake backend.

`studio` builds the window exactly as the app does (`build_main_window`), under a temporary home, and
always shuts the controller down. `no_qthread_left_running` (autouse) fails any test after which a
QThread it started is still running.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import QThread

import desktop
from desktop.app import build_main_window
from desktop.bridge.controller import GenerationController
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.runner import JobRunner
from desktop.ui.main_window import MainWindow
from tests.support.fake_backend import FakeBackend

# tests/conftest.py sets these before Qt loads; kept here so this folder also runs on its own.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAKE_MODEL = "fake-model"
FAKE_STEPS = 4
TIMEOUT_MS = 10_000

# Threads that would not stop: kept referenced, because destroying a running QThread aborts the run.
_unstoppable: list[QThread] = []


@pytest.fixture(autouse=True)
def no_qthread_left_running(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    started: list[QThread] = []
    original_start = QThread.start

    def recording_start(thread: QThread, *args: object) -> None:
        started.append(thread)
        original_start(thread, *args)

    monkeypatch.setattr(QThread, "start", recording_start)
    yield
    running = [thread for thread in started if shiboken6.isValid(thread) and thread.isRunning()]
    if running:
        names = [thread.objectName() or repr(thread) for thread in running]
        for thread in running:
            thread.quit()
            thread.wait(5000)
        _unstoppable.extend(running)
        pytest.fail(f"the test left QThreads running: {names}; shut the controller down in every test")


@dataclass(frozen=True)
class Studio:
    window: MainWindow
    controller: GenerationController
    backend: FakeBackend
    paths: AppPaths
    model_name: str = FAKE_MODEL

    def output_files(self) -> list[Path]:
        """Every file under outputs/, temporary ones included (a cancelled job must leave none)."""
        return sorted(path for path in self.paths.outputs.rglob("*") if path.is_file())


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend(steps=FAKE_STEPS)


@pytest.fixture
def studio(qtbot, tmp_path: Path, fake_backend: FakeBackend) -> Iterator[Studio]:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    # The catalog lists by name and layout; the fake backend never reads the file.
    (paths.models / f"{FAKE_MODEL}.safetensors").write_bytes(b"")
    writer = ImageWriter(paths.outputs)
    window, controller = build_main_window(
        paths, lambda: JobRunner(fake_backend, writer, desktop.__version__)
    )
    try:
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        window.activateWindow()
        qtbot.waitUntil(window.isActiveWindow, timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: window.parameter_panel.selected_model() == FAKE_MODEL, timeout=TIMEOUT_MS)
        yield Studio(window, controller, fake_backend, paths)
    finally:
        # Cancels a job still running (the fake backend polls its token, so it lets go) and joins the thread.
        controller.shutdown()
        window.wait_for_background()


def answer_library_choice(monkeypatch: pytest.MonkeyPatch, answer: str) -> list[tuple[list[str], int]]:
    """The library dialog's next questions (QInputDialog.getItem) answered with the choice labelled `answer`;
    returns the list each question's (labels, preselected index) is added to."""
    from desktop.ui.dialogs import library_dialog

    offered: list[tuple[list[str], int]] = []

    def pick(parent, title, label, items, current, editable):
        offered.append((list(items), current))
        return answer, True

    monkeypatch.setattr(library_dialog.QInputDialog, "getItem", pick)
    return offered
