"""How many CPU threads a job's torch work should use, from the cores other processes leave free.

torch's intra-op pool starts with one thread per core and keeps it. When another process is busy on
those cores, the pool's threads wait for each other at every operator's barrier while the scheduler
hands their cores to the other process: on a 2-core machine with a test run beside it, a 20-step demo
job took 40.5 s with the default two threads and 4.9 s with one. So each CPU job measures, just
before it starts, how much of the machine the other processes use and sizes the pool to what is left.

Pure Python (no torch): the backend applies the count with `torch.set_num_threads` on its own thread.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# A window long enough for the kernel's 10 ms accounting ticks to average over, short beside a CPU job.
SAMPLE_SECONDS = 0.1
# Round free cores up from .7: a thread too many costs far more (barrier waits) than one too few.
_ROUND_UP_FROM = 0.7


@dataclass(frozen=True)
class ThreadChoice:
    """The count a job uses and why, for the log."""

    threads: int
    reason: str


def choose_threads(setting: int, default: int, cores: int, others_busy: float | None) -> ThreadChoice:
    """The thread count for a job.

    `setting`: the user's pin (0 = automatic); `default`: torch's own count at start; `cores`: the
    cores this process may run on; `others_busy`: how many cores other processes keep busy now, or
    None where that cannot be measured (then torch's default stands).
    """
    if setting > 0:
        return ThreadChoice(setting, f"{setting} (set by the user)")
    if others_busy is None:
        return ThreadChoice(max(1, default), f"{max(1, default)} (torch's default; the load is not measurable here)")
    free = max(0.0, cores - others_busy)
    threads = max(1, min(default, cores, math.floor(free + 1 - _ROUND_UP_FROM)))
    return ThreadChoice(threads, f"{threads} (other processes use {others_busy:.1f} of {cores} cores)")


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _read_proc_stat(path: Path) -> tuple[float, float] | None:
    """(busy, total) seconds of all CPUs since boot from /proc/stat's first line, or None."""
    try:
        fields = path.read_text(encoding="ascii").split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user/nice]
    total = sum(ticks[:8])
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    hertz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hertz, total / hertz


def others_busy_cores(
    seconds: float = SAMPLE_SECONDS,
    stat_path: Path = Path("/proc/stat"),
    own_cpu: Callable[[], float] = time.process_time,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """Cores kept busy by other processes over the next `seconds` (ours subtracted), or None where the
    system's CPU use cannot be read (Windows, macOS: torch's default then stands)."""
    before = _read_proc_stat(stat_path)
    if before is None:
        return None
    own_before = own_cpu()
    sleep(seconds)
    after = _read_proc_stat(stat_path)
    own_after = own_cpu()
    if after is None:
        return None
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return None
    cpus = os.cpu_count() or 1
    # total counts every CPU of the machine; their busy share, times the count, is cores kept busy.
    others = max(0.0, busy - (own_after - own_before))
    return min(float(cpus), others / total * cpus)
