"""A damaged, read-only or full history database: one clear line and a way back, never a traceback.

Through the real command line (`python -m desktop history ...` in a child process); the window's side
is in tests/ui/test_history_unavailable.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop.cli import main
from desktop.engine.errors import InvalidRequest
from desktop.engine.history import make_thumbnail
from desktop.engine.paths import AppPaths

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "tests" / "support" / "faults"


def marble(*args: str, home: Path, fault: str = "") -> subprocess.CompletedProcess:
    env = os.environ | {"MARBLE_HOME": str(home), "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": os.pathsep.join([str(FAULTS), str(ROOT)]), "MARBLE_TEST_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "desktop", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("marble: error: "), result.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path: Path, tiny_sd15_dir: Path) -> Path:
    """A home with one image."""
    home = tmp_path / "home"
    code = main(["generate", "--model", str(tiny_sd15_dir), "--prompt", "a quiet harbour", "--steps", "1",
                 "--seed", "7", "--width", "64", "--height", "64", "--device", "cpu", "--no-preview",
                 "--home", str(home)])
    assert code == 0
    return home


def test_a_damaged_database_says_how_to_recover_and_the_advice_works(home: Path):
    paths = AppPaths.for_root(home)
    db = paths.history_db
    for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    db.write_bytes(b"this is no longer a database " * 200)

    line = one_line_error(marble("history", "list", home=home))
    assert "damaged" in line and str(db) in line and str(paths.outputs) in line
    assert "rebuilds the history from the images" in line and "backup" not in line

    # A migration backup beside it is offered first.
    backup = db.with_name(db.name + ".v1.bak")
    backup.write_bytes(b"")
    assert f"copy the backup {backup}" in one_line_error(marble("history", "show", "1", home=home))
    backup.unlink()

    # Following the advice: moved aside, the next command rebuilds the history from the image itself.
    db.rename(db.with_name("history.db.broken"))
    result = marble("history", "list", home=home)
    assert result.returncode == 0 and "a quiet harbour" in result.stdout


def test_a_full_disk_under_the_database_is_a_message(home: Path):
    line = one_line_error(marble("history", "favourite", "1", home=home, fault="full:now:0"))
    assert "is full" in line and "Free some space" in line
    # Reading needs no space: listing still works on the full disk.
    result = marble("history", "list", home=home, fault="full:now:0")
    assert result.returncode == 0 and "a quiet harbour" in result.stdout


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """The folder and its files made read-only, for root too (who ignores permission bits): then with
    the immutable attribute, which binds root as well."""
    paths = [*folder.iterdir(), folder]
    if os.geteuid() != 0:
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            for path in paths:
                path.chmod(0o755 if path.is_dir() else 0o644)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file read-only for root")
    done = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("running as root on a file system without the immutable attribute")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_is_a_message(home: Path):
    paths = AppPaths.for_root(home)
    with read_only(paths.history_db.parent):
        for command in (["favourite", "1"], ["list"]):
            line = one_line_error(marble("history", *command, home=home))
            assert "may not write to the history database" in line and "writable" in line


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size and carries almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_an_image_replaced_by_a_decompression_bomb_is_refused_in_export_and_thumbnails(home: Path, tmp_path: Path):
    """Issue 22 item 9: every image the history opens goes through the checked opener."""
    paths = AppPaths.for_root(home)
    (image,) = paths.outputs.rglob("*.png")
    image.write_bytes(png_header_only(30_000, 30_000))
    line = one_line_error(marble("history", "export", "1", "--strip-metadata", "--out", str(tmp_path / "x.png"),
                                 home=home))
    assert image.name in line and "decompression bomb" in line
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(InvalidRequest, match="decompression bomb"):
        make_thumbnail(image, tmp_path / "thumb.jpg")
