"""The worker's torch import: libraries preloaded with the GIL released, the collector restored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import gc, json, sys, threading, time
from desktop.engine.backends.gentle_import import import_gently, preload_torch_libraries
loaded = []
worker = threading.Thread(target=lambda: loaded.append(preload_torch_libraries()))
ticks = []
worker.start()
while worker.is_alive():  # this thread must keep running while the other one maps libtorch
    ticks.append(time.perf_counter())
    time.sleep(0.001)
worker.join()
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
module = import_gently("torch", ("diffusers:UNet2DConditionModel",))
print(json.dumps({"loaded": loaded[0], "gc": gc.isenabled(), "torch": module.__name__,
                  "diffusers": "diffusers.models" in sys.modules, "max_gap": max(gaps, default=0),
                  "frozen": gc.get_freeze_count() > 0}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload uses the Linux loader")
def test_preload_keeps_other_threads_running_and_import_restores_the_collector():
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == 4 and result["torch"] == "torch" and result["diffusers"]
    assert result["gc"] and result["frozen"]
    # Mapping libtorch takes about 0.3 s; with the GIL held this thread would stall that long.
    assert result["max_gap"] < 0.2
