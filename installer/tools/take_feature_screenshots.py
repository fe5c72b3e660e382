"""Render the README's "Control and hires fix" screenshots: the real app at 1280x720 (dark theme,
Qt's offscreen rendering) over images the demo model makes through `marble generate`.

    .venv/bin/python installer/tools/take_feature_screenshots.py docs/

writes `screenshot-control.png` (a control unit in the parameter panel: canny on a demo picture, its
preprocessed image shown beside it) and `screenshot-hires.png` (a hires-fixed demo image on the canvas,
the panel's hires fix settings beside it). The control unit's model is ControlNet's `from_unet` copy of
the demo UNet (untrained: the picture shows the unit and its preprocessing, not a control effect).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from installer.tools.take_screenshot import SCREEN_H, SCREEN_W, _env, set_theme  # noqa: E402

PROMPT = ("a large red circle on the left on a blue background", 7)
CONTROL_PROMPT = "a large yellow square in the centre on a green background"
HIRES = ("--hires-scale", "2", "--hires-steps", "10", "--hires-denoise", "0.5", "--hires-upscaler", "Latent")


def make_inputs(home: Path) -> None:
    """The demo model, two demo pictures (one hires-fixed) through the command line, and a control model."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from desktop.app import install_demo
    from desktop.engine.library.index import Library
    from desktop.engine.paths import AppPaths
    from desktop.engine.resources import Resources
    from tests.support.tiny_controls import save_controlnet

    paths = AppPaths.for_root(home).ensure()
    resources = Resources.default()
    install_demo(paths, resources)
    base = [sys.executable, "-m", "desktop", "--home", str(home), "generate", "--model", "marble-demo",
            "--steps", "20", "--seed", str(PROMPT[1])]
    subprocess.run([*base, "--prompt", CONTROL_PROMPT],
                   check=True, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL)
    subprocess.run([*base, "--prompt", PROMPT[0], *HIRES], check=True, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL)
    unet = UNet2DConditionModel.from_pretrained(str(resources.demo_model / "unet"))
    weights = save_controlnet(ControlNetModel.from_unet(unet), home / "demo-controlnet.safetensors")
    Library(paths).import_path(weights, "control")


def shoot(home: Path, folder: Path) -> int:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QScrollArea, QSplitter

    from desktop.app import build_app_window
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import ControlUnit
    from desktop.engine.resources import TOKENIZER_FOLDER, Resources
    from desktop.engine.settings import SettingsStore
    from desktop.ui.theme import apply_theme

    paths = AppPaths.for_root(home).ensure()
    settings = SettingsStore.open(paths.settings_file)
    app = QApplication(["marble-studio"])
    apply_theme(app, settings.get("theme"))
    resources = Resources.default()
    window, controller, history = build_app_window(paths, resources, settings)
    window.setGeometry(0, 0, SCREEN_W, SCREEN_H)
    window.show()
    window.load_token_counter(resources.tokenizers / TOKENIZER_FOLDER / "merges.txt", paths.embeddings)
    images = sorted(paths.outputs.rglob("*.png"), key=lambda path: path.stat().st_mtime)
    # Canny follows brightness: the yellow square on green has the edges to show (red on blue hardly any).
    picture, hires = images[0], images[-1]
    panel = window.parameter_panel
    scroll = panel.parentWidget()
    while scroll is not None and not isinstance(scroll, QScrollArea):
        scroll = scroll.parentWidget()
    started = time.monotonic()

    def ready() -> bool:
        return bool(panel.control_list.names()) and window.history_panel is not None \
            and window.history_panel.view.model().rowCount() >= 2

    def control_shot() -> None:
        if not ready() and time.monotonic() - started < 30:
            QTimer.singleShot(200, control_shot)
            return
        window.prompt_editor.set_prompts(CONTROL_PROMPT, "blurry")
        window.canvas.show_image(str(picture))
        # Wide enough for a control unit's row and its preprocessed image.
        splitter = window.findChild(QSplitter, "main_splitter")
        if splitter is not None:
            splitter.setSizes([700, SCREEN_W - 700])
        row = panel.control_list.add_row(ControlUnit("demo-controlnet", "", preprocessor="canny"))
        assert row is not None
        panel.control_list.use_canvas(row)
        QTimer.singleShot(1500, lambda: capture("control", row))

    def hires_shot() -> None:
        panel.control_list.remove_row(panel.control_list.row(0))
        splitter = window.findChild(QSplitter, "main_splitter")
        if splitter is not None:
            splitter.setSizes([380, SCREEN_W - 380])
        window.prompt_editor.set_prompts(PROMPT[0], "blurry")
        panel.hires_button.setChecked(True)
        panel.hires_check.setChecked(True)
        panel.hires_scale_spin.setValue(2.0)
        panel.hires_steps_spin.setValue(10)
        panel.hires_denoise_spin.setValue(0.5)
        window.canvas.show_image(str(hires))
        QTimer.singleShot(1500, lambda: capture("hires", panel.hires_check))

    def capture(name: str, shown: object) -> None:
        if scroll is not None:
            scroll.ensureWidgetVisible(shown, 0, 40)
            scroll.horizontalScrollBar().setValue(0)
        app.processEvents()
        target = folder / f"screenshot-{name}.png"
        window.grab().save(str(target))
        print(target)
        if name == "control":
            QTimer.singleShot(200, hires_shot)
        else:
            app.quit()

    QTimer.singleShot(500, control_shot)
    app.exec()
    controller.shutdown()
    window.wait_for_background()
    if history is not None:
        history.close_all()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=ROOT / "docs")
    parser.add_argument("--shoot", type=Path, metavar="HOME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shoot:
        return shoot(args.shoot, args.folder.resolve())
    home = Path(tempfile.mkdtemp(prefix="marble-shot-"))
    try:
        make_inputs(home)
        set_theme(home, "dark")
        subprocess.run([sys.executable, __file__, str(args.folder.resolve()), "--shoot", str(home)], check=True,
                       env=_env(QT_QPA_PLATFORM="offscreen"))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
