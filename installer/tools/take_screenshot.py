"""Render the README screenshot: the real window, offscreen, after one real job on a tiny model.

    QT_QPA_PLATFORM=offscreen .venv/bin/python installer/tools/take_screenshot.py resources/screenshot.png
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

from desktop.app import apply_theme, build_main_window, diffusers_runner_factory  # noqa: E402
from desktop.engine.library.catalog import ModelCatalog  # noqa: E402
from desktop.engine.outputs import ImageWriter  # noqa: E402
from desktop.engine.paths import AppPaths  # noqa: E402
from desktop.engine.resources import Resources  # noqa: E402
from tests.support import tiny_models  # noqa: E402


def main(target: Path) -> int:
    home = Path(tempfile.mkdtemp(prefix="marble-shot-"))
    paths = AppPaths.for_root(home).ensure()
    tiny_models.save_diffusers(tiny_models.build_tiny_sd15(), paths.models / "tiny-sd15")
    app = QApplication([])
    apply_theme(app)
    catalog = ModelCatalog(paths.models)
    factory = diffusers_runner_factory(paths, Resources.default(), catalog, ImageWriter(paths.outputs))
    window, controller = build_main_window(paths, factory, catalog)
    window.resize(1280, 800)
    window.show()
    panel = window.parameter_panel
    panel.width_spin.setValue(256)
    panel.height_spin.setValue(256)
    panel.steps_spin.setValue(20)
    panel.seed_spin.setValue(42)
    panel.sampler_combo.setCurrentText("DPM++ 2M Karras")
    window.prompt_editor.prompt_edit.setPlainText("a large red circle on a blue background, studio light")
    window.prompt_editor.negative_edit.setPlainText("blurry, text")

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
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "resources/screenshot.png")))
