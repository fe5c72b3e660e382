"""Benchmark: does the history panel keep the GUI thread free with 20,000 images?

Run by hand (pytest does not collect tests/benchmarks):

    QT_QPA_PLATFORM=offscreen .venv/bin/python tests/benchmarks/history_scroll.py [--records 20000]

It fills a scratch library with N real PNG files and their records, then opens the history panel and
scrolls it from top to bottom the way a user drags the scroll bar (a step every 16 ms), while a 5 ms
QTimer records how late each of its ticks comes. A late tick is a GUI-thread stall: an event loop
that is never blocked ticks every ~5 ms. Thumbnails are made on the pool meanwhile, as in the app.
Prints the construction time of the panel and the tick gaps (median, p99, max) per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QThreadPool, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from desktop.bridge.history_model import HistoryModel  # noqa: E402
from desktop.engine.history import HistoryStore  # noqa: E402
from desktop.engine.paths import AppPaths  # noqa: E402
from desktop.ui.history_panel import HistoryPanel  # noqa: E402

TICK_MS = 5
SCROLL_STEP_MS = 16
WORDS = ("fox", "whale", "castle", "portrait", "forest", "neon", "city", "oil painting", "watercolour", "robot",
         "sunset", "mountain", "cat", "dragon", "marble statue", "spaceship", "garden", "ocean", "snow", "desert")


def fill(paths: AppPaths, store: HistoryStore, count: int) -> float:
    """N small real PNGs in dated folders, and their records in one transaction (a bulk import)."""
    started = time.perf_counter()
    rows = []
    for n in range(count):
        folder = paths.outputs / f"2026-{1 + n // 2000:02d}-01"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{n % 2000 + 1:05d}-{n}.png"
        Image.new("RGB", (64, 64), (n % 251, (n // 251) % 241, 90)).save(path, compress_level=1)
        prompt = f"a {WORDS[n % 20]} and a {WORDS[(n // 20) % 20]}, detailed, {n}"
        rows.append({
            "path": str(path.resolve()), "created": 1_700_000_000 + n, "prompt": prompt, "negative": "blurry",
            "model": f"model-{n % 5}", "model_hash": None, "lora_hashes": "", "seed": n, "sampler": "Euler a",
            "steps": 30, "cfg": 7.0, "width": 512, "height": 512,
            "request_json": json.dumps({"prompt": prompt, "model": f"model-{n % 5}", "seed": n}),
            "timings_json": "{}", "device": "cuda fp16", "source": "marble", "job_id": None,
        })
    with store._db.transaction() as tx:  # noqa: SLF001 - a bulk import, one transaction instead of 20,000
        for row in rows:
            store._images.upsert(tx, row)  # noqa: SLF001
    return time.perf_counter() - started


class GapMeter:
    """Records the time between ticks of a 5 ms timer on the GUI thread."""

    def __init__(self) -> None:
        self.timer = QTimer(interval=TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.clock = QElapsedTimer()
        self.gaps: list[float] = []
        self._last = 0

    def start(self) -> None:
        self.gaps = []
        self.clock.start()
        self._last = self.clock.nsecsElapsed()
        self.timer.start()

    def stop(self) -> list[float]:
        self.timer.stop()
        return self.gaps

    def _tick(self) -> None:
        now = self.clock.nsecsElapsed()
        self.gaps.append((now - self._last) / 1e6)
        self._last = now


def summary(gaps: list[float]) -> dict[str, float]:
    if not gaps:
        return {"ticks": 0}
    ordered = sorted(gaps)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"ticks": len(gaps), "median_ms": round(statistics.median(ordered), 2), "p99_ms": round(p99, 2),
            "max_ms": round(ordered[-1], 2)}


def run_phase(app: QApplication, meter: GapMeter, action, seconds: float) -> list[float]:  # noqa: ANN001
    meter.start()
    QTimer.singleShot(50, action)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        app.processEvents()
        time.sleep(0.0005)  # the benchmark's own loop; the GUI thread under test is app.processEvents
    return meter.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--scroll-seconds", type=float, default=12.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory(prefix="marble-bench-") as scratch:
        paths = AppPaths.for_root(scratch).ensure()
        store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
        fill_s = fill(paths, store, args.records)
        meter = GapMeter()
        results: dict[str, object] = {"records": args.records, "fill_s": round(fill_s, 1)}

        # Opening: building the model and panel (count + first page) happens on the GUI thread.
        holder: dict[str, object] = {}

        def open_panel() -> None:
            started = time.perf_counter()
            pool = QThreadPool()
            pool.setMaxThreadCount(2)
            panel = HistoryPanel(HistoryModel(store, pool))
            panel.resize(1200, 900)
            panel.show()
            holder.update(panel=panel, pool=pool)
            results["open_panel_ms"] = round((time.perf_counter() - started) * 1000, 1)

        results["open"] = summary(run_phase(app, meter, open_panel, 3.0))
        panel: HistoryPanel = holder["panel"]  # type: ignore[assignment]
        bar = panel.view.verticalScrollBar()

        # Scrolling: drag the scroll bar down a screen every 16 ms; rows are fetched as the end nears.
        scroller = QTimer(interval=SCROLL_STEP_MS)
        scroller.timeout.connect(lambda: bar.setValue(bar.value() + max(bar.pageStep(), 1)))
        results["scroll"] = summary(run_phase(app, meter, scroller.start, args.scroll_seconds))
        scroller.stop()
        results["rows_loaded"] = panel.model.rowCount()

        # Searching: a full-text query over every record, then back to everything.
        def search() -> None:
            panel.search_edit.setText("castle dragon")
            panel.apply_filters()
            results["search_hits"] = panel.model.total

        results["search"] = summary(run_phase(app, meter, search, 1.5))
        holder["pool"].waitForDone(30_000)  # type: ignore[union-attr]
        results["thumbnails_made"] = len(list(paths.thumbnails.glob("*.jpg")))
        panel.close()
        store.close_all()

    if args.json:
        print(json.dumps(results))
    else:
        print(f"{results['records']:,} records (filled in {results['fill_s']} s); "
              f"panel built in {results['open_panel_ms']} ms")
        for phase in ("open", "scroll", "search"):
            print(f"  {phase:<7} GUI tick gaps: {results[phase]}")
        print(f"  rows loaded while scrolling: {results['rows_loaded']:,}; "
              f"thumbnails made: {results['thumbnails_made']:,}; search hits: {results.get('search_hits')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
