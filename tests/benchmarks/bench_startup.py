"""Target 3 of issue 7: process start to main window painted, with torch not yet imported.

    .venv/bin/python tests/benchmarks/bench_startup.py [--runs 7]

Each run is a fresh interpreter (warm file cache after the first): it builds the real window through
desktop.app, shows it, and reports once the first paint event has run. Beside it: a bare PySide6 window
and `python -c "import torch, diffusers"`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import common

CHILD = r"""
import json, os, sys, tempfile, time
from PySide6.QtCore import QObject, QEvent, QTimer
from PySide6.QtWidgets import QApplication, QWidget
app = QApplication([])
if os.environ["BENCH_KIND"] == "marble":
    from desktop.app import apply_theme, build_main_window
    from desktop.engine.paths import AppPaths
    apply_theme(app)
    paths = AppPaths.for_root(tempfile.mkdtemp()).ensure()
    window, controller = build_main_window(paths, lambda: None)
else:
    window, controller = QWidget(), None
    window.resize(1280, 800)

class Painted(QObject):
    def eventFilter(self, obj, event):
        if obj is window and event.type() == QEvent.Type.Paint and not hasattr(self, "t"):
            self.t = time.time()
            QTimer.singleShot(0, app.quit)
        return False

spy = Painted()
window.installEventFilter(spy)
window.show()
if controller is not None:  # as desktop.app.main does: the token counter loads in the background
    from desktop.engine.resources import TOKENIZER_FOLDER, Resources
    window.load_token_counter(Resources.default().tokenizers / TOKENIZER_FOLDER / "merges.txt", paths.embeddings)
app.exec()
print(json.dumps({"seconds": spy.t - float(os.environ["BENCH_T0"]), "torch": "torch" in sys.modules}))
if controller is not None:
    controller.shutdown()
"""


def run_child(kind: str) -> dict:
    env = os.environ | {"BENCH_KIND": kind, "BENCH_T0": repr(time.time()), "PYTHONPATH": str(common.ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    run_child("marble")  # warm the file cache
    marble = [run_child("marble") for _ in range(args.runs)]
    bare = [run_child("bare") for _ in range(args.runs)]
    imports = []
    for _ in range(3):
        started = time.time()
        subprocess.run([sys.executable, "-c", "import torch, diffusers"], check=True, capture_output=True)
        imports.append(time.time() - started)
    print(f"platform: {os.environ.get('QT_QPA_PLATFORM')}")
    print(f"target 3: Marble window painted, seconds: {common.summary([m['seconds'] for m in marble])} (<= 0.8); "
          f"torch imported: {any(m['torch'] for m in marble)}")
    print(f"bare PySide6 window painted, seconds: {common.summary([b['seconds'] for b in bare])}")
    print(f"python -c 'import torch, diffusers', seconds: {common.summary(imports)}")


if __name__ == "__main__":
    main()
