"""The .deb's Depends: the system libraries the frozen app links to, as Debian/Ubuntu package names.

Computed from the build itself, not written by hand: every ELF file in the bundle is asked (`ldd`)
which libraries it loads; those resolved outside the bundle belong to a system package (`dpkg -S`),
and those not found at all (the build machine lacked them, so PyInstaller could not bundle them)
are named through the launcher's table of Qt's system libraries.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from desktop.launch import SYSTEM_PACKAGES

ELF_MAGIC = b"\x7fELF"
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


def linked_libraries(files: Iterable[Path]) -> tuple[set[Path], set[str]]:
    """(system library paths, sonames not found) over `files`, as `ldd` resolves them."""
    system, missing = set(), set()
    for path in files:
        done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
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
        done = subprocess.run(["dpkg", "-S", str(path.resolve())], capture_output=True, text=True, check=False)
        if done.returncode != 0:  # /lib vs /usr/lib after the usr merge: ask for the other spelling
            other = str(path).replace("/usr/lib/", "/lib/", 1) if str(path).startswith("/usr/lib/") else f"/usr{path}"
            done = subprocess.run(["dpkg", "-S", other], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DependsError(f"no Debian package owns {path}, which the bundle links to")
        name = done.stdout.split(":", 1)[0].strip()
        packages.add(name.split(",")[0].strip())
    return packages


def depends_of(bundle: Path, table: Mapping[str, str] = SYSTEM_PACKAGES) -> list[str]:
    """The sorted Depends list for the frozen folder `bundle`."""
    system, missing = linked_libraries(elf_files(bundle))
    inside = bundle.resolve()
    system = {path for path in system if inside not in path.resolve().parents}
    packages = owning_packages(system)
    unknown = sorted(soname for soname in missing if soname not in table)
    if unknown:
        raise DependsError(f"the bundle needs {', '.join(unknown)}, which no known package provides")
    packages |= {table[soname] for soname in missing}
    return sorted(packages)
