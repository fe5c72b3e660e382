"""The portable archive: the frozen folder as it is, runnable from wherever it is unpacked.

Chosen over an AppImage: appimagetool is not in Debian or PyPI (it cannot be built or tested offline
here), an AppImage needs FUSE (absent on many servers and in containers) and mounts its squashfs at
every start (slower start-up for a multi-GB CUDA bundle), while a .tar.gz unpacks once anywhere, runs
without root, and is what `tar` on every distribution reads.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

from installer.linux.layout import DESKTOP_FILE, copy_icons

# Run from the unpacked folder: adds the menu entry and icons for this user only, pointing at this folder.
_MENU_SCRIPT = textwrap.dedent(
    """\
    #!/bin/sh
    # Adds Marble Studio to this user's application menu, pointing at this folder. Safe to run again
    # after moving the folder. Remove with: rm ~/.local/share/applications/marble-studio.desktop
    set -eu
    here=$(cd "$(dirname "$0")" && pwd)
    data=${XDG_DATA_HOME:-$HOME/.local/share}
    mkdir -p "$data/applications"
    cp -r "$here/share/icons" "$data/"
    # Quoted, so a folder with spaces in its name still launches (desktop entry spec, "Exec key").
    sed "s|^Exec=marble-studio|Exec=\\"$here/marble-studio\\"|" "$here/share/applications/marble-studio.desktop" \\
        > "$data/applications/marble-studio.desktop"
    echo "Added Marble Studio to the menu ($data/applications/marble-studio.desktop)."
    """
)


def build_tarball(frozen: Path, resources: Path, out_dir: Path, version: str, variant: str) -> Path:
    """Write `MarbleStudio-<version>-linux-x86_64-<variant>.tar.gz` into `out_dir`, return its path."""
    top = f"MarbleStudio-{version}-linux-x86_64-{variant}"
    staging = out_dir / f".tar-{variant}"
    shutil.rmtree(staging, ignore_errors=True)
    folder = staging / top
    shutil.copytree(frozen, folder, symlinks=True)
    (folder / "share" / "applications").mkdir(parents=True)
    shutil.copy2(resources / DESKTOP_FILE, folder / "share" / "applications" / DESKTOP_FILE)
    copy_icons(resources, folder / "share" / "icons" / "hicolor")
    script = folder / "add-to-menu.sh"
    script.write_text(_MENU_SCRIPT)
    script.chmod(0o755)
    target = out_dir / f"{top}.tar.gz"
    # tar + gzip (pigz when present): the archive must unpack with nothing but coreutils and tar.
    compressor = "pigz" if shutil.which("pigz") else "gzip"
    subprocess.run(
        ["tar", "-I", compressor, "-cf", str(target), "-C", str(staging), top], check=True
    )
    shutil.rmtree(staging)
    return target
