"""The Debian package: the frozen folder under /opt, launchers on the PATH, a menu entry and icons.

Depends is computed from the bundle (installer/linux/depends.py). The package installs only program
files: user data lives under the user's home (platformdirs), which dpkg never touches, so upgrading,
removing and purging keep every model, LoRA, image and setting.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

from installer.linux.depends import depends_of
from installer.linux.layout import DESKTOP_FILE, PACKAGE, copy_icons, tree_size_kib

INSTALL_DIR = f"/opt/{PACKAGE}"

_MAINTAINER_SCRIPT = """#!/bin/sh
set -e
# Refresh the menu and icon caches where the desktop provides the tools; a server has neither.
if command -v update-desktop-database >/dev/null 2>&1; then
    update-desktop-database -q /usr/share/applications || true
fi
if command -v gtk-update-icon-cache >/dev/null 2>&1; then
    gtk-update-icon-cache -q -t /usr/share/icons/hicolor || true
fi
exit 0
"""


def control_text(version: str, variant: str, depends: list[str], recommends: list[str], installed_kib: int) -> str:
    torch_line = "the CUDA build of PyTorch (NVIDIA GPUs)" if variant == "cuda" else "the CPU build of PyTorch"
    text = textwrap.dedent(
        f"""\
        Package: {PACKAGE}
        Version: {version}
        Architecture: amd64
        Maintainer: Marble Studio developers <marble-studio@users.noreply.github.com>
        Section: graphics
        Priority: optional
        Installed-Size: {installed_kib}
        {"Depends: " + ", ".join(depends) if depends else ""}
        {"Recommends: " + ", ".join(recommends) if recommends else ""}
        Homepage: https://github.com/marble-studio/marble-studio
        Description: offline text-to-image studio (Stable Diffusion, native Qt app)
         Marble Studio turns a text prompt into a picture with diffusion models on your own
         computer, fully offline. This build carries {torch_line}.
        """
    )
    return "\n".join(line for line in text.splitlines() if line) + "\n"


def build_deb(
    frozen: Path, resources: Path, out_dir: Path, version: str, variant: str, compression: str = "xz"
) -> Path:
    """Write `marble-studio_<version>_<variant>_amd64.deb` into `out_dir` and return its path."""
    staging = out_dir / f".deb-{variant}"
    shutil.rmtree(staging, ignore_errors=True)
    program = staging / INSTALL_DIR.lstrip("/")
    shutil.copytree(frozen, program, symlinks=True)
    bin_dir = staging / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("marble", "marble-studio"):
        (bin_dir / name).symlink_to(f"{INSTALL_DIR}/{name}")
    share = staging / "usr" / "share"
    (share / "applications").mkdir(parents=True)
    shutil.copy2(resources / DESKTOP_FILE, share / "applications" / DESKTOP_FILE)
    copy_icons(resources, share / "icons" / "hicolor")
    doc = share / "doc" / PACKAGE
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Marble Studio\nLicense: Apache-2.0\n"
        "The bundled libraries keep their own licences (see /opt/marble-studio/_internal).\n"
    )
    debian = staging / "DEBIAN"
    debian.mkdir()
    depends, recommends = depends_of(program)
    (debian / "control").write_text(control_text(version, variant, depends, recommends, tree_size_kib(staging)))
    for script in ("postinst", "postrm"):
        (debian / script).write_text(_MAINTAINER_SCRIPT)
        (debian / script).chmod(0o755)
    target = out_dir / f"{PACKAGE}_{version}_{variant}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(staging), str(target)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    shutil.rmtree(staging)
    return target
