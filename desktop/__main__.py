"""`python -m desktop`: the window, or the command line when a subcommand comes first.

`python -m desktop generate --prompt ...` is `marble generate --prompt ...`; anything else (no
arguments, `--home DIR`, Qt's own `-platform ...`) opens the window. The window takes no positional
arguments, so a first argument that is not an option (after `--home DIR`) is always a subcommand. Each side is imported
only when chosen: the command line never loads Qt, the window never loads the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def is_cli_invocation(argv: Sequence[str]) -> bool:
    """True when a subcommand comes first, after any ``--home DIR`` (which both sides accept)."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--home":
            index += 2
        elif arg.startswith("--home="):
            index += 1
        else:
            return not arg.startswith("-")
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if is_cli_invocation(args):
        from desktop.cli import main as cli_main

        return cli_main(args)
    from desktop.launch import window_main

    return window_main(args)


if __name__ == "__main__":
    sys.exit(main())
