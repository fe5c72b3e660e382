"""The frozen app's smoke test, run on a built artefact as a user would get it.

    python -m installer.smoke --artefact dist/marble-studio_0.1.0_cpu_amd64.deb   (as root: dpkg)
    python -m installer.smoke --artefact dist/MarbleStudio-0.1.0-linux-x86_64-cpu.tar.gz
    python -m installer.smoke --frozen dist/MarbleStudio                            (any OS)

In a clean environment (no venv, no PYTHON* variables, a fresh home) it runs the frozen `marble`:
version, generate with the demo model, the library, the pickle converter's child (a frozen app has
no `python -m`); then the frozen window offscreen through `--self-test` (first paint, one real image).
For a .deb it also installs over itself with a newer version, removes and reinstalls the package, and
checks the user's images and history survive each. Every stderr line must be one of EXPECTED_STDERR.
Exits 0 when all passed; writes its log beside the artefact (smoke-<name>.log).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from installer.bundle import CLI_EXECUTABLE, WINDOW_EXECUTABLE

# Lines the frozen app may print on stderr without failing the smoke test.
EXPECTED_STDERR = (
    re.compile(r"^This plugin does not support propagateSizeHints\(\)$"),  # Qt's offscreen platform
    re.compile(r"^Step \d+/\d+"),  # the CLI's progress (stderr by design)
    re.compile(r"^(Loading|Loaded|Saved|Wrote|Done|Imported|Converted) "),
    re.compile(r"^batch \d+/\d+ step \d+/\d+$"),
)
GENERATE = ("generate", "--prompt", "a red circle in the centre on a white background", "--steps", "4", "--seed", "7")


class SmokeFailure(AssertionError):
    pass


class Smoke:
    def __init__(self, log: Path) -> None:
        self.log_path = log
        self.lines: list[str] = []
        self.unexpected: list[str] = []

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)
        self.log_path.write_text("\n".join(self.lines) + "\n")

    def run(self, command: Sequence[str], env: Mapping[str, str], timeout: float = 600, ok: bool = True,
            cwd: Path | None = None, app: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `command`; with `ok`, fail on a non-zero exit and, for Marble's own executables (`app`),
        on any stderr line not in EXPECTED_STDERR (dpkg and apt say what they like)."""
        started = time.perf_counter()
        done = subprocess.run(list(command), env=dict(env), capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=cwd)
        self.say(f"$ {' '.join(command)}  -> exit {done.returncode} in {time.perf_counter() - started:.1f} s")
        for line in done.stdout.strip().splitlines()[-6:]:
            self.say(f"  | {line}")
        for line in done.stderr.strip().splitlines():
            expected = not app or any(pattern.search(line) for pattern in EXPECTED_STDERR)
            self.say(f"  ! {line}" if not expected else f"  . {line}")
            if not expected and ok:
                self.unexpected.append(line)
        if ok and done.returncode != 0:
            raise SmokeFailure(f"{command[0]} exited {done.returncode}")
        return done

    def check(self, condition: bool, what: str) -> None:
        self.say(f"{'ok  ' if condition else 'FAIL'} {what}")
        if not condition:
            raise SmokeFailure(what)


def clean_environment(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What `env -i` leaves, plus the few variables a desktop session has: no venv, no PYTHON*."""
    if sys.platform == "win32":
        keep = ("SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "NUMBER_OF_PROCESSORS")
        env = {key: os.environ[key] for key in keep if key in os.environ}
        env |= {"PATH": os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32"),
                "USERPROFILE": str(home), "LOCALAPPDATA": str(home / "AppData" / "Local"),
                "APPDATA": str(home / "AppData" / "Roaming")}
    else:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    return env | dict(extra or {})


def exe(folder: Path, name: str) -> Path:
    return folder / (f"{name}.exe" if sys.platform == "win32" else name)


def png_parameters(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return str(image.info.get("parameters", ""))


def test_cli(smoke: Smoke, marble: Path, work: Path) -> None:
    home = work / "cli-home"
    env = clean_environment(work / "user")
    done = smoke.run([str(marble), "--version"], env)
    smoke.check(done.stdout.startswith("marble "), "marble --version names the app")
    done = smoke.run([str(marble), *GENERATE, "--home", str(home), "--json"], env)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    finished = [event for event in events if event.get("event") == "finished"]
    smoke.check(len(finished) == 1 and len(finished[0]["paths"]) == 1, "generate finished with one image")
    image = Path(finished[0]["paths"][0])
    smoke.check(image.is_file() and home in image.parents, f"the image is in the fresh home ({image})")
    parameters = png_parameters(image)
    smoke.check("Model: marble-demo" in parameters and "Seed: 7" in parameters, "its PNG carries the recipe")
    done = smoke.run([str(marble), "models", "list", "--home", str(home)], env)
    smoke.check("marble-demo" in done.stdout, "the demo model is in the library")
    done = smoke.run([str(marble), "history", "list", "--home", str(home), "--json"], env)
    smoke.check(image.name in done.stdout, "the image is recorded in the history")

    # The pickle converter runs as the frozen executable's child: a plain-data pickle converts to
    # safetensors, one that needs code to load is refused, and its payload never runs.
    marker = work / "PAYLOAD-RAN"
    evil = work / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"w": 1, "x": _Payload(str(marker))}, protocol=2))
    done = smoke.run([str(marble), "loras", "import", str(evil), "--convert-pickle", "--home", str(home)], env,
                     ok=False)
    smoke.check(done.returncode != 0 and "needs more than plain tensors" in done.stderr and not marker.exists(),
                "a pickle that needs code is refused by the frozen converter and never runs")
    # A plain tensors-only checkpoint (torch's zip format) converts; the smoke test's Python is the build's,
    # which has torch.
    import torch

    embedding = work / "inkstyle.pt"
    torch.save({"emb_params": torch.randn(2, 768, generator=torch.Generator().manual_seed(0))}, embedding)
    done = smoke.run([str(marble), "embeddings", "import", str(embedding), "--convert-pickle", "--home", str(home)],
                     env)
    listed = smoke.run([str(marble), "embeddings", "list", "--home", str(home)], env)
    smoke.check("inkstyle" in listed.stdout and "SD 1.x embedding" in listed.stdout,
                "the frozen converter turned a tensors-only pickle into a safetensors embedding")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_window(smoke: Smoke, window: Path, work: Path) -> None:
    env = clean_environment(work / "user", {"QT_QPA_PLATFORM": "offscreen"})
    report = work / "self-test.txt"  # a windowed executable on Windows has no stdout to read
    smoke.run([str(window), "--self-test", "--self-test-report", str(report), "--home", str(work / "window-home")],
              env)
    lines = report.read_text(encoding="utf-8") if report.is_file() else ""
    for line in lines.splitlines():
        smoke.say(f"  > {line}")
    smoke.check("self-test: passed" in lines, "the frozen window painted and generated one image")
    painted = re.search(r"window painted ([\d.]+) s after start, torch (not loaded|loaded)", lines)
    smoke.check(painted is not None and painted.group(2) == "not loaded",
                f"first paint {painted.group(1) if painted else '?'} s after main, torch not yet loaded")


def test_folder(smoke: Smoke, folder: Path, work: Path) -> None:
    test_cli(smoke, exe(folder, CLI_EXECUTABLE), work)
    test_window(smoke, exe(folder, WINDOW_EXECUTABLE), work)


def repack_with_version(deb: Path, version: str, out: Path) -> Path:
    """The same package under another version, as the next release would be (for the upgrade check)."""
    tree = out / "repack"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    target = out / f"newer-{version}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(target)],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    return target


def dpkg_install(smoke: Smoke, deb: Path) -> None:
    env = dict(os.environ)
    done = smoke.run(["dpkg", "-i", str(deb)], env, ok=False, app=False)
    if done.returncode != 0:  # Depends not yet on this machine: apt brings them, as it does for a user
        apt_env = env | {"DEBIAN_FRONTEND": "noninteractive"}
        smoke.run(["apt-get", "install", "-f", "-y", "-q"], apt_env, ok=False, app=False)
        smoke.run(["dpkg", "-s", "marble-studio"], env, app=False)


def test_deb(smoke: Smoke, deb: Path, work: Path) -> None:
    if os.geteuid() != 0:
        raise SmokeFailure("installing a .deb needs root (dpkg -i)")
    env = dict(os.environ)
    dpkg_install(smoke, deb)
    for path in ("/usr/bin/marble", "/usr/bin/marble-studio", "/usr/share/applications/marble-studio.desktop",
                 "/usr/share/icons/hicolor/256x256/apps/marble-studio.png"):
        smoke.check(Path(path).exists(), f"{path} installed")
    test_folder(smoke, Path("/usr/bin"), work)

    # User data in the default per-user folders survives an upgrade, a removal and a reinstall.
    user = work / "user-default"
    env_user = clean_environment(user)
    done = smoke.run(["/usr/bin/marble", *GENERATE, "--json"], env_user)
    (image,) = [Path(json.loads(line)["path"]) for line in done.stdout.splitlines()
                if line.startswith("{") and json.loads(line).get("event") == "image"]
    smoke.check(user in image.parents, f"with no --home the image goes under the user's home ({image})")
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "marble-studio"], capture_output=True,
                             text=True, check=True).stdout
    newer = repack_with_version(deb, f"{version}+smoke1", work)
    smoke.run(["dpkg", "-i", str(newer)], env, app=False)
    listed = smoke.run(["/usr/bin/marble", "history", "list", "--json"], env_user)
    smoke.check(image.name in listed.stdout and image.is_file(), "after a newer version: image and history kept")
    smoke.run(["dpkg", "--purge", "marble-studio"], env, app=False)
    smoke.check(not Path("/opt/marble-studio").exists() and not Path("/usr/bin/marble").exists(),
                "dpkg --purge removed the program")
    smoke.check(image.is_file() and any((user / ".local" / "share" / "MarbleStudio" / "models").iterdir()),
                "after purging: the user's image and models are still there")
    dpkg_install(smoke, deb)
    listed = smoke.run(["/usr/bin/marble", "history", "list", "--json"], env_user)
    smoke.check(image.name in listed.stdout, "after reinstalling: the history still lists the image")
    smoke.run(["dpkg", "--purge", "marble-studio"], env, app=False)
    smoke.check(not Path("/usr/bin/marble").exists(), "removed again at the end")


def test_tarball(smoke: Smoke, archive: Path, work: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(work / "unpacked", filter="tar")
    (folder,) = (work / "unpacked").iterdir()
    test_folder(smoke, folder, work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m installer.smoke", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--artefact", type=Path, help="a .deb or .tar.gz")
    which.add_argument("--frozen", type=Path, help="a PyInstaller one-folder build")
    parser.add_argument("--log", type=Path, help="where to write the log (default: beside the artefact)")
    args = parser.parse_args(argv)
    subject = (args.artefact or args.frozen).resolve()
    smoke = Smoke(args.log or subject.parent / f"smoke-{subject.name}.log")
    smoke.say(f"smoke test of {subject} on {sys.platform}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="marble-smoke-") as temp:
        work = Path(temp)
        try:
            if args.frozen:
                test_folder(smoke, subject, work)
            elif subject.name.endswith(".deb"):
                test_deb(smoke, subject, work)
            elif subject.name.endswith(".tar.gz"):
                test_tarball(smoke, subject, work)
            else:
                raise SmokeFailure(f"{subject.name}: not a .deb, a .tar.gz or a folder")
            smoke.check(not smoke.unexpected, f"no unexpected stderr lines ({len(smoke.unexpected)})")
        except (SmokeFailure, subprocess.SubprocessError, OSError) as error:
            smoke.say(f"SMOKE FAILED: {error}")
            return 1
    smoke.say(f"SMOKE PASSED in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
