"""Render the README screenshots: the real app at 1280x720, dark and light, restarted over a history of
real images made by `marble generate` on the shipped demo model.

    .venv/bin/python installer/tools/take_screenshot.py docs/

writes `screenshot-dark.png` and `screenshot-light.png` taken offscreen (Qt's own rendering) and, when
`xvfb-run` and ImageMagick's `import` are installed, `screenshot-dark-x11.png` and
`screenshot-light-x11.png`: the whole screen of a real X server (Xvfb at 1280x720), as a user sees it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SCREEN_W, SCREEN_H = 1280, 720
PROMPTS = (
    ("a large red circle on the left on a blue background", 7),
    ("a small yellow square at the top right on a green background", 11),
    ("two white triangles at the bottom on a purple background", 23),
)
SHOWN_PROMPT = "a large orange triangle in the centre on a black background"


def make_history(home: Path) -> None:
    """A first start's demo model, then a dozen real images through the command line."""
    from desktop.app import install_demo
    from desktop.engine.paths import AppPaths
    from desktop.engine.resources import Resources

    install_demo(AppPaths.for_root(home).ensure(), Resources.default())
    for prompt, seed in PROMPTS:
        subprocess.run(
            [sys.executable, "-m", "desktop", "--home", str(home), "generate", "--model", "marble-demo",
             "--prompt", prompt, "--seed", str(seed), "--steps", "20", "--batch-size", "4"],
            check=True, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
        )


def set_theme(home: Path, theme: str) -> None:
    from desktop.engine.paths import AppPaths
    from desktop.engine.settings import SettingsStore

    store = SettingsStore.open(AppPaths.for_root(home).settings_file)
    store.set("theme", theme)
    store.save()


def shoot(home: Path, target: Path, x11: bool) -> int:
    """Start the app as `marble-studio --home HOME` does, fill the window, and take the picture."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.app import build_app_window
    from desktop.engine.paths import AppPaths
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
    window.prompt_editor.set_prompts(SHOWN_PROMPT, "blurry")
    newest = max(paths.outputs.rglob("*.png"), key=lambda path: path.stat().st_mtime)
    started = time.monotonic()

    def ready() -> bool:
        panel = window.history_panel
        return panel is not None and panel.view.model().rowCount() >= len(PROMPTS) * 4

    def take() -> None:
        if not ready() and time.monotonic() - started < 30:
            QTimer.singleShot(200, take)
            return
        window.canvas.show_image(str(newest))
        # Thumbnails are decoded on a pool; give them and the layout a moment.
        QTimer.singleShot(2500, capture)

    def capture() -> None:
        if x11:
            subprocess.run(["import", "-window", "root", str(target)], check=True)
        else:
            window.grab().save(str(target))
        app.quit()

    QTimer.singleShot(500, take)
    app.exec()
    controller.shutdown()
    window.wait_for_background()
    if history is not None:
        history.close_all()
    print(target)
    return 0


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=ROOT / "docs")
    parser.add_argument("--shoot", type=Path, metavar="HOME", help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--x11", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shoot:
        return shoot(args.shoot, args.target, args.x11)

    home = Path(tempfile.mkdtemp(prefix="marble-shot-"))
    make_history(home)
    x11 = shutil.which("xvfb-run") is not None and shutil.which("import") is not None
    for theme in ("dark", "light"):
        set_theme(home, theme)
        me = [sys.executable, __file__, "--shoot", str(home)]
        target = args.folder / f"screenshot-{theme}.png"
        subprocess.run([*me, "--target", str(target)], check=True, env=_env(QT_QPA_PLATFORM="offscreen"))
        if x11:
            target = args.folder / f"screenshot-{theme}-x11.png"
            screen = f"-screen 0 {SCREEN_W}x{SCREEN_H}x24"
            subprocess.run(["xvfb-run", "-a", "-s", screen, *me, "--target", str(target), "--x11"],
                           check=True, env=_env(QT_QPA_PLATFORM="xcb"))
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
