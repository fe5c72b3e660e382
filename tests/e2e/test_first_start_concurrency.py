"""Several `marble generate` processes started at once on a new home: each gets the demo model.

Real processes (forked from one that has imported the engine: tests/support/forked_cli.py), lined up
(tests/support/faults/sitecustomize.py) right before the first-start install, so they race for it every time
instead of now and then.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from desktop.engine.library.demo import DEMO_MODEL_NAME
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.support.forked_cli import ForkedCli

PROCESSES = 3


def test_generate_processes_started_at_once_on_a_new_home_all_get_the_demo_model(tmp_path: Path):
    home = tmp_path / "home"
    env = os.environ | {"MARBLE_HOME": str(home), "HF_HUB_OFFLINE": "1",
                        "MARBLE_TEST_BARRIER": f"{tmp_path / 'barrier'}:{PROCESSES}"}
    server = ForkedCli(os.environ)
    try:
        children = [
            server.start(["generate", "--prompt", "a red square", "--steps", "1", "--seed", str(seed), "--width", "64",
                          "--height", "64", "--device", "cpu", "--json", "--no-preview"], env)
            for seed in range(PROCESSES)
        ]
        results = [server.wait(child) for child in children]
    finally:
        server.close()
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr[-2000:]
        finished = json.loads(result.stdout.splitlines()[-1])
        assert finished["event"] == "finished" and Path(finished["paths"][0]).is_file()
    paths = AppPaths.for_root(home)
    assert [record.name for record in Library(paths).records("model")] == [DEMO_MODEL_NAME]
    assert [p.name for p in paths.models.iterdir() if not p.name.endswith(".lock")] == [DEMO_MODEL_NAME]
    assert len(list(paths.outputs.rglob("*.png"))) == PROCESSES
