"""A second `marble-studio` on the same data folder brings the first window forward and exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from desktop.bridge.single_instance import SingleInstance, instance_name
from desktop.engine.paths import AppPaths

ROOT = Path(__file__).resolve().parents[2]


def launch(home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "desktop", "--home", str(home)], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_a_second_launch_on_the_same_home_activates_the_first(qtbot, tmp_path):
    home = tmp_path / "home"
    first = SingleInstance(instance_name(AppPaths.for_root(home).models.parent))
    assert first.claim()
    with qtbot.waitSignal(first.activation_requested, timeout=60_000):
        second = launch(home)
    first.close()
    assert second.returncode == 0
    assert "already running with this data folder; its window was brought forward" in second.stderr


def test_another_home_is_another_instance(qtbot, tmp_path):
    first = SingleInstance(instance_name(AppPaths.for_root(tmp_path / "one").models.parent))
    assert first.claim()
    other = SingleInstance(instance_name(AppPaths.for_root(tmp_path / "two").models.parent))
    assert other.claim()
    first.close()
    other.close()


def test_a_stale_socket_from_a_killed_instance_is_taken_over(qtbot, tmp_path):
    name = instance_name(tmp_path)
    code = (
        "import os, sys\n"
        "from PySide6.QtCore import QCoreApplication\n"
        "from desktop.bridge.single_instance import SingleInstance\n"
        "app = QCoreApplication([])\n"
        f"assert SingleInstance({name!r}).claim()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=False)
    assert killed.returncode == -9
    taken = SingleInstance(name)
    assert taken.claim()
    with qtbot.waitSignal(taken.activation_requested, timeout=10_000):
        assert not SingleInstance(name).claim()  # the name is served again, not merely ignored
    taken.close()
