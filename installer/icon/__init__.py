"""Marble Studio's application icon: one hand-written SVG, rendered to the PNG and ICO sizes each
platform needs.

    python -m installer.icon            # writes resources/icons/marble-<size>.png and marble.ico

The rendered files are committed beside the SVG, so neither the app nor the build needs an SVG
renderer; tests/installer/test_icon_and_workflow.py renders again and fails when they are stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from desktop.engine.resources import APP_ICON_SIZES, app_icon_name

ROOT = Path(__file__).resolve().parents[2]
ICON_FOLDER = ROOT / "resources" / "icons"
SVG_NAME = "marble.svg"
ICO_NAME = "marble.ico"

# Linux icon themes (hicolor) and the app's window use the PNGs (512 is the largest hicolor size GNOME
# asks for); the app reads them, so their sizes live with the app's Resources.
PNG_SIZES: tuple[int, ...] = APP_ICON_SIZES
# Windows picks from the ICO: 16 (title bar, small lists), 24, 32 (desktop at 100%), 48 (large icons),
# 256 (Explorer's extra large icons, high DPI); 64 and 128 serve scaled displays. 256 is the ICO maximum.
ICO_SIZES: tuple[int, ...] = (16, 24, 32, 48, 64, 128, 256)

# Rendering at this many times the target size and filtering down anti-aliases edges and thin bands
# better than Qt's own anti-aliasing at 16 px; 2048 caps the memory for the 512 px image.
SUPERSAMPLE = 4
MAX_RENDER = 2048
# QtSvg applies <mask> from 6.7 on (it still ignores clip-path); the SVG keeps its bands inside with one.
MIN_QT = (6, 7)


class IconError(Exception):
    """The SVG cannot be read or rendered."""


@dataclass(frozen=True)
class IconSet:
    """The rendered icon: one RGBA image per size."""

    images: dict[int, Image.Image]

    def save(self, folder: Path) -> list[Path]:
        """Write marble-<size>.png for every PNG size and the multi-size ICO; returns the paths."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for size in PNG_SIZES:
            path = folder / app_icon_name(size)
            # optimize=True: smaller files and no time stamp, so a render of an unchanged SVG
            # writes the same bytes again.
            self.images[size].save(path, format="PNG", optimize=True)
            written.append(path)
        ico = folder / ICO_NAME
        largest = self.images[max(ICO_SIZES)]
        others = [self.images[size] for size in ICO_SIZES if size != max(ICO_SIZES)]
        # Each size is given, not scaled down by Pillow from 256, so small sizes keep their filtering.
        largest.save(ico, format="ICO", sizes=[(s, s) for s in ICO_SIZES], append_images=others)
        written.append(ico)
        return written


def render_svg(svg: Path, size: int) -> Image.Image:
    """The SVG as a size x size RGBA image (straight alpha), rendered by Qt's SVG module."""
    # Imported here so that reading the committed PNGs (tests, the build) needs no Qt.
    from PySide6.QtCore import Qt, qVersion
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    qt = tuple(int(part) for part in qVersion().split(".")[:2])
    if qt < MIN_QT:
        # An older QtSvg silently drops the mask that keeps the bands inside the marble.
        needed = ".".join(map(str, MIN_QT))
        raise IconError(f"rendering the icon needs Qt {needed} or newer (SVG masks); this is Qt {qVersion()}")
    if not svg.is_file():
        raise IconError(f"the icon source {svg} does not exist")
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise IconError(f"{svg} is not an SVG file Qt can read")
    big = min(size * SUPERSAMPLE, MAX_RENDER)
    canvas = QImage(big, big, QImage.Format.Format_ARGB32_Premultiplied)
    canvas.fill(Qt.GlobalColor.transparent)
    painter = QPainter(canvas)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    straight = canvas.convertToFormat(QImage.Format.Format_RGBA8888)
    image = Image.frombuffer(
        "RGBA", (big, big), bytes(straight.constBits()), "raw", "RGBA", straight.bytesPerLine(), 1
    )
    # Pillow filters RGBA in premultiplied form, so transparent edges do not turn dark.
    return image.resize((size, size), Image.Resampling.LANCZOS) if big != size else image.copy()


def render_icon_set(svg: Path) -> IconSet:
    sizes = sorted(set(PNG_SIZES) | set(ICO_SIZES))
    return IconSet({size: render_svg(svg, size) for size in sizes})
