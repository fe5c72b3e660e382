"""Issue 21: the frozen window appears within 1.0 s of launch on a warm cache, torch not loaded.

    .venv/bin/python tests/benchmarks/bench_frozen_startup.py --frozen dist/MarbleStudio [--runs 7]

Each run launches the frozen `marble-studio --self-test` (offscreen, a fresh home per run, the app's
own first-start work included) and times process launch -> the "window painted" line on its stdout,
then stops it (the self-test's image is not waited for). The first run warms the file cache. For
comparison, the same from source (`python -m desktop --self-test`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def time_to_paint(command: list[str], env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory(prefix="marble-start-") as home:
        started = time.perf_counter()
        child = subprocess.Popen([*command, "--self-test", "--home", home], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            assert child.stdout is not None
            for line in child.stdout:
                if line.startswith("self-test: window painted"):
                    return time.perf_counter() - started
            raise RuntimeError(f"{command[0]} ended without painting (exit {child.wait()})")
        finally:
            child.kill()
            child.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frozen", type=Path, required=True, help="the one-folder build, e.g. dist/MarbleStudio")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    frozen = [str(args.frozen.resolve() / ("marble-studio.exe" if sys.platform == "win32" else "marble-studio"))]
    source = [sys.executable, "-m", "desktop"]
    env_source = env | {"PYTHONPATH": str(common.ROOT)}
    time_to_paint(frozen, env)  # warm the file cache
    time_to_paint(source, env_source)
    frozen_runs, source_runs = [], []
    for _ in range(args.runs):  # interleaved, so both see the same machine
        frozen_runs.append(time_to_paint(frozen, env))
        source_runs.append(time_to_paint(source, env_source))
    print(f"frozen window painted, seconds from launch: {common.summary(frozen_runs)} (target <= 1.0)")
    print(f"from source (python -m desktop), seconds from launch: {common.summary(source_runs)}")


if __name__ == "__main__":
    main()
