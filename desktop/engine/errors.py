"""The errors the engine raises. Each message is a sentence a user can act on.

Errors cross layers (runner -> events -> command line, window) as an `ErrorKind`, never as a class
name: each error class declares its kind, and callers match on the enum.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class ErrorKind(str, Enum):
    """What went wrong, in words a caller can act on. The values are what `marble generate --json`
    prints as `error`, the class names it printed before the enum: keep them stable."""

    INVALID_REQUEST = "InvalidRequest"
    MODEL = "ModelError"
    DEVICE = "DeviceError"
    OUT_OF_MEMORY = "OutOfMemory"
    CANCELLED = "Cancelled"
    STORAGE = "StorageError"
    # A bug or an error no MarbleError describes (the message names the Python exception).
    INTERNAL = "InternalError"


class MarbleError(Exception):
    """Base of every error Marble reports to a user instead of a traceback."""

    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL


class InvalidRequest(MarbleError):
    """The request cannot run as given (bad size, unknown sampler, ...)."""

    kind = ErrorKind.INVALID_REQUEST


class ModelError(MarbleError):
    """A model is missing, unreadable, unsafe or of an unknown architecture."""

    kind = ErrorKind.MODEL


class DeviceError(MarbleError):
    """The requested device or precision is not available on this machine."""

    kind = ErrorKind.DEVICE


class OutOfMemory(MarbleError):
    """The device ran out of memory even after the lower-memory retry."""

    kind = ErrorKind.OUT_OF_MEMORY


class Cancelled(MarbleError):
    """The user cancelled the job."""

    kind = ErrorKind.CANCELLED


class StorageError(MarbleError):
    """An image could not be written (disk full, permissions)."""

    kind = ErrorKind.STORAGE


def error_kind(error: BaseException) -> ErrorKind:
    """The kind of any exception: a MarbleError's own, INTERNAL for everything else."""
    return error.kind if isinstance(error, MarbleError) else ErrorKind.INTERNAL
