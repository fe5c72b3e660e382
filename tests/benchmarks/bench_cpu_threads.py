"""Issue 29, CPU: a job on a busy machine, with torch's default thread count and with the app's adaptive one.

    .venv/bin/python tests/benchmarks/bench_cpu_threads.py [--rounds 3] [--steps 20] [--busy N]

Each run is a whole `marble generate` process on the demo model (resources/demo-model, 128x128,
20 steps by default): `--threads C` (C = this machine's usable cores: what torch uses when nobody
sizes its pool, the old behaviour) against `--threads 0` (the automatic choice), interleaved, first
on the machine as it is ("quiet": no load of ours; other users' load is printed), then with N
busy-loop processes of ours occupying the cores (N = the cores by default). Reported: the job's
seconds of the steps phase (prompt encoding and denoising) and of the whole process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common
from bench_cli_vs_diffusers import child_env, load_average, run_cli


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_loops(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], env=child_env()) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--busy", type=int, default=cores(), help="busy-loop processes for the busy case")
    args = parser.parse_args()

    from desktop.engine.resources import Resources

    model = Resources.default().demo_model
    work = Path(tempfile.mkdtemp(prefix="marble-threads-bench-", dir=common.cache_root()))
    try:
        results = measure(args, model, work / "home")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for (machine, label), runs in results.items():
        steps = [run["steps"] for run in runs]
        totals = [run["total"] for run in runs]
        print(f"{machine:6s} {label:9s} steps {common.summary(steps)} s; whole process median "
              f"{statistics.median(totals):.2f} s")


def measure(args: argparse.Namespace, model: Path, home: Path) -> dict[tuple[str, str], list[dict[str, float]]]:
    default_threads = cores()
    print(f"demo model, {args.size}x{args.size}, {args.steps} steps, CPU; usable cores {default_threads}; "
          f"busy case: {args.busy} busy-loop processes")
    run_cli(model, home, home.parent / "warm-up.png", args.steps, args.size, 0)  # the disk cache, the imports
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for machine in ("quiet", "busy"):
        loops = busy_loops(args.busy) if machine == "busy" else []
        try:
            print(f"{machine}: load average before {load_average()}")
            for index in range(args.rounds):
                order = (("default", default_threads), ("adaptive", 0))
                for label, threads in order if index % 2 == 0 else order[::-1]:
                    run = run_cli(model, home, home.parent / f"{machine}-{label}-{index}.png", args.steps,
                                  args.size, threads)
                    results.setdefault((machine, label), []).append(run)
            print(f"{machine}: load average after {load_average()}")
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
    return results


if __name__ == "__main__":
    main()
