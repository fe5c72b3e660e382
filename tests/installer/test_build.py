"""installer.build refuses what it cannot build: another system's target, or a torch of the other variant."""

from __future__ import annotations

import sys

import pytest

from installer import build


def test_the_torch_here_is_recognised():
    # CI and development machines install the CPU wheel (torch==2.13.0+cpu).
    assert build.torch_variant() == "cpu"


def test_a_variant_that_does_not_match_the_installed_torch_is_refused(capsys):
    assert build.main(["--target", "linux", "--torch", "cuda", "--dist", "unused"]) == 1
    assert "--torch cuda asked for, but this environment's torch is the cpu build" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="the cross-build refusal is checked from Linux")
def test_another_systems_target_is_refused(capsys):
    assert build.main(["--target", "windows", "--torch", "cpu", "--dist", "unused"]) == 1
    assert "a windows build must run on windows" in capsys.readouterr().err
