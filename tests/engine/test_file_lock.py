"""The lock that lets one of several processes do first-start work while the others wait."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from desktop.engine.errors import StorageError
from desktop.engine.file_lock import exclusive_lock

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_holder_waits_then_gives_up_with_a_message(tmp_path: Path):
    lock = tmp_path / "config" / "work.lock"
    with exclusive_lock(lock), pytest.raises(StorageError, match="busy with the test work"):
        with exclusive_lock(lock, timeout_s=0.2, what="the test work"):
            pass
    with exclusive_lock(lock, timeout_s=0.2):
        pass  # free again once the first holder is done


def test_a_killed_holder_does_not_leave_the_lock_taken(tmp_path: Path):
    lock = tmp_path / "work.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from desktop.engine.file_lock import exclusive_lock\n"
         f"with exclusive_lock(Path({str(lock)!r})):\n    print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StorageError):
            with exclusive_lock(lock, timeout_s=0.2):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    with exclusive_lock(lock, timeout_s=5):
        pass
