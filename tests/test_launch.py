"""Start-up: the window's system checks, the frozen app's dispatch and `--self-test`, run for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from desktop.launch import explain_missing_library, frozen_main, qt_start_problem

ROOT = Path(__file__).resolve().parents[1]


def test_no_display_is_a_sentence_not_an_abort():
    problem = qt_start_problem({})
    assert problem is not None and "found no display" in problem and "QT_QPA_PLATFORM=offscreen" in problem


def test_offscreen_starts_here():
    assert qt_start_problem({"QT_QPA_PLATFORM": "offscreen"}) is None


def test_a_loader_error_names_the_debian_package():
    text = explain_missing_library("libEGL.so.1: cannot open shared object file: No such file or directory")
    assert text is not None and "libEGL.so.1" in text and "sudo apt install libegl1" in text
    unknown = explain_missing_library("libfoo.so.7: cannot open shared object file")
    assert unknown is not None and "libfoo.so.7" in unknown and "apt install" not in unknown


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("cc") is None, reason="needs Linux and cc")
def test_a_platform_plugin_missing_a_library_is_named(tmp_path):
    # A real shared object that needs a library the system lacks, loaded as the platform plugin would be.
    stub_src, plugin_src = tmp_path / "stub.c", tmp_path / "plugin.c"
    stub_src.write_text("int marble_missing(void) { return 1; }\n")
    plugin_src.write_text("int marble_missing(void);\nint plugin(void) { return marble_missing(); }\n")
    stub = tmp_path / "libmarblegone.so.3"
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libmarblegone.so.3", "-o", str(stub), str(stub_src)],
                   check=True)
    plugin = tmp_path / "libqfake.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(plugin), str(plugin_src), str(stub)], check=True)
    stub.unlink()
    problem = qt_start_problem({"QT_QPA_PLATFORM": "offscreen"}, plugin_file=plugin)
    assert problem is not None and "libmarblegone.so.3 is missing" in problem


def test_frozen_dispatch_by_executable_name(capsys):
    assert frozen_main(["samplers"], executable="/opt/marble-studio/marble") == 0
    assert "DPM++ 2M Karras" in capsys.readouterr().out


def test_frozen_dispatch_runs_the_converter_child(tmp_path, capsys):
    from desktop.engine.backends.pickle_convert import CHILD_FLAG, CHILD_NAME

    # Wrong arity proves the converter (not the CLI or the window) took the call.
    assert frozen_main([CHILD_FLAG, CHILD_NAME, "only-one"], executable="/x/marble-studio") == 2
    assert "usage: pickle_convert" in capsys.readouterr().err


def test_self_test_generates_through_the_real_window(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "desktop", "--self-test", "--self-test-report", str(tmp_path / "report.txt"),
         "--home", str(tmp_path / "home")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch not loaded" in done.stdout and "generating with marble-demo" in done.stdout
    saved = list((tmp_path / "home" / "outputs").rglob("*.png"))
    assert len(saved) == 1 and f"self-test: passed: {saved[0]}" in done.stdout
    # The same lines in the report file, for a windowed executable without stdout.
    assert (tmp_path / "report.txt").read_text(encoding="utf-8") == done.stdout
    # The start kept its story in the log folder: the job's request and how long it took.
    log_text = (tmp_path / "home" / "logs" / "marble-studio.log").read_text(encoding="utf-8")
    assert "Marble Studio" in log_text and "started: " in log_text and "model='marble-demo'" in log_text
    assert " finished in " in log_text and saved[0].name in log_text
