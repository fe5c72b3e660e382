"""The `marble` command line run in this process, as a user types it: (exit code, stdout, stderr)."""

from __future__ import annotations

import contextlib
import io

from desktop.cli import main


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(list(argv), stdout=out, stderr=err)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()
