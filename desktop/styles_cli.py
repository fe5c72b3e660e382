"""`marble styles list|import FILE`: saved prompt styles from the command line.

Kept apart from desktop/cli.py, which registers these commands and calls `run_styles`. Engine only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from desktop.engine.errors import MarbleError
from desktop.engine.paths import AppPaths
from desktop.engine.styles import StyleStore, read_a1111_styles
from desktop.engine.terminal_text import printable
from desktop.exit_codes import EXIT_OK, exit_code


def add_styles_commands(
    commands: argparse._SubParsersAction,
    parser_class: type[argparse.ArgumentParser],
    add_home: Callable[[argparse.ArgumentParser], None],
) -> None:
    group = commands.add_parser("styles", help="saved prompt styles (apply with `generate --style NAME`)")
    sub = group.add_subparsers(dest="styles_command", required=True, parser_class=parser_class)
    add_home(sub.add_parser("list", help="list the saved styles"))
    importing = sub.add_parser("import", help="import A1111's styles.csv (same names are replaced)")
    importing.add_argument("file")
    add_home(importing)


def run_styles(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    store = StyleStore(paths.styles_file)
    try:
        if args.styles_command == "import":
            styles = read_a1111_styles(Path(args.file).expanduser())
            added, replaced = store.merge(styles)
            print(f"Imported {len(styles)} style(s) from {printable(args.file)}: {added} new, {replaced} replaced.",
                  file=err)
            return EXIT_OK
        for style in store.all():
            print("\t".join(printable(text) for text in (style.name, style.prompt, style.negative_prompt)), file=out)
        return EXIT_OK
    except MarbleError as error:
        print(printable(f"marble: error: {error}"), file=err)
        return exit_code(error.kind)
