"""Build Marble Studio's Windows installer from a frozen (PyInstaller one-folder) app with NSIS.

    python -m installer.windows.nsis --frozen dist/MarbleStudio --version 0.1.0 --variant cuda --out dist

NSIS stores an installer's data in one block that must stay under 2 GB, and a CUDA build of torch is
larger than that. So the payload is split into parts of at most `part_limit_mb` of input files each:
part 1 goes into the main installer, `MarbleStudio-<ver>-windows-<variant>-setup.exe`; every further
part is a small silent installer of its own, `MarbleStudio-<ver>-windows-<variant>-part<N>.exe`, that the
main installer runs from its own folder into the same install folder. A CPU build fits in one part.

The generated include files (the File lines of each part) go to `<out>/nsis-<variant>/`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from desktop.engine.errors import MarbleError

HERE = Path(__file__).resolve().parent
MAIN_SCRIPT = HERE / "marble.nsi"
PART_SCRIPT = HERE / "part.nsi"
MB = 1_000_000
DEFAULT_PART_LIMIT_MB = 1500
# One file NSIS can still pack on its own, with room for the installer around it under the 2 GB limit.
HARD_FILE_LIMIT = 1900 * MB
GUI_EXE = "marble-studio.exe"
CLI_EXE = "marble.exe"
ICON_IN_FROZEN = PurePosixPath("_internal/resources/icons/marble.ico")
# Characters Windows refuses in a file name, and NSIS's wildcards; `"` would also end an NSIS string.
_BAD_NAME = re.compile(r'[<>:"|?*\\\x00-\x1f]')
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+){0,3}([-+.]?[0-9A-Za-z]+)*$")
_VARIANT = re.compile(r"^[a-z0-9]+$")


class InstallerBuildError(MarbleError):
    """The Windows installer cannot be built from this input (says what to fix)."""


@dataclass(frozen=True)
class PayloadFile:
    source: Path
    relative: PurePosixPath
    size: int


@dataclass(frozen=True)
class Part:
    number: int
    files: tuple[PayloadFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class WindowsInstaller:
    """What one build wrote: the setup to run and the further parts that must lie beside it."""

    setup: Path
    extra_parts: tuple[Path, ...]
    payload_bytes: int
    compile_seconds: float

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.setup, *self.extra_parts)


def artefact_names(version: str, variant: str, part_count: int) -> tuple[str, ...]:
    """The file names of the setup and its parts, in the order the setup runs them."""
    stem = f"MarbleStudio-{version}-windows-{variant}"
    return (f"{stem}-setup.exe", *(f"{stem}-part{n}.exe" for n in range(2, part_count + 1)))


def scan_frozen(frozen: Path) -> tuple[tuple[PayloadFile, ...], tuple[PurePosixPath, ...]]:
    """Every file of the frozen app (sorted), and its empty folders, which File lines cannot carry."""
    frozen = Path(frozen)
    for exe in (GUI_EXE, CLI_EXE):
        if not (frozen / exe).is_file():
            raise InstallerBuildError(f"{frozen} is not a frozen Marble Studio folder: {exe} is missing.")
    files: list[PayloadFile] = []
    empty: list[PurePosixPath] = []
    seen: dict[str, PurePosixPath] = {}
    for path in sorted(frozen.rglob("*")):
        relative = PurePosixPath(path.relative_to(frozen).as_posix())
        if _BAD_NAME.search(path.name) or path.name.endswith((" ", ".")):
            raise InstallerBuildError(f"{relative} cannot be installed on Windows: rename it.")
        # Windows file names ignore case: two names that differ only in case would overwrite each other.
        folded = str(relative).casefold()
        if folded in seen:
            raise InstallerBuildError(f"{relative} and {seen[folded]} are the same file on Windows.")
        seen[folded] = relative
        if path.is_dir():
            if not any(path.iterdir()):
                empty.append(relative)
        elif path.is_file():
            files.append(PayloadFile(path, relative, path.stat().st_size))
        else:
            raise InstallerBuildError(f"{relative} is neither a file nor a folder.")
    return tuple(files), tuple(empty)


def split_into_parts(files: Sequence[PayloadFile], limit_bytes: int) -> tuple[Part, ...]:
    """Parts of at most `limit_bytes` each, as few as first-fit-decreasing finds.

    Part 1, inside the setup itself, holds the top-level files (the two programs) so that the Start-menu
    shortcut's target comes with the setup. A file larger than the limit gets a part of its own.
    """
    if limit_bytes <= 0:
        raise InstallerBuildError("The part limit must be positive.")
    top = [f for f in files if len(f.relative.parts) == 1]
    if sum(f.size for f in top) > limit_bytes:
        raise InstallerBuildError(f"The top-level files alone are larger than the part limit ({limit_bytes} bytes).")
    bins: list[list[PayloadFile]] = [list(top)]
    room = [limit_bytes - sum(f.size for f in top)]
    for f in sorted((f for f in files if len(f.relative.parts) > 1), key=lambda f: (-f.size, str(f.relative))):
        if f.size > HARD_FILE_LIMIT:
            raise InstallerBuildError(f"{f.relative} ({f.size // MB} MB) is too large for NSIS to pack.")
        for i, free in enumerate(room):
            if f.size <= free:
                bins[i].append(f)
                room[i] -= f.size
                break
        else:
            bins.append([f])
            room.append(limit_bytes - f.size)
    return tuple(
        Part(n, tuple(sorted(b, key=lambda f: f.relative.parts))) for n, b in enumerate(bins, start=1) if b or n == 1
    )


def nsis_quote(text: str, *, variables: bool = True) -> str:
    """A double-quoted NSIS string. Where NSIS reads variables `$` starts one, so it is doubled there;
    File's source path is read literally."""
    if '"' in text or "\n" in text:
        raise InstallerBuildError(f"{text!r} cannot be written into an NSIS script.")
    return '"' + (text.replace("$", "$$") if variables else text) + '"'


def _windows_dir(relative: PurePosixPath) -> str:
    return "$INSTDIR" + "".join("\\" + p.replace("$", "$$") for p in relative.parts)


def part_include(part: Part, empty_dirs: Sequence[PurePosixPath] = ()) -> str:
    """The NSIS lines that install one part's files: SetOutPath per folder, one File line per file."""
    lines = [f"; Generated by installer/windows/nsis.py: part {part.number}, {len(part.files)} files, "
             f"{part.size} bytes."]
    for folder in empty_dirs:
        lines.append(f'CreateDirectory "{_windows_dir(folder)}"')
    current: PurePosixPath | None = None
    for f in part.files:
        if f.relative.parent != current:
            current = f.relative.parent
            lines.append(f'SetOutPath "{_windows_dir(current)}"')
        # /oname= keeps the name exactly as frozen, whatever the source path looks like.
        lines.append(f"File {nsis_quote('/oname=' + f.relative.name)} {nsis_quote(str(f.source), variables=False)}")
    return "\n".join(lines) + "\n"


def uninstall_include(files: Sequence[PayloadFile], empty_dirs: Sequence[PurePosixPath]) -> str:
    """What the uninstaller (and an upgrade) removes at the top of the install folder: exactly what
    this version installed there, never the folder itself with whatever else a user put in it."""
    top_files = sorted({f.relative.name for f in files if len(f.relative.parts) == 1})
    top_dirs = sorted({f.relative.parts[0] for f in files if len(f.relative.parts) > 1}
                      | {d.parts[0] for d in empty_dirs})
    lines = ["; Generated by installer/windows/nsis.py: the program's own top-level entries."]
    lines += [f'RMDir /r "{_windows_dir(PurePosixPath(d))}"' for d in top_dirs]
    lines += [f'Delete "{_windows_dir(PurePosixPath(n))}"' for n in top_files]
    return "\n".join(lines) + "\n"


def vi_version(version: str) -> str:
    """Windows' four-number file version from a release version: 0.2.0rc1 -> 0.2.0.0."""
    leading = re.match(r"^[0-9]+(?:\.[0-9]+)*", version)
    numbers = [str(min(int(n), 65535)) for n in (leading.group(0).split(".")[:4] if leading else [])]
    return ".".join(numbers + ["0"] * (4 - len(numbers)))


def find_makensis() -> str:
    found = shutil.which("makensis")
    if found:
        return found
    for folder in (Path("C:/Program Files (x86)/NSIS"), Path("C:/Program Files/NSIS")):
        if (folder / "makensis.exe").is_file():
            return str(folder / "makensis.exe")
    raise InstallerBuildError("makensis was not found: install NSIS 3 (Debian: apt-get install nsis).")


def _define(name: str, value: str) -> str:
    # Defines land in places that do and do not read `$` (OutFile, !include): no escape fits both.
    if any(c in value for c in '"$\n'):
        raise InstallerBuildError(f"{value!r} cannot be passed to makensis: move it to a path without $ or quotes.")
    return f"-D{name}={value}"


def _makensis(makensis: str, script: Path, defines: dict[str, str]) -> None:
    # -WX: a warning is a mistake in the script; -INPUTCHARSET: the generated lists are UTF-8.
    command = [makensis, "-V2", "-WX", "-INPUTCHARSET", "UTF8",
               *(_define(k, v) for k, v in defines.items()), str(script)]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise InstallerBuildError(f"makensis failed on {script.name} (exit {done.returncode}):\n{tail}")


def build_windows_installer(
    frozen: Path,
    version: str,
    variant: str,
    out: Path,
    *,
    part_limit_mb: float = DEFAULT_PART_LIMIT_MB,
    makensis: str | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> WindowsInstaller:
    """Compile the setup (and its parts, if the payload needs more than one) into `out`."""
    if not _VERSION.match(version):
        raise InstallerBuildError(f"{version!r} is not a release version such as 0.1.0 or 0.2.0rc1.")
    if not _VARIANT.match(variant):
        raise InstallerBuildError(f"{variant!r} is not a variant name such as cpu or cuda.")
    frozen = Path(frozen).resolve()
    out = Path(out).resolve()
    makensis = makensis or find_makensis()
    files, empty = scan_frozen(frozen)
    parts = split_into_parts(files, int(part_limit_mb * MB))
    names = artefact_names(version, variant, len(parts))
    work = out / f"nsis-{variant}"
    work.mkdir(parents=True, exist_ok=True)
    # An older build's parts beside this one would be run by no one, but would confuse whoever uploads.
    for stale in out.glob(f"MarbleStudio-{version}-windows-{variant}-*.exe"):
        stale.unlink()
    icon = frozen / ICON_IN_FROZEN
    common = {
        "VERSION": version,
        "VI_VERSION": vi_version(version),
        "VARIANT": variant,
        "PART_COUNT": str(len(parts)),
        "SETUP_NAME": names[0],
    }
    # Without it the scripts use NSIS's own icon as a placeholder; the programs carry theirs in any case.
    if icon.is_file():
        common["MARBLE_ICON"] = str(icon)
    payload = sum(f.size for f in files)
    started = time.monotonic()
    for part, name in zip(parts, names, strict=True):
        include = work / f"part{part.number}.nsh"
        include.write_text(part_include(part, empty if part.number == 1 else ()), encoding="utf-8-sig")
        defines = {**common, "OUTFILE": str(out / name), "FILES_NSH": str(include)}
        if part.number == 1:
            removal = work / "toplevel.nsh"
            removal.write_text(uninstall_include(files, empty), encoding="utf-8-sig")
            script = MAIN_SCRIPT
            defines |= {"TOPLEVEL_NSH": str(removal), "SIZE_KB": str(max(1, payload // 1024))}
        else:
            script = PART_SCRIPT
            defines["PART_NUMBER"] = str(part.number)
        log(f"makensis: {name}: {len(part.files)} files, {part.size / MB:.1f} MB")
        _makensis(makensis, script, defines)
    seconds = time.monotonic() - started
    made = tuple(out / n for n in names)
    return WindowsInstaller(made[0], made[1:], payload, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m installer.windows.nsis", description=__doc__.splitlines()[0])
    parser.add_argument("--frozen", type=Path, required=True, help="the PyInstaller one-folder output")
    parser.add_argument("--version", required=True)
    parser.add_argument("--variant", required=True, choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--part-limit-mb", type=float, default=DEFAULT_PART_LIMIT_MB,
                        help=f"input files per installer part, MB (default {DEFAULT_PART_LIMIT_MB})")
    args = parser.parse_args(argv)
    try:
        built = build_windows_installer(args.frozen, args.version, args.variant, args.out,
                                        part_limit_mb=args.part_limit_mb, log=print)
    except MarbleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in built.files:
        print(f"{path}  {path.stat().st_size / MB:.1f} MB")
    print(f"compiled in {built.compile_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
