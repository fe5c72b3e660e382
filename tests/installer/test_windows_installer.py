"""The Windows installer: the part splitter (fast, no tools), then the real NSIS script compiled with
makensis around a tiny fake payload and installed, upgraded and uninstalled under wine."""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path, PurePosixPath

import pytest

from installer.windows import nsis
from installer.windows.nsis import InstallerBuildError, Part, PayloadFile, split_into_parts

UNINST_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Uninstall\MarbleStudio"


def _payload(sizes: dict[str, int]) -> list[PayloadFile]:
    return [PayloadFile(Path("/src") / rel, PurePosixPath(rel), size) for rel, size in sizes.items()]


def _check_parts(files: list[PayloadFile], parts: tuple[Part, ...], limit: int) -> None:
    placed = [f.relative for p in parts for f in p.files]
    assert sorted(placed) == sorted(f.relative for f in files), "every file exactly once"
    for part in parts:
        # Over the limit only as a single file that alone is larger than the limit.
        assert part.size <= limit or (len(part.files) == 1 and part.files[0].size > limit), part
        assert part.files or part.number == 1
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert {f.relative for f in files if len(f.relative.parts) == 1} <= {f.relative for f in parts[0].files}


def test_splitter_never_exceeds_the_limit_and_places_every_file_once() -> None:
    rng = random.Random(7)
    for trial in range(200):
        sizes = {"marble-studio.exe": rng.randint(1, 50), "marble.exe": rng.randint(1, 50)}
        for i in range(rng.randint(0, 60)):
            sizes[f"_internal/d{i % 5}/f{i}.dll"] = rng.choice([0, rng.randint(1, 100), rng.randint(100, 1500)])
        files = _payload(sizes)
        limit = rng.randint(110, 1200)
        parts = split_into_parts(files, limit)
        _check_parts(files, parts, limit)
        # First-fit decreasing is near the lower bound: at most 11/9 of it, plus a little.
        total = sum(sizes.values())
        assert len(parts) <= (11 * -(-total // limit)) // 9 + 2, (trial, total, limit, len(parts))


def test_splitter_gives_a_file_above_the_limit_a_part_of_its_own() -> None:
    files = _payload({"marble.exe": 10, "marble-studio.exe": 10, "_internal/torch_cuda.dll": 500,
                      "_internal/a.pyd": 60, "_internal/b.pyd": 60})
    parts = split_into_parts(files, 100)
    _check_parts(files, parts, 100)
    assert [[str(f.relative) for f in p.files] for p in parts] == [
        ["_internal/a.pyd", "marble-studio.exe", "marble.exe"],
        ["_internal/torch_cuda.dll"],
        ["_internal/b.pyd"],
    ]


def test_splitter_refuses_what_nsis_cannot_pack() -> None:
    with pytest.raises(InstallerBuildError, match="top-level files alone"):
        split_into_parts(_payload({"marble.exe": 60, "marble-studio.exe": 60}), 100)
    with pytest.raises(InstallerBuildError, match="too large for NSIS"):
        split_into_parts(_payload({"marble.exe": 1, "_internal/huge.dll": nsis.HARD_FILE_LIMIT + 1}), 100)


def test_scan_refuses_names_windows_cannot_hold(tmp_path: Path) -> None:
    frozen = tmp_path / "MarbleStudio"
    (frozen / "_internal").mkdir(parents=True)
    with pytest.raises(InstallerBuildError, match="marble-studio.exe is missing"):
        nsis.scan_frozen(frozen)
    for exe in ("marble-studio.exe", "marble.exe"):
        (frozen / exe).write_bytes(b"MZ")
    (frozen / "_internal" / "Torch.dll").write_bytes(b"a")
    (frozen / "_internal" / "torch.dll").write_bytes(b"b")
    with pytest.raises(InstallerBuildError, match="same file on Windows"):
        nsis.scan_frozen(frozen)
    (frozen / "_internal" / "Torch.dll").unlink()
    (frozen / "_internal" / "what?.txt").write_bytes(b"")
    with pytest.raises(InstallerBuildError, match="cannot be installed on Windows"):
        nsis.scan_frozen(frozen)


def test_part_include_escapes_variables_only_where_nsis_reads_them() -> None:
    part = Part(1, tuple(_payload({"_internal/we$ird.txt": 3})))
    text = nsis.part_include(part, [PurePosixPath("_internal/empty")])
    assert 'CreateDirectory "$INSTDIR\\_internal\\empty"' in text
    assert 'SetOutPath "$INSTDIR\\_internal"' in text
    assert 'File "/oname=we$$ird.txt" "/src/_internal/we$ird.txt"' in text


def test_release_versions_become_windows_file_versions() -> None:
    assert nsis.vi_version("0.1.0") == "0.1.0.0"
    assert nsis.vi_version("1.2.3.4") == "1.2.3.4"
    assert nsis.vi_version("0.2.0rc1") == "0.2.0.0"


# ---- makensis and wine -------------------------------------------------------------------------

MAKENSIS = shutil.which("makensis")
WINE = shutil.which("wine")
# A tiny real 64-bit console program that wine ships, standing in for marble.exe and marble-studio.exe.
WINE_EXE = next(iter(sorted(glob.glob("/usr/lib/*/wine/x86_64-windows/hostname.exe"))), None)
needs_makensis = pytest.mark.skipif(MAKENSIS is None, reason="makensis not installed (Debian: apt-get install nsis)")
needs_wine = pytest.mark.skipif(
    WINE is None or WINE_EXE is None,
    reason="64-bit wine not installed (Debian: apt-get install --no-install-recommends wine wine64)",
)


def _fake_frozen(root: Path, exe: Path) -> Path:
    frozen = root / "MarbleStudio"
    for rel, data in {
        "_internal/base_library.txt": b"stdlib",
        "_internal/resources/configs/model_index.json": b"{}",
        "_internal/resources/configs/we$ird name.txt": b"dollar",
        "_internal/torch/lib/torch_cpu.dll": random.Random(1).randbytes(300_000),
        "_internal/torch/lib/torch_cuda.dll": random.Random(2).randbytes(250_000),
    }.items():
        (frozen / rel).parent.mkdir(parents=True, exist_ok=True)
        (frozen / rel).write_bytes(data)
    (frozen / "_internal" / "empty").mkdir()
    shutil.copyfile(exe, frozen / "marble.exe")
    shutil.copyfile(exe, frozen / "marble-studio.exe")
    return frozen


@needs_makensis
def test_makensis_compiles_a_setup_and_its_parts(tmp_path: Path) -> None:
    frozen = _fake_frozen(tmp_path, Path(WINE_EXE or __file__))
    built = nsis.build_windows_installer(frozen, "0.1.0", "cuda", tmp_path / "out", part_limit_mb=0.35)
    assert [p.name for p in built.files] == [
        "MarbleStudio-0.1.0-windows-cuda-setup.exe",
        "MarbleStudio-0.1.0-windows-cuda-part2.exe",
        "MarbleStudio-0.1.0-windows-cuda-part3.exe",
    ]
    for exe in built.files:
        assert exe.read_bytes()[:2] == b"MZ"
    one = nsis.build_windows_installer(frozen, "0.1.0", "cpu", tmp_path / "out")
    assert one.extra_parts == () and one.setup.name == "MarbleStudio-0.1.0-windows-cpu-setup.exe"
    # A rebuild with fewer parts leaves no stale part of the same release behind.
    again = nsis.build_windows_installer(frozen, "0.1.0", "cuda", tmp_path / "out")
    assert again.extra_parts == ()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.exe")) == [
        "MarbleStudio-0.1.0-windows-cpu-setup.exe", "MarbleStudio-0.1.0-windows-cuda-setup.exe"]


class Wine:
    """Runs programs in one wine prefix through one wineserver that the test starts and stops.

    A persistent server spares every call the start of a new one (seconds each on this machine)."""

    def __init__(self, prefix: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
        # mscoree/mshtml off: a fresh prefix would otherwise offer to download Mono and Gecko.
        self.env |= {"WINEPREFIX": str(prefix), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="}
        prefix.mkdir()
        subprocess.run(["wineserver", "-p"], env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=True)

    def close(self) -> None:
        subprocess.run(["wineserver", "-k"], env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = self._run_once(args)
        for _ in range(2):
            # Wine itself now and then fails to start a program on a loaded machine ("ShellExecuteEx failed:
            # Internal error", seen once in CI on `winepath`, 2026-12-07): that is wine's launcher, not the
            # program, so it is tried again; any other failure stands.
            if done.returncode == 0 or "ShellExecuteEx failed" not in done.stdout + done.stderr:
                break
            done = self._run_once(args)
        if check:
            assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        return done

    def _run_once(self, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        # Output through files, not pipes: wine's own background processes (services, explorer) keep
        # inherited pipes open, and reading a pipe to its end would wait for them.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            code = subprocess.run([WINE or "wine", *args], env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=err, timeout=300).returncode
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(args, code, out.read().decode(errors="replace"),
                                               err.read().decode(errors="replace"))

    def unix(self, windows_path: str) -> Path:
        return Path(self.run("winepath", "-u", windows_path).stdout.strip())

    def expand(self, variable: str) -> str:
        return self.run("cmd", "/c", f"echo %{variable}%").stdout.strip()

    def reg(self, key: str) -> dict[str, str]:
        done = self.run("reg", "query", key, check=False)
        if done.returncode != 0:
            return {}
        found = (re.match(r"^ {4}(\S+) {4}(REG_\w+) {4}(.*)$", line) for line in done.stdout.splitlines())
        return {m.group(1): m.group(3) for m in found if m}

    def user_path(self) -> str | None:
        return self.reg(r"HKCU\Environment").get("Path")

    def set_user_path(self, value: str) -> None:
        self.run("reg", "add", r"HKCU\Environment", "/v", "Path", "/t", "REG_EXPAND_SZ", "/d", value, "/f")

    def uninstall(self, install: Path) -> None:
        """The uninstaller works on from a copy of itself in TEMP after the first process exits; deleting
        the uninstall key is its last step."""
        self.run(str(install / "uninstall.exe"), "/S")
        deadline = time.monotonic() + 120
        while self.reg(UNINST_KEY) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)


@pytest.fixture
def wine(tmp_path: Path):
    wine = Wine(tmp_path / "prefix")
    try:
        wine.run("wineboot", "-i")
        yield wine
    finally:
        wine.close()


@pytest.mark.slow
@needs_makensis
@needs_wine
def test_setup_installs_upgrades_and_uninstalls_under_wine(tmp_path: Path, wine: Wine) -> None:
    frozen = _fake_frozen(tmp_path / "payload", Path(WINE_EXE))
    built = nsis.build_windows_installer(frozen, "0.1.0", "cuda", tmp_path / "out", part_limit_mb=0.35)
    assert len(built.extra_parts) == 2
    local = wine.expand("LOCALAPPDATA")
    install = wine.unix(local + r"\Programs\Marble Studio")
    programs_menu = wine.unix(wine.expand("APPDATA") + r"\Microsoft\Windows\Start Menu\Programs")

    # The user's data, where platformdirs puts it on Windows, from an earlier version.
    user_data = {
        wine.unix(local + r"\Marble\MarbleStudio\models\mine.safetensors"): b"weights",
        wine.unix(local + r"\Marble\MarbleStudio\history\history.db"): b"history",
        wine.unix(local + r"\Marble\MarbleStudio\settings.json"): b"{}",
        wine.unix(wine.expand("USERPROFILE") + r"\Pictures\MarbleStudio\00001.png"): b"png",
    }
    for path, data in user_data.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    others = r"C:\tools;%USERPROFILE%\bin"
    wine.set_user_path(others)

    # A part missing: refused before anything is installed, with exit code 2.
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(built.setup, partial)
    shutil.copy(built.extra_parts[0], partial)
    assert wine.run(str(partial / built.setup.name), "/S", check=False).returncode == 2
    assert not install.exists()

    wine.run(str(built.setup), "/S")
    for source in frozen.rglob("*"):
        target = install / source.relative_to(frozen)
        assert target.is_dir() if source.is_dir() else target.read_bytes() == source.read_bytes(), target
    assert (install / "uninstall.exe").is_file()
    shortcut = programs_menu / "Marble Studio.lnk"
    assert (local + r"\Programs\Marble Studio\marble-studio.exe").encode() in shortcut.read_bytes()
    key = wine.reg(UNINST_KEY)
    windows_dir = local + r"\Programs\Marble Studio"
    assert key["DisplayName"] == "Marble Studio" and key["DisplayVersion"] == "0.1.0"
    assert key["Publisher"] == "Marble" and key["InstallLocation"] == windows_dir
    assert key["UninstallString"] == f'"{windows_dir}\\uninstall.exe"'
    assert key["QuietUninstallString"] == f'"{windows_dir}\\uninstall.exe" /S'
    assert key["DisplayIcon"] == windows_dir + r"\marble-studio.exe,0"
    assert int(key["EstimatedSize"], 16) == built.payload_bytes // 1024
    assert key["NoModify"] == key["NoRepair"] == "0x1"
    assert wine.user_path() == f"{others};{windows_dir}"
    # `marble` in a new terminal runs the installed command line (here: wine's hostname program).
    expected = wine.run(str(install / "marble.exe")).stdout
    assert wine.run("cmd", "/c", "marble").stdout == expected and expected.strip()

    # An upgrade replaces the program files (no stale library survives) and keeps everything else.
    (install / "_internal" / "torch" / "lib" / "stale_from_0.0.9.dll").write_bytes(b"old")
    (install / "my notes.txt").write_bytes(b"mine")
    wine.run(str(built.setup), "/S")
    assert not (install / "_internal" / "torch" / "lib" / "stale_from_0.0.9.dll").exists()
    assert (install / "_internal" / "torch" / "lib" / "torch_cuda.dll").is_file()
    assert wine.user_path() == f"{others};{windows_dir}", "the PATH entry is not doubled"

    wine.uninstall(install)
    assert sorted(p.name for p in install.iterdir()) == ["my notes.txt"]
    assert not shortcut.exists()
    assert wine.reg(UNINST_KEY) == {}
    assert wine.user_path() == others
    for path, data in user_data.items():
        assert path.read_bytes() == data, path

    # A PATH longer than NSIS can hold whole is left exactly as it was, on install and uninstall.
    (install / "my notes.txt").unlink()
    long_path = ";".join(rf"C:\long\folder{i:03d}" for i in range(90))
    wine.set_user_path(long_path)
    wine.run(str(built.setup), "/S")
    assert wine.user_path() == long_path
    wine.uninstall(install)
    assert wine.user_path() == long_path
    assert not install.exists()
    for path, data in user_data.items():
        assert path.read_bytes() == data, path
