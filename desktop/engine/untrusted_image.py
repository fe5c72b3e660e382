"""Opening image files from anywhere (drops, PNGs from the web, masks): by content, size-capped.

One place for the untrusted-input rules of docs/architecture.md, used by the metadata reader and the image editor.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from PIL import Image

from desktop.engine.errors import InvalidRequest

# Our own cap, so safety never depends on Pillow's global MAX_IMAGE_PIXELS (which any library may change).
MAX_PIXELS = 10_000 * 10_000


def sniff_image(head: bytes) -> str | None:
    """The Pillow format name of PNG/JPEG/WebP bytes, judged by content; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


@contextmanager
def open_untrusted(stream: BinaryIO, label: str) -> Iterator[tuple[Image.Image, str]]:
    """Yield (image, format) with its size checked before any pixel is decoded.

    Anything that goes wrong, in here or in the caller's block (decoding happens there), becomes an
    InvalidRequest with a sentence naming `label`.
    """
    try:
        head = stream.read(16)
        stream.seek(0)
    except OSError as error:
        raise InvalidRequest(f"Cannot read {label}: {error}.") from None
    image_format = sniff_image(head)
    if image_format is None:
        raise InvalidRequest(
            f"{label} is not a PNG, JPEG or WebP image (judged by its content, not its name), "
            "so Marble will not open it."
        )
    with warnings.catch_warnings():
        # Pillow only warns about a decompression bomb below twice its limit; refuse those as well.
        # The filter is process-wide while it lasts, which is why the pixel cap is the real guarantee.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(stream, formats=[image_format]) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise InvalidRequest(
                        f"{label} is {width:,} x {height:,} pixels; Marble opens images of up to "
                        f"{MAX_PIXELS:,} pixels, so it refuses this one (it could be a decompression bomb)."
                    )
                yield image, image_format
        except InvalidRequest:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidRequest(
                f"{label} declares an image too large to open safely (a possible decompression bomb)."
            ) from None
        except Exception as error:  # noqa: BLE001
            # Broken files make Pillow raise many types (OSError, SyntaxError, ValueError, struct.error,
            # zlib.error, EOFError...); for the user they all mean the same thing.
            raise InvalidRequest(f"{label} is a damaged {image_format} file: {error}.") from None
