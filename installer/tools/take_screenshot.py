"""Render the README screenshot: the real window, offscreen, after a first start and one real job on
the shipped demo model.

    QT_QPA_PLATFORM=offscreen .venv/bin/python installer/tools/take_screenshot.py docs/screenshot.png
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from desktop.app import apply_theme, build_main_window, diffusers_runner_factory, install_demo  # noqa: E402
from desktop.engine.library.catalog import ModelCatalog  # noqa: E402
from desktop.engine.outputs import ImageWriter  # noqa: E402
from desktop.engine.paths import AppPaths  # noqa: E402
from desktop.engine.resources import Resources  # noqa: E402


def main(target: Path) -> int:
    home = Path(tempfile.mkdtemp(prefix="marble-shot-"))
    paths = AppPaths.for_root(home).ensure()
    install_demo(paths, Resources.default())
    app = QApplication([])
    apply_theme(app)
    catalog = ModelCatalog(paths.models)
    factory = diffusers_runner_factory(paths, Resources.default(), catalog, ImageWriter(paths.outputs))
    window, controller = build_main_window(paths, factory, catalog)
    window.resize(1280, 800)
    window.show()
    panel = window.parameter_panel
    panel.steps_spin.setValue(20)
    panel.seed_spin.setValue(42)
    window.prompt_editor.prompt_edit.setPlainText("a large yellow circle in the centre on a blue background")

    def shoot(_event: object) -> None:
        QTimer.singleShot(300, lambda: (window.grab().save(str(target)), app.quit()))

    controller.job_finished.connect(shoot)
    controller.job_failed.connect(lambda event: (print(event.message), app.quit()))
    QTimer.singleShot(500, lambda: panel.selected_model() and window.generate())
    app.exec()
    controller.shutdown()
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png")))
