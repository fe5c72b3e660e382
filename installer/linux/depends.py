"""The .deb's Depends: the system libraries the frozen app links to, as Debian/Ubuntu package names.

Computed from the build itself, not written by hand: every ELF file in the bundle is asked (`ldd`)
which libraries it loads; those resolved outside the bundle belong to a system package (`dpkg -S`),
and those not found at all (the build machine lacked them, so PyInstaller could not bundle them)
are named through the launcher's table of Qt's system libraries. Qt's optional plugins (the GTK
theme, Wayland, image formats) load only where their libraries exist, so what they need is
recommended, not required; the xcb platform the window runs on is required.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from desktop.launch import SYSTEM_PACKAGES

ELF_MAGIC = b"\x7fELF"
QT_PLUGINS = "PySide6/Qt/plugins"
REQUIRED_PLUGINS = ("platforms/libqxcb.so", "platforms/libqoffscreen.so")
# Libraries only Qt's optional plugins load, beside the launcher's table of what the window needs.
OPTIONAL_PACKAGES: Mapping[str, str] = {
    "libgtk-3.so.0": "libgtk-3-0",
    "libgdk-3.so.0": "libgtk-3-0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
    "libwayland-client.so.0": "libwayland-client0",
}
_LDD_LINE = re.compile(r"^\s*(\S+)\s*=>\s*(not found|\S+)")


class DependsError(RuntimeError):
    """The bundle needs a library that no known package provides."""


def elf_files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                if handle.read(4) == ELF_MAGIC:
                    found.append(path)
    return found


def linked_libraries(files: Iterable[Path], search: Iterable[Path]) -> tuple[set[Path], set[str]]:
    """(system library paths, sonames not found) over `files`, as `ldd` resolves them at run time,
    where the bundle's own libraries come first (PyInstaller's bootloader and torch's RPATHs)."""
    system, missing = set(), set()
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(str(folder) for folder in search))
    for path in files:
        done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False, env=env)
        for line in done.stdout.splitlines():
            match = _LDD_LINE.match(line)
            if not match:
                continue
            soname, where = match.groups()
            if where == "not found":
                missing.add(soname)
            else:
                system.add(Path(where))
    return system, missing


def owning_packages(paths: Iterable[Path]) -> set[str]:
    """The Debian packages that own `paths` (architecture suffixes dropped)."""
    packages = set()
    for path in sorted(paths):
        owner = _owner(path)
        if owner is None:
            raise DependsError(f"no Debian package owns {path}, which the bundle links to")
        packages.add(owner)
    return packages


def _owner(path: Path) -> str | None:
    # dpkg knows a file by the path its package ships, which after the /usr merge may be the /lib or the
    # /usr/lib spelling, of the symlink or of its target: ask for each.
    spellings = []
    for candidate in (str(path), str(path.resolve())):
        spellings.append(candidate)
        if candidate.startswith("/usr/lib/"):
            spellings.append(candidate[len("/usr"):])
        elif candidate.startswith("/lib/"):
            spellings.append("/usr" + candidate)
    for spelling in dict.fromkeys(spellings):
        done = subprocess.run(["dpkg", "-S", spelling], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def is_optional(path: Path, bundle: Path) -> bool:
    relative = path.relative_to(bundle).as_posix()
    plugins = relative.split(QT_PLUGINS + "/", 1)
    return len(plugins) == 2 and plugins[1] not in REQUIRED_PLUGINS


def packages_for(files: list[Path], bundle: Path, search: list[Path]) -> set[str]:
    system, missing = linked_libraries(files, search)
    inside = bundle.resolve()
    system = {path for path in system if inside not in path.resolve().parents}
    table = {**SYSTEM_PACKAGES, **OPTIONAL_PACKAGES}
    unknown = sorted(soname for soname in missing if soname not in table)
    if unknown:
        raise DependsError(f"the bundle needs {', '.join(unknown)}, which no known package provides")
    return owning_packages(system) | {table[soname] for soname in missing}


def depends_of(bundle: Path) -> tuple[list[str], list[str]]:
    """(Depends, Recommends) for the frozen folder `bundle`, each sorted."""
    files = elf_files(bundle)
    search = sorted({path.parent for path in files})
    required = packages_for([path for path in files if not is_optional(path, bundle)], bundle, search)
    optional = packages_for([path for path in files if is_optional(path, bundle)], bundle, search)
    return sorted(required), sorted(optional - required)
