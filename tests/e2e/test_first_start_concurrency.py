"""Several `marble generate` processes started at once on a new home: each gets the demo model.

Real processes, lined up (tests/support/faults/sitecustomize.py) right before the first-start install,
so they race for it every time instead of now and then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from desktop.engine.library.demo import DEMO_MODEL_NAME
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "tests" / "support" / "faults"
PROCESSES = 3


def test_generate_processes_started_at_once_on_a_new_home_all_get_the_demo_model(tmp_path: Path):
    home = tmp_path / "home"
    env = os.environ | {"MARBLE_HOME": str(home), "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": os.pathsep.join([str(FAULTS), str(ROOT)]),
                        "MARBLE_TEST_BARRIER": f"{tmp_path / 'barrier'}:{PROCESSES}"}
    processes = [
        subprocess.Popen([sys.executable, "-m", "desktop", "generate", "--prompt", "a red square", "--steps", "1",
                          "--seed", str(seed), "--width", "64", "--height", "64", "--device", "cpu", "--json",
                          "--no-preview"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for seed in range(PROCESSES)
    ]
    results = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, out + err[-2000:]
        finished = json.loads(out.splitlines()[-1])
        assert finished["event"] == "finished" and Path(finished["paths"][0]).is_file()
    paths = AppPaths.for_root(home)
    assert [record.name for record in Library(paths).records("model")] == [DEMO_MODEL_NAME]
    assert [p.name for p in paths.models.iterdir() if not p.name.endswith(".lock")] == [DEMO_MODEL_NAME]
    assert len(list(paths.outputs.rglob("*.png"))) == PROCESSES
