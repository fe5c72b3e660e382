"""The application icon, the Linux desktop entry and the release workflow: each is checked against its
source of truth (the SVG, desktop-file-validate and the app, actionlint), with no build and no network."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from desktop.engine.resources import APP_ICON_SIZES, Resources, app_icon_name
from installer.icon import ICO_NAME, ICO_SIZES

ROOT = Path(__file__).resolve().parents[2]
ICONS = ROOT / "resources" / "icons"
DESKTOP_ENTRY = ROOT / "resources" / "marble-studio.desktop"
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MARBLE_HOME", None)
    # faulthandler: a crash in the child prints its Python stack instead of only a signal number.
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def assert_pixels_close(committed: Image.Image, fresh: Image.Image, what: str) -> None:
    """Equal up to anti-aliasing noise: another Qt or Pillow release may round a few edge pixels apart,
    but a changed colour, band or outline moves many pixels by far more."""
    assert committed.size == fresh.size, what
    a = np.asarray(committed.convert("RGBA"), dtype=np.int16)
    b = np.asarray(fresh.convert("RGBA"), dtype=np.int16)
    difference = np.abs(a - b)
    far_off = float((difference.max(axis=2) > 24).mean())
    assert difference.mean() < 1.0 and far_off < 0.005, (
        f"{what} is stale (mean difference {difference.mean():.2f}, {far_off:.2%} of pixels far off): "
        "run `python -m installer.icon` and commit resources/icons/"
    )


def ico_frames(path: Path) -> dict[int, Image.Image]:
    frames = {}
    with Image.open(path) as ico:
        for width, height in ico.info["sizes"]:
            assert width == height, path
            ico.size = (width, height)
            frames[width] = ico.copy().convert("RGBA")
    return frames


@pytest.fixture(scope="module")
def fresh_icons(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The icon rendered again from the committed SVG, by the same command a developer runs."""
    out = tmp_path_factory.mktemp("icons")
    result = run_python(["-m", "installer.icon", "--out", str(out)], ROOT)
    assert result.returncode == 0, result.stderr
    return out


def test_committed_pngs_and_ico_are_rendered_from_the_current_svg(fresh_icons: Path) -> None:
    for size in APP_ICON_SIZES:
        with Image.open(ICONS / app_icon_name(size)) as committed, Image.open(fresh_icons / app_icon_name(size)) as new:
            assert_pixels_close(committed, new, app_icon_name(size))
    committed_frames, fresh_frames = ico_frames(ICONS / ICO_NAME), ico_frames(fresh_icons / ICO_NAME)
    assert sorted(committed_frames) == sorted(fresh_frames)
    for size, frame in committed_frames.items():
        assert_pixels_close(frame, fresh_frames[size], f"{ICO_NAME} at {size} px")


def test_the_ico_holds_every_size_windows_asks_for_each_drawn_for_its_size() -> None:
    frames = ico_frames(ICONS / ICO_NAME)
    # Title bar and lists (16), 125% scaling (24), desktop (32), large icons (48), Explorer and high DPI (256).
    assert {16, 24, 32, 48, 256} <= set(frames)
    assert set(frames) == set(ICO_SIZES)
    for size, frame in frames.items():
        with Image.open(ICONS / app_icon_name(size)) as png:
            # The ICO's frames are the filtered renders, not Pillow's rescaling of the 256 px one.
            assert_pixels_close(frame, png, f"{ICO_NAME} at {size} px against its PNG")


@pytest.mark.parametrize("size", APP_ICON_SIZES)
def test_every_size_is_a_round_marble_on_a_transparent_ground(size: int) -> None:
    with Image.open(ICONS / app_icon_name(size)) as png:
        assert png.size == (size, size) and png.mode == "RGBA"
        alpha = np.asarray(png)[:, :, 3]
    centre, corner = alpha[size // 2, size // 2], alpha[0, 0]
    assert centre == 255 and corner == 0
    # A disc filling the square (radius 118 of 128 with the rim), a silhouette that survives 16 px.
    coverage = float((alpha > 127).mean())
    assert abs(coverage - np.pi / 4 * (236 / 256) ** 2) < 0.05


def test_the_app_gets_every_icon_size_from_its_resources(qapp) -> None:
    from desktop.app import application_icon

    icon = application_icon(Resources.default())
    assert sorted(size.width() for size in icon.availableSizes()) == sorted(APP_ICON_SIZES)


def test_the_window_names_its_desktop_entry_and_shows_the_icon(tmp_path: Path) -> None:
    code = f"""
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication
        import desktop.app

        seen = {{}}

        def inspect_and_quit():
            app = QApplication.instance()
            seen["desktop file"] = app.desktopFileName()
            seen["program"] = app.arguments()[0]
            seen["icon sizes"] = sorted(s.width() for s in app.windowIcon().availableSizes())
            QApplication.quit()

        QTimer.singleShot(0, inspect_and_quit)
        code = desktop.app.main(["--home", {str(tmp_path / "home")!r}])
        print("RESULT", code, seen)
    """
    result = run_python(["-c", textwrap.dedent(code)], tmp_path)
    assert result.returncode == 0, result.stderr
    expected = {"desktop file": "marble-studio", "program": "marble-studio", "icon sizes": sorted(APP_ICON_SIZES)}
    assert f"RESULT 0 {expected}" in result.stdout


def read_desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in desktop entries
    parser.read(DESKTOP_ENTRY, encoding="utf-8")
    return parser["Desktop Entry"]


def test_the_desktop_entry_launches_the_window_with_its_icon() -> None:
    from desktop.app import APP_NAME, DESKTOP_FILE_NAME

    entry = read_desktop_entry()
    assert entry["Type"] == "Application"
    assert entry["Name"] == APP_NAME
    assert entry["GenericName"] and entry["Comment"]
    assert entry["Terminal"] == "false"
    assert entry["Icon"] == "marble-studio"
    assert set(entry["Categories"].rstrip(";").split(";")) >= {"Graphics", "2DGraphics", "RasterGraphics"}
    assert "image/png" in entry["MimeType"].split(";")
    # The command is the window's entry point as pyproject.toml installs it (the .deb puts it on the PATH).
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    command = entry["Exec"].split()[0]
    assert f'{command} = "desktop.launch:window_main"' in pyproject
    # Docks group the window under this entry only when the names agree (Wayland app id, X11 WM_CLASS).
    assert entry["StartupWMClass"] == DESKTOP_FILE_NAME == DESKTOP_ENTRY.stem


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils is not installed")
def test_the_desktop_entry_passes_desktop_file_validate() -> None:
    result = subprocess.run(
        ["desktop-file-validate", str(DESKTOP_ENTRY)], capture_output=True, text=True, timeout=60
    )
    # It exits 0 on hints too; those are worth fixing as well.
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def find_actionlint() -> str | None:
    # The `test` extra installs it beside this Python; a developer may also have one on the PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("actionlint", path=search)


def test_the_release_workflow_passes_actionlint() -> None:
    actionlint = find_actionlint()
    if actionlint is None:
        if os.environ.get("CI"):
            pytest.fail("actionlint is missing: CI installs it with the `test` extra (pip install -e '.[test]')")
        pytest.skip("actionlint is not installed: pip install -e '.[test]'")
    # actionlint also runs shellcheck on every run: block when shellcheck is on the PATH.
    command = [actionlint, "-no-color", str(WORKFLOW.relative_to(ROOT))]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def run_lines(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_the_workflow_builds_both_torch_variants_on_each_system_and_smoke_tests_them() -> None:
    jobs = workflow()["jobs"]
    for name, runner, build, smoke in (
        ("linux", "ubuntu-22.04", "--target linux", "installer.smoke --artefact"),
        ("windows", "windows-latest", "--target windows", "installer.smoke --frozen dist/MarbleStudio"),
    ):
        job = jobs[name]
        assert job["runs-on"] == runner
        assert {entry["torch"] for entry in job["strategy"]["matrix"]["include"]} == {"cuda", "cpu"}
        commands = run_lines(job)
        assert f'python -m installer.build {build} --torch "${{{{ matrix.torch }}}}"' in commands
        assert commands.index("installer.build") < commands.index(smoke)
        assert "pip install -e '.[build]'" in commands
        assert '"torch==$TORCH_VERSION"' in commands
        uploads = [step for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact@")]
        assert len(uploads) == 1 and uploads[0]["with"]["if-no-files-found"] == "error"


def test_the_release_job_runs_on_tags_only_after_both_builds_and_may_write() -> None:
    document = workflow()
    # PyYAML reads the bare key `on` as True (YAML 1.1).
    triggers = document.get("on", document.get(True))
    assert triggers["push"]["tags"] == ["v*"] and "workflow_dispatch" in triggers
    assert document["permissions"] == {"contents": "read"}
    release = document["jobs"]["release"]
    assert set(release["needs"]) == {"linux", "windows"}
    assert release["permissions"] == {"contents": "write"}
    assert release["if"] == "startsWith(github.ref, 'refs/tags/v')"
    commands = run_lines(release)
    assert "gh release create" in commands and "gh release upload" in commands
    assert any("GH_TOKEN" in step.get("env", {}) for step in release["steps"])
