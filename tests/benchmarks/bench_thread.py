"""Is torch itself slower on a worker thread than on the main thread here? (Issue 7, target 1's question.)

    .venv/bin/python tests/benchmarks/bench_thread.py [--repeats 7]

The app must generate on a worker thread to keep its window responsive, so target 1 compares it with
a bare call on the main thread and any thread penalty counts against it. This isolates that penalty
from diffusers and the app: three workloads of SD 1.5's own kinds (320-channel 3x3 convolutions at
256x256's 32x32 latent, 1280-wide linear layers, a long chain of small GroupNorms where per-op
overhead dominates), each timed on the main thread and on one persistent worker thread, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # sets sys.path and the offline environment first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    workloads = {
        "convolutions": (
            torch.nn.Sequential(*[torch.nn.Conv2d(320, 320, 3, padding=1) for _ in range(4)]),
            torch.randn(2, 320, 32, 32),
        ),
        "linear layers": (
            torch.nn.Sequential(*[torch.nn.Linear(1280, 1280) for _ in range(8)]),
            torch.randn(2048, 1280),
        ),
        "small ops": (
            torch.nn.Sequential(*[torch.nn.GroupNorm(32, 320) for _ in range(200)]),
            torch.randn(2, 320, 8, 8),
        ),
    }

    def timed(name: str) -> float:
        net, x = workloads[name]
        started = time.perf_counter()
        with torch.no_grad():
            for _ in range(10):
                net(x)
        return time.perf_counter() - started

    worker = common.WorkerThread()

    def on_worker(name: str) -> float:
        return worker.run(lambda: timed(name))

    for name in workloads:
        timed(name)  # warm-up on both threads: first calls pick kernels and fault in memory
        on_worker(name)
        main_times, worker_times = [], []
        for _ in range(args.repeats):
            main_times.append(timed(name))
            worker_times.append(on_worker(name))
        main_median, worker_median = statistics.median(main_times), statistics.median(worker_times)
        print(f"{name:14s} main thread {main_median:.3f} s, worker thread {worker_median:.3f} s, "
              f"worker/main {worker_median / main_median:.3f} (n={args.repeats} each)")


if __name__ == "__main__":
    main()
