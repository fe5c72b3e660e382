"""The exit statuses of the `marble` command, shared by its subcommands (scripts depend on them)."""

from __future__ import annotations

from types import MappingProxyType

from desktop.engine.errors import ErrorKind

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_CANCELLED = 130  # what a shell reports for a process ended by Ctrl+C
# A reader that went away (`marble history list | head`): what a shell reports for a tool that SIGPIPE
# ended, 128 + 13, as `yes | head` gives.
EXIT_BROKEN_PIPE = 141

# Every kind has its status here (a test checks none is missing), so a new kind is a decision, not a
# silent exit 1.
EXIT_FOR_KIND = MappingProxyType({
    ErrorKind.INVALID_REQUEST: EXIT_BAD_INPUT,
    ErrorKind.DEVICE: EXIT_BAD_INPUT,
    ErrorKind.MODEL: EXIT_MODEL,
    ErrorKind.CANCELLED: EXIT_CANCELLED,
    ErrorKind.OUT_OF_MEMORY: EXIT_FAILED,
    ErrorKind.STORAGE: EXIT_FAILED,
    ErrorKind.INTERNAL: EXIT_FAILED,
})


def exit_code(kind: ErrorKind) -> int:
    return EXIT_FOR_KIND.get(kind, EXIT_FAILED)
