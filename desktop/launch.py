"""How Marble starts: the window's entry point with its system checks, and the frozen app's dispatch.

`marble-studio` (installed script or frozen executable) comes through `window_main`, which checks what
Qt needs from the system before importing Qt, so a missing library ends in a sentence naming the
package to install instead of a Qt plugin traceback or an abort. The frozen app's two executables
share one entry (`frozen_main`) and tell themselves apart by name. Nothing heavy is imported here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# The shared libraries Qt's widgets and its xcb/offscreen platforms load from the system, and the
# Debian/Ubuntu package that ships each (the same names the .deb's Depends are computed from).
SYSTEM_PACKAGES: Mapping[str, str] = {
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-util.so.1": "libxcb-util1",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
}

# Qt's platform plugins by the name QT_QPA_PLATFORM uses; others (wayland, eglfs, ...) are not checked.
PLATFORM_PLUGINS: Mapping[str, str] = {"xcb": "libqxcb.so", "offscreen": "libqoffscreen.so"}

_SONAME = re.compile(r"(lib[\w.+-]+?\.so(?:\.\d+)*)")


def explain_missing_library(error_text: str) -> str | None:
    """A sentence for a loader error ("libEGL.so.1: cannot open shared object file"), or None."""
    found = _SONAME.search(error_text)
    if not found:
        return None
    soname = found.group(1)
    package = SYSTEM_PACKAGES.get(soname)
    fix = (
        f"install it with `sudo apt install {package}` (Debian, Ubuntu) or your distribution's package for it"
        if package
        else "install your distribution's package that provides it"
    )
    return f"Marble Studio cannot start: the system library {soname} is missing; {fix}."


def platform_to_check(environ: Mapping[str, str]) -> str | None:
    """The Qt platform this start will use, when it is one we can check (None otherwise).

    Raises ValueError with a sentence for the user when there is no display at all."""
    chosen = environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    if chosen:
        return chosen if chosen in PLATFORM_PLUGINS else None
    if environ.get("WAYLAND_DISPLAY"):
        return None
    if environ.get("DISPLAY"):
        return "xcb"
    raise ValueError(
        "Marble Studio found no display (DISPLAY and WAYLAND_DISPLAY are not set). Start it from a desktop "
        "session; to run the window without a screen, set QT_QPA_PLATFORM=offscreen. The `marble` command "
        "line needs no display."
    )


def platform_plugin_file(platform: str) -> Path | None:
    """Where PySide6 keeps `platform`'s plugin, without importing Qt; None when not found."""
    spec = importlib.util.find_spec("PySide6")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "Qt" / "plugins" / "platforms" / PLATFORM_PLUGINS[platform]
        if candidate.is_file():
            return candidate
    return None


def qt_start_problem(environ: Mapping[str, str], plugin_file: Path | None = None) -> str | None:
    """Why Qt's window cannot start here (a sentence naming what to install), or None when it can.

    Linux only: Qt's widgets load from the system libraries a server may lack, and its platform plugin
    aborts the process when one of its own is missing, so load both first and catch what fails."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        platform = platform_to_check(environ)
    except ValueError as error:
        return str(error)
    try:
        import PySide6.QtGui  # noqa: F401  (QtGui links libEGL, libxkbcommon, libfontconfig, ...)
        import PySide6.QtWidgets  # noqa: F401
    except ImportError as error:
        return explain_missing_library(str(error)) or f"Marble Studio cannot start: Qt failed to load ({error})."
    plugin = plugin_file or (platform_plugin_file(platform) if platform else None)
    if plugin is None:
        return None
    import ctypes

    try:
        ctypes.CDLL(str(plugin), mode=getattr(os, "RTLD_LAZY", 1))
    except OSError as error:
        fallback = f"Marble Studio cannot start: Qt's {platform} platform failed to load ({error})."
        return explain_missing_library(str(error)) or fallback
    return None


def window_main(argv: Sequence[str] | None = None) -> int:
    """`marble-studio`: check the system, then hand over to the composition root."""
    problem = qt_start_problem(os.environ)
    if problem:
        if sys.stderr is not None:
            print(f"marble-studio: {problem}", file=sys.stderr)
        return 1
    from desktop.app import main

    return main(argv)


def frozen_main(argv: Sequence[str] | None = None, executable: str | None = None) -> int:
    """The frozen app's one entry: the pickle converter's child, `marble`, or `marble-studio`."""
    from desktop.engine.backends.pickle_convert import CHILD_FLAG, CHILD_NAME

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == [CHILD_FLAG, CHILD_NAME]:
        from desktop.engine.backends.pickle_convert import main as convert_main

        return convert_main(args[2:])
    if Path(executable or sys.executable).stem.lower() == "marble":
        from desktop.cli import main as cli_main

        return cli_main(args)
    return window_main(args)
