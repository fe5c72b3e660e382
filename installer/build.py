"""Build Marble's installable artefacts: `python -m installer.build --target linux|windows --torch cpu|cuda`.

1. PyInstaller one-folder build from installer/marble.spec into dist/MarbleStudio (both executables).
2. Linux: a .deb and a portable .tar.gz; Windows: the NSIS installer (installer/windows/).
3. dist/build-<target>-<torch>.json: each artefact's size and the time each stage took.

The build runs in the current environment and packs the torch installed there, so that torch decides
the variant: `--torch cpu` refuses a CUDA build of torch and `--torch cuda` a CPU one (docs/installers.md
says how each release artefact gets its torch).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import desktop
from desktop.engine.errors import MarbleError
from installer.bundle import APP_FOLDER

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("linux", "windows")
VARIANTS = ("cpu", "cuda")


class BuildError(RuntimeError):
    """The build cannot go on; the message says why."""


def torch_variant() -> str:
    """'cuda' or 'cpu', from the torch this environment would bundle (read without importing torch)."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError as error:
        raise BuildError("torch is not installed in this environment; install the variant to bundle first") from error
    # Local versions name the build: 2.13.0+cpu, 2.13.0+cu128; PyPI's Linux wheel (no suffix) is CUDA,
    # and so are its nvidia-* runtime dependencies.
    if "+cpu" in version:
        return "cpu"
    if "+cu" in version or any(req.startswith("nvidia-") for req in metadata.requires("torch") or []):
        return "cuda"
    return "cpu"


def check_environment(target: str, variant: str) -> None:
    here = "windows" if sys.platform == "win32" else "linux" if sys.platform.startswith("linux") else sys.platform
    if here != target:
        raise BuildError(f"a {target} build must run on {target} (PyInstaller does not cross-build); this is {here}")
    found = torch_variant()
    if found != variant:
        raise BuildError(f"--torch {variant} asked for, but this environment's torch is the {found} build")


def run_pyinstaller(dist: Path, work: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--distpath", str(dist), "--workpath", str(work),
         str(ROOT / "installer" / "marble.spec")],
        check=True,
        cwd=ROOT,
    )
    frozen = dist / APP_FOLDER
    if not frozen.is_dir():
        raise BuildError(f"PyInstaller finished without {frozen}")
    return frozen


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def build(target: str, variant: str, dist: Path, work: Path, deb_compression: str = "xz",
          skip_pyinstaller: bool = False) -> dict[str, object]:
    check_environment(target, variant)
    version = desktop.__version__
    report: dict[str, object] = {"target": target, "torch": variant, "version": version, "artefacts": {}}
    started = time.perf_counter()
    frozen = dist / APP_FOLDER if skip_pyinstaller else run_pyinstaller(dist, work)
    report["pyinstaller_s"] = round(time.perf_counter() - started, 1)
    report["frozen_bytes"] = folder_size(frozen)
    artefacts: dict[str, dict[str, object]] = {}
    resources = ROOT / "resources"
    if target == "linux":
        from installer.linux.deb import build_deb
        from installer.linux.tarball import build_tarball

        makers = {
            "deb": lambda: build_deb(frozen, resources, dist, version, variant, deb_compression),
            "tar.gz": lambda: build_tarball(frozen, resources, dist, version, variant),
        }
    else:
        from installer.windows.nsis import build_windows_installer

        makers = {"nsis": lambda: list(build_windows_installer(frozen, version, variant, dist, log=print).files)}
    for kind, make in makers.items():
        started = time.perf_counter()
        made = make()
        paths = made if isinstance(made, list) else [made]
        artefacts[kind] = {
            "files": [str(path) for path in paths],
            "bytes": sum(Path(path).stat().st_size for path in paths),
            "seconds": round(time.perf_counter() - started, 1),
        }
    report["artefacts"] = artefacts
    (dist / f"build-{target}-{variant}.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m installer.build", description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--torch", choices=VARIANTS, required=True, dest="variant")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where artefacts go (default: dist/)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    parser.add_argument("--deb-compression", choices=("xz", "gzip", "zstd"), default="xz")
    parser.add_argument("--skip-pyinstaller", action="store_true", help="package an existing dist/MarbleStudio")
    args = parser.parse_args(argv)
    try:
        report = build(args.target, args.variant, args.dist.resolve(), args.work.resolve(), args.deb_compression,
                       args.skip_pyinstaller)
    except (BuildError, MarbleError, FileNotFoundError, subprocess.CalledProcessError) as error:
        print(f"build failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
