"""A history database that cannot be opened: the window opens anyway and says why, and how to recover."""

from __future__ import annotations

from pathlib import Path

from desktop.app import build_app_window
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources


def test_the_window_opens_with_a_message_over_a_damaged_database(qtbot, tmp_path: Path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    paths.history_db.parent.mkdir(parents=True)
    paths.history_db.write_bytes(b"garbage" * 500)
    window, controller, history = build_app_window(paths, Resources.default())
    try:
        qtbot.addWidget(window)
        assert history is None
        assert "damaged" in window.message_bar.text() and not window.message_bar.isHidden()
    finally:
        controller.shutdown()
