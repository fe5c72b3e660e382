"""The installed PySide6 must not drain Python's singletons: a long session would abort the app.

PySide6 6.12.0 on Python 3.11 drops a reference to `True` per signal emit and to `None` per Python
`data()` override returning None; pyproject.toml excludes it. This runs what a long session does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STRESS = textwrap.dedent(
    """
    from PySide6.QtCore import QAbstractListModel, QCoreApplication, QModelIndex, QObject, Qt, Signal

    class Source(QObject):
        fired = Signal(int)

    class Model(QAbstractListModel):
        def rowCount(self, parent=QModelIndex()):
            return 1

        def data(self, index, role=0):
            return None

    app = QCoreApplication([])
    source, model = Source(), Model()
    index = model.index(0)
    for n in range(100_000):
        source.fired.emit(n)
        index.data(Qt.ItemDataRole.DecorationRole)
    print("survived", flush=True)
    """
)


def test_many_emits_and_none_returning_data_calls_do_not_abort_python():
    env = os.environ | {"PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run([sys.executable, "-c", STRESS], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "survived" in result.stdout
