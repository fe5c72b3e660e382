"""The Linux packages, built for real around a small stand-in for the frozen app (no PyInstaller run):
Depends computed from what the bundle links, the .deb's layout and control file, the portable archive."""

from __future__ import annotations

import _ssl
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from installer.linux.deb import build_deb
from installer.linux.depends import depends_of
from installer.linux.tarball import build_tarball

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "resources"
pytestmark = pytest.mark.skipif(
    shutil.which("dpkg") is None or shutil.which("ldd") is None, reason="needs Debian's dpkg and ldd"
)


def fake_frozen(folder: Path, with_own_libssl: bool = False) -> Path:
    """Two executables and an extension module that links the system's OpenSSL, laid out as PyInstaller does."""
    internal = folder / "_internal"
    internal.mkdir(parents=True)
    for name in ("marble", "marble-studio"):
        shutil.copy2("/bin/true", folder / name)
    shutil.copy2(_ssl.__file__, internal / Path(_ssl.__file__).name)
    if with_own_libssl:  # the bundle carries its own copy, found first at run time
        for soname in ("libssl.so.3", "libcrypto.so.3"):
            shutil.copy2(f"/lib/x86_64-linux-gnu/{soname}", internal / soname)
    return folder


def test_depends_names_the_packages_of_the_system_libraries_the_bundle_links(tmp_path):
    depends, recommends = depends_of(fake_frozen(tmp_path / "a"))
    assert "libssl3" in depends and "libc6" in depends and recommends == []
    # A library the bundle carries itself is not a dependency.
    depends, _ = depends_of(fake_frozen(tmp_path / "b", with_own_libssl=True))
    assert "libssl3" not in depends and "libc6" in depends


def test_the_deb_installs_program_launchers_menu_entry_and_icons(tmp_path):
    deb = build_deb(fake_frozen(tmp_path / "frozen"), RESOURCES, tmp_path, "9.8.7", "cpu", compression="gzip")
    assert deb.name == "marble-studio_9.8.7_cpu_amd64.deb"
    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line and not line.startswith(" "))
    assert fields["Package"] == "marble-studio" and fields["Version"] == "9.8.7"
    assert "libssl3" in fields["Depends"].split(", ")
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/marble -> /opt/marble-studio/marble" in listing
    assert "./usr/bin/marble-studio -> /opt/marble-studio/marble-studio" in listing
    for path in ("./opt/marble-studio/_internal/", "./usr/share/applications/marble-studio.desktop",
                 "./usr/share/icons/hicolor/16x16/apps/marble-studio.png",
                 "./usr/share/icons/hicolor/512x512/apps/marble-studio.png",
                 "./usr/share/icons/hicolor/scalable/apps/marble-studio.svg"):
        assert path in listing
    # Only program files: nothing under a user's home or /var (user data stays out of dpkg's hands).
    assert "./home" not in listing and "./root" not in listing and "./var" not in listing


def test_the_portable_archive_runs_in_place_and_adds_itself_to_the_menu(tmp_path):
    archive = build_tarball(fake_frozen(tmp_path / "frozen"), RESOURCES, tmp_path, "9.8.7", "cpu")
    unpacked = tmp_path / "My Apps"  # a folder name with a space, as users pick
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="tar")
    folder = unpacked / "MarbleStudio-9.8.7-linux-x86_64-cpu"
    assert os.access(folder / "marble-studio", os.X_OK) and os.access(folder / "marble", os.X_OK)
    data = tmp_path / "xdg"
    done = subprocess.run([str(folder / "add-to-menu.sh")], env=dict(os.environ, XDG_DATA_HOME=str(data)),
                          capture_output=True, text=True, check=True)
    assert "Added Marble Studio" in done.stdout
    entry = (data / "applications" / "marble-studio.desktop").read_text()
    assert f'Exec="{folder}/marble-studio" %F' in entry
    if shutil.which("desktop-file-validate"):
        checked = subprocess.run(["desktop-file-validate", str(data / "applications" / "marble-studio.desktop")],
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout
    assert (data / "icons" / "hicolor" / "256x256" / "apps" / "marble-studio.png").is_file()
