"""The errors the engine raises. Each message is a sentence a user can act on."""


class MarbleError(Exception):
    """Base of every error Marble reports to a user instead of a traceback."""


class InvalidRequest(MarbleError):
    """The request cannot run as given (bad size, unknown sampler, ...)."""


class ModelError(MarbleError):
    """A model is missing, unreadable, unsafe or of an unknown architecture."""


class DeviceError(MarbleError):
    """The requested device or precision is not available on this machine."""


class OutOfMemory(MarbleError):
    """The device ran out of memory even after the lower-memory retry."""


class Cancelled(MarbleError):
    """The user cancelled the job."""


class StorageError(MarbleError):
    """An image could not be written (disk full, permissions)."""
