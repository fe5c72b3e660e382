"""Target 4 of issue 7: the GUI thread never freezes while the worker imports torch, loads and generates.

    .venv/bin/python tests/benchmarks/bench_gui_stalls.py [--size 256] [--steps 2] [--history 20000]

The real window, the real controller and worker, the SD 1.5-size model in the library, and a history
of N images (real PNG files and their rows, as history_scroll.py makes them) in the history panel, which
the finished image reloads. A 5 ms timer on the GUI thread records the gap between its ticks from
Generate to the finished image; a stall is a gap minus the 5 ms interval.
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
    parser.add_argument("--history", type=int, default=20_000, help="images in the history grid (0: no panel)")
    args = parser.parse_args()

    from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.app import build_main_window, diffusers_runner_factory
    from desktop.engine.history import HistoryStore
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
    history = None
    if args.history:
        from history_scroll import fill

        history = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
        print(f"history: {args.history:,} images filled in {fill(paths, history, args.history):.1f} s")
    factory = diffusers_runner_factory(paths, Resources.default(), catalog, ImageWriter(paths.outputs),
                                       history=history)
    window, controller = build_main_window(paths, factory, catalog, history)
    window.resize(1600, 1000)
    window.show()
    # The window's first layout and paint is start-up (bench_startup measures it), not a stall of a job.
    settle = QElapsedTimer()
    settle.start()
    first_paint = 0.0
    while settle.elapsed() < 1000:
        before = settle.nsecsElapsed()
        _app.processEvents()
        first_paint = max(first_paint, (settle.nsecsElapsed() - before) / 1e6)
    print(f"window shown: longest event-loop pass while it settles {first_paint:.1f} ms")

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
    seconds = time.perf_counter() - started
    panel = window.history_panel
    if panel is not None:
        # The history's reload for the new image (a timer after it is saved) is measured too.
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline and panel.model.total <= args.history:
            _app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)
    timer.stop()
    if panel is not None:
        rect = panel.view.visualRect(panel.model.index(0))
        print(f"history grid: {panel.model.total:,} images, {panel.model.rowCount():,} rows loaded, "
              f"first cell {rect.width()}x{rect.height()}")
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
