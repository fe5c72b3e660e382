"""Where the Linux packages put things, shared by the .deb and the portable archive."""

from __future__ import annotations

import shutil
from pathlib import Path

from desktop.engine.resources import APP_ICON_SIZES, app_icon_name

PACKAGE = "marble-studio"
DESKTOP_FILE = "marble-studio.desktop"
ICON_NAME = "marble-studio"  # the desktop entry's Icon=, as installed in the hicolor theme


def icon_files(resources: Path) -> dict[str, Path]:
    """hicolor theme path -> source file, for every icon size the project draws, plus the SVG."""
    icons = resources / "icons"
    found = {f"{size}x{size}/apps/{ICON_NAME}.png": icons / app_icon_name(size) for size in APP_ICON_SIZES}
    found["scalable/apps/marble-studio.svg"] = icons / "marble.svg"
    missing = [str(path) for path in found.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"icon files missing (run `python -m installer.icon`): {', '.join(missing)}")
    return found


def copy_icons(resources: Path, hicolor: Path) -> None:
    for relative, source in icon_files(resources).items():
        target = hicolor / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def tree_size_kib(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink()) // 1024
