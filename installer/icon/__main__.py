"""python -m installer.icon [--svg FILE] [--out FOLDER]: render the application icon's PNGs and ICO."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from installer.icon import ICON_FOLDER, SVG_NAME, IconError, render_icon_set


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m installer.icon", description=__doc__)
    parser.add_argument("--svg", type=Path, default=ICON_FOLDER / SVG_NAME, help="the icon's SVG source")
    parser.add_argument("--out", type=Path, default=ICON_FOLDER, help="where to write the PNGs and the ICO")
    args = parser.parse_args(argv)
    # No window is shown; the offscreen platform lets this run on a build machine without a display.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        written = render_icon_set(args.svg).save(args.out)
    except (IconError, OSError) as error:
        print(f"installer.icon: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
