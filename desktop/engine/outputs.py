"""Writing finished images: atomically, with their metadata, never a partial file."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from desktop.engine.errors import StorageError
from desktop.engine.provenance import XMP_KEYWORD, C2paSigner, ImageOrigin, SigningError, xmp_packet

log = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^(\d{5,})-")


class ImageWriter:
    """Saves PNGs as A1111 does (`outputs/2026-11-25/00001-42.png`), or to one chosen file name.

    `target` is a folder, or a `.png` file for the command line's `--out FILE`: its first image
    takes that name and later ones `name-2.png`, `name-3.png`, ...
    """

    def __init__(
        self,
        target: Path,
        dated: bool = True,
        clock: Callable[[], datetime] = datetime.now,
        signer: C2paSigner | None = None,
    ) -> None:
        self._target = target
        self._dated = dated
        self._clock = clock
        self._written = 0
        # None: no C2PA manifest (the XMP mark is written either way). Settable between jobs.
        self.signer = signer
        # Sentences about images saved without their signature; the runner turns them into warnings.
        self.problems: list[str] = []

    def save(
        self, image: Image.Image, text_chunks: Mapping[str, str], seed: int, origin: ImageOrigin | None = None
    ) -> Path:
        path = self._next_path(seed)
        # Encoded (and signed) in memory first: the file itself is still written in one atomic step.
        data = self.encode(image, text_chunks, origin, path.name)
        write_atomically(path, lambda stream: stream.write(data))  # type: ignore[attr-defined]
        self._written += 1
        return path

    def encode(
        self, image: Image.Image, text_chunks: Mapping[str, str], origin: ImageOrigin | None, title: str
    ) -> bytes:
        """The PNG bytes of one image: its text chunks, the XMP mark, and the C2PA manifest when signing."""
        origin = origin or ImageOrigin(app_version="")
        info = PngInfo()
        for key, value in text_chunks.items():
            # iTXt keeps any Unicode a prompt may hold; tEXt is Latin-1 only.
            info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
        # XMP's own rule for PNG: one uncompressed iTXt chunk with this keyword.
        info.add_itxt(XMP_KEYWORD, xmp_packet(origin.app_version), zip=False)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        png = buffer.getvalue()
        if self.signer is None:
            return png
        try:
            return self.signer.sign_png(png, origin, title)
        except SigningError as error:
            # The picture matters more than its signature: keep it, unsigned, and say so.
            log.warning("%s", error)
            self.problems.append(f"{title} is saved without its C2PA signature: {error}")
            return png

    def _next_path(self, seed: int) -> Path:
        if self._target.suffix.lower() == ".png":
            if self._written == 0:
                return self._target
            return self._target.with_name(f"{self._target.stem}-{self._written + 1}.png")
        folder = self._target / self._clock().strftime("%Y-%m-%d") if self._dated else self._target
        return folder / f"{_next_number(folder):05d}-{seed}.png"


def _next_number(folder: Path) -> int:
    highest = 0
    if folder.is_dir():
        for entry in os.scandir(folder):
            match = _NUMBERED.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def write_atomically(path: Path, write: Callable[[object], None]) -> None:
    """Temporary file in the same folder, fsync, rename: a crash leaves the old state or the new one."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(_storage_message(path, error)) from error


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; Windows cannot open folders, and needs no such step.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_message(path: Path, error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return f"The disk is full: could not save {path.name} in {path.parent}. Free some space or pick another folder."
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Marble may not write to {path.parent}. Pick another output folder."
    return f"Could not save {path}: {error.strerror or error}."
