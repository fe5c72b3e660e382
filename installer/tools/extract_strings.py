"""Extract the window's strings into the English source for translators.

    .venv/bin/python installer/tools/extract_strings.py [--check]

Runs Qt's `lupdate` over the window's code (desktop/ui/ and desktop/app.py) and writes
resources/translations/marble_en.ts without line numbers, so the file changes only when a string does.
`--check` writes nothing and exits 1 when the file is not up to date (a test runs it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "resources" / "translations" / "marble_en.ts"


def sources() -> list[Path]:
    return sorted([*(ROOT / "desktop" / "ui").rglob("*.py"), ROOT / "desktop" / "app.py"])


def lupdate() -> str:
    tool = shutil.which("pyside6-lupdate") or str(Path(sys.executable).with_name("pyside6-lupdate"))
    return tool


def extract(target: Path) -> None:
    subprocess.run(
        [lupdate(), *map(str, sources()), "-locations", "none", "-no-obsolete", "-source-language", "en",
         "-target-language", "en", "-ts", str(target)],
        check=True, capture_output=True, cwd=ROOT,
    )


def messages(ts_file: Path) -> set[tuple[str, str]]:
    """The (context, source) pairs a .ts file holds."""
    tree = ElementTree.parse(ts_file)
    return {
        (context.findtext("name") or "", message.findtext("source") or "")
        for context in tree.getroot().iter("context")
        for message in context.iter("message")
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say whether marble_en.ts is up to date")
    args = parser.parse_args(argv)
    if not args.check:
        SOURCE.parent.mkdir(parents=True, exist_ok=True)
        SOURCE.unlink(missing_ok=True)  # a fresh file: strings no longer in the code go
        extract(SOURCE)
        print(f"{SOURCE}: {len(messages(SOURCE))} strings")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        fresh = Path(folder) / "marble_en.ts"
        extract(fresh)
        missing, stale = messages(fresh) - messages(SOURCE), messages(SOURCE) - messages(fresh)
    for context, text in sorted(missing):
        print(f"not extracted yet: [{context}] {text!r}")
    for context, text in sorted(stale):
        print(f"no longer in the code: [{context}] {text!r}")
    return 1 if missing or stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
