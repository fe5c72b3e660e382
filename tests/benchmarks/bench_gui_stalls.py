"""Target 4 of issue 7: the GUI thread never freezes while the worker imports torch, loads and generates.

    .venv/bin/python tests/benchmarks/bench_gui_stalls.py [--size 256] [--steps 2]

The real window, the real controller and worker, the SD 1.5-size model in the library. A 5 ms timer on
the GUI thread records the gap between its ticks from Generate to the finished image; a stall is a gap
minus the 5 ms interval.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.app import build_main_window, diffusers_runner_factory
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.outputs import ImageWriter
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources

    folder = common.sd15_random_folder()
    _app = QApplication([])  # kept alive for the whole run
    paths = AppPaths.for_root(tempfile.mkdtemp(prefix="marble-bench-")).ensure()
    (paths.models / "sd15-random").symlink_to(folder, target_is_directory=True)
    catalog = ModelCatalog(paths.models)
    factory = diffusers_runner_factory(paths, Resources.default(), catalog, ImageWriter(paths.outputs))
    window, controller = build_main_window(paths, factory, catalog)
    window.show()

    gaps: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    stamps: list[float] = []

    def tick() -> None:
        now = clock.nsecsElapsed()
        gaps.append((now - last[0]) / 1e6)
        stamps.append(now / 1e6)
        last[0] = now

    timeline: list[tuple[float, str]] = []
    controller.event_received.connect(
        lambda e: timeline.append((clock.nsecsElapsed() / 1e6, type(e).__name__)) if type(e).__name__ not in (
            "PreviewReady",) else None
    )

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    loop = QEventLoop()
    outcome = {}
    controller.job_finished.connect(lambda e: (outcome.setdefault("event", e), loop.quit()))
    controller.job_failed.connect(lambda e: (outcome.setdefault("event", e), loop.quit()))
    request = GenerationRequest(prompt="a red fox", model="sd15-random", steps=args.steps, seed=1,
                                width=args.size, height=args.size, device="cpu")
    started = time.perf_counter()
    timer.start()
    controller.submit(request)
    loop.exec()
    timer.stop()
    seconds = time.perf_counter() - started
    controller.shutdown()
    stalls = [max(0.0, gap - 5.0) for gap in gaps]
    print(f"job: {type(outcome['event']).__name__} in {seconds:.1f} s (torch import + SD1.5-size load + "
          f"{args.steps} steps at {args.size}x{args.size})")
    worst = sorted(range(len(stalls)), key=stalls.__getitem__)[-5:]
    for index in sorted(worst):
        before = [name for at, name in timeline if at <= stamps[index]]
        after = before[-1] if before else "submit"
        print(f"  stall {stalls[index]:.0f} ms ending at {stamps[index]:.0f} ms, after {after}")
    print(f"target 4: GUI stalls over {len(gaps)} ticks: p99 {common.percentile(stalls, 0.99):.1f} ms (<= 33), "
          f"max {max(stalls):.1f} ms (<= 100), median gap {common.percentile(gaps, 0.5):.1f} ms")


if __name__ == "__main__":
    main()
