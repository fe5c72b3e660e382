"""Files around the history: thumbnails, exports, and images that could not be saved where planned.

Pure Pillow; every image is opened through `open_untrusted` (by content, size-capped: a file in the
library may have been replaced by anything since it was recorded), and every write goes through
`write_atomically`, so no caller ever sees half a file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from desktop.engine.errors import InvalidRequest, StorageError
from desktop.engine.events import ImageUnsaved
from desktop.engine.outputs import write_atomically
from desktop.engine.untrusted_image import open_untrusted

THUMBNAIL_SIZE = 256


def make_thumbnail(source: Path | str, target: Path | str, size: int = THUMBNAIL_SIZE) -> Path:
    """A JPEG thumbnail of `source` at `target`, made once; an existing newer thumbnail is reused.

    Raises InvalidRequest when the source is not a readable image. Never call on the GUI thread.
    """
    source, target = Path(source), Path(target)
    try:
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            return target
        with source.open("rb") as stream, open_untrusted(stream, source.name) as (image, _):
            # draft() lets JPEG decode at a fraction of the size; PNG ignores it.
            image.draft("RGB", (size, size))
            image.thumbnail((size, size))
            small = image.convert("RGB")
    except OSError as error:
        raise InvalidRequest(f"Cannot read {source.name}: {error.strerror or error}.") from error
    write_atomically(target, lambda stream: small.save(stream, format="JPEG", quality=85))
    return target


def export_image(source: Path | str, target: Path | str, strip_metadata: bool = False) -> Path:
    """Copy an image out of the library: as is (metadata included), or re-encoded without any text.

    Stripping keeps the pixels exactly and drops every text chunk, EXIF and ICC profile: nothing of
    the prompt, the model or the folder it came from leaves with the picture.
    """
    source, target = Path(source), Path(target)
    if not source.exists():
        raise StorageError(f"{source} is missing: it cannot be exported.")
    if target.is_dir():
        target = target / source.name
    if not strip_metadata:
        write_atomically(target, lambda stream: _copy_into(source, stream))
        return target
    try:
        # The file may have been replaced since it was recorded: open it as any file from outside.
        with source.open("rb") as stream, open_untrusted(stream, source.name) as (image, _):
            image.load()
            # Raw pixels into a fresh image: no info dict, so no chunk of the original can follow.
            clean = Image.frombytes(image.mode, image.size, image.tobytes())
            if image.mode == "P" and image.getpalette():
                clean.putpalette(image.getpalette())
    except OSError as error:
        raise InvalidRequest(f"Cannot read {source.name}: {error.strerror or error}.") from error
    write_atomically(target, lambda stream: clean.save(stream, format="PNG"))
    return target


def _copy_into(source: Path, stream: object) -> None:
    with open(source, "rb") as handle:
        shutil.copyfileobj(handle, stream)  # type: ignore[arg-type]


def save_unsaved(image: ImageUnsaved, folder: Path | str) -> Path:
    """Write an image kept in memory after a failed save into another folder; returns its path."""
    folder = Path(folder)
    target = folder / image.file_name
    n = 2
    while target.exists():
        target = folder / f"{Path(image.file_name).stem}-{n}.png"
        n += 1
    write_atomically(target, lambda stream: stream.write(image.png))  # type: ignore[attr-defined]
    return target
