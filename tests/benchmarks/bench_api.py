"""Load on `marble serve`: 8 client threads, 200 small txt2img requests (demo model, 64x64, 2 steps).

    .venv/bin/python tests/benchmarks/bench_api.py [--requests 200] [--threads 8] [--home DIR]

Reports p50/p99 latency, whether every request was answered and every image is in the history, and
the server's RSS after one warm-up request and after the run (the issue's target: within 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from desktop.engine.history.store import HistoryStore  # noqa: E402

PAYLOAD = {"prompt": "a large red circle on a blue background", "steps": 2, "width": 64, "height": 64,
           "cfg_scale": 7.0, "sampler_name": "Euler"}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="marble-bench-api-"))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "desktop.cli", "serve", "--port", "0", "--home", str(home)],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    url = f"http://127.0.0.1:{port}/sdapi/v1/txt2img"
    post(url, {**PAYLOAD, "seed": 0})  # loads torch and the model
    rss_before = rss_bytes(server.pid)
    latencies: list[float] = []
    failures: list[str] = []
    images = 0
    lock = threading.Lock()
    counter = iter(range(1, args.requests + 1))

    def client() -> None:
        nonlocal images
        while True:
            with lock:
                seed = next(counter, None)
            if seed is None:
                return
            started = time.perf_counter()
            try:
                body = post(url, {**PAYLOAD, "seed": seed})
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    failures.append(repr(error))
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                images += len(body["images"])

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    rss_after = rss_bytes(server.pid)
    server.send_signal(signal.SIGINT)
    server.wait(120)
    store = HistoryStore(home / "history" / "history.db", home / "outputs", home / "cache" / "thumbnails")
    in_history = store.count()
    store.close_all()
    latencies.sort()
    result = {
        "requests": args.requests, "threads": args.threads, "answered": len(latencies), "failed": len(failures),
        "images": images, "in_history": in_history, "wall_s": round(wall, 1),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p99_s": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3) if latencies else None,
        "rss_before_mb": round(rss_before / 2**20, 1), "rss_after_mb": round(rss_after / 2**20, 1),
        "rss_change_pct": round(100 * (rss_after - rss_before) / rss_before, 1) if rss_before else None,
    }
    print(json.dumps(result, indent=2))
    if failures:
        print("first failures:", failures[:3], file=sys.stderr)
    return 0 if not failures and in_history == images + 1 else 1


if __name__ == "__main__":
    sys.exit(main())
