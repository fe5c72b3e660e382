"""The crash tests' fork server (tests/support/forked_cli.py): each child runs the command line with the environment
it is given, a child that hangs is killed and reported as subprocess.run's timeout reports it, and the server goes
on serving after a child of its was killed."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.forked_cli import ForkedCli


@pytest.fixture(scope="module")
def forked() -> Iterator[ForkedCli]:
    server = ForkedCli(os.environ)
    yield server
    server.close()


def test_a_child_runs_the_command_line_in_the_environment_it_is_given(forked: ForkedCli, tmp_path: Path):
    home = tmp_path / "home"
    done = forked.run(["history", "jobs", "--json"], os.environ | {"MARBLE_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("", "[]") and (home / "history").is_dir()  # MARBLE_HOME was the child's home
    bad = forked.run(["history", "show", "no-such-image", "--json"], os.environ | {"MARBLE_HOME": str(home)})
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and bad.stderr.strip(), bad.stderr


def test_a_child_that_hangs_is_killed_and_the_server_goes_on(forked: ForkedCli, tmp_path: Path):
    # Lined up to wait for a second process that never comes (the barrier waits up to a minute).
    env = os.environ | {"MARBLE_HOME": str(tmp_path / "home"), "MARBLE_TEST_BARRIER": f"{tmp_path / 'barrier'}:2"}
    child = forked.start(["generate", "--prompt", "a red square", "--steps", "1", "--width", "64", "--height", "64",
                          "--device", "cpu", "--json"], env)
    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        forked.wait(child, timeout=3)
    events = [json.loads(line)["event"] for line in timed_out.value.output.splitlines() if line.startswith("{")]
    assert "finished" not in events and "failed" not in events, events  # stopped, not left to run on
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)  # killed and reaped by the server
    done = forked.run(["history", "jobs", "--json"], os.environ | {"MARBLE_HOME": str(tmp_path / "other")})
    assert done.returncode == 0 and json.loads(done.stdout or "[]") == [], done.stderr
