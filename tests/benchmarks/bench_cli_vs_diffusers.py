"""Issue 29, CPU: the whole `marble generate` process against a plain diffusers script doing the same.

    .venv/bin/python tests/benchmarks/bench_cli_vs_diffusers.py [--pairs 3] [--size 128] [--steps 3]

Both arms are child processes started from here, as a user starts them, on one SD 1.5-size
single-file checkpoint (seeded random weights, fp32 on disk and in the run, ~4.3 GB, built once into
$MARBLE_BENCH_CACHE by `common.sd15_single_file`):

- the app: `python -m desktop --home HOME generate --model FILE ... --precision fp32 --json`, its
  events time-stamped here as they arrive;
- plain diffusers: `StableDiffusionPipeline.from_single_file(FILE, config=resources/configs/sd15,
  local_files_only=True)` with the shipped CLIP tokenizer (as the app passes it), `pipe(...)` with the
  same prompt, sampler (the config's own, PNDM), seed, size and steps, and `image.save(png)`; it
  prints its own time stamps.

The app converts a single file once and caches a key map over it (`backends/conversion_cache.py`: configs
and where each converted tensor lies in the file, no weights); every later start builds the pipeline over
views of the mapped file. Its first run (conversion included) and its later runs are reported apart, each
against the plain script, which converts on every run. Pairs alternate which arm goes first. Phases,
from the moment the child is started (wall clock, `time.time()` on both sides):
import (Python, the app or diffusers, torch), load, steps (prompt encoding and the denoising, to the
last step's end), save (VAE decode and the PNG), exit (from the saved image to the process's end).
Both loaders map the safetensors files and the weights are read as the first step touches them, so
"load" is short and the first step carries the reading, in both arms alike.

`--threads N` pins both arms to N CPU threads: the app's own cost, like with like. Without it the
app sizes its pool to the cores other processes leave free (its default) and the plain script keeps
torch's default of one thread per core: what a user of each sees on a machine that is busy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
from PIL import Image

PROMPT, NEGATIVE, SEED, CFG = "a red fox in a spacesuit", "blurry", 42, 7.5
PHASES = ("import", "load", "steps", "save", "exit")

# The plain arm: what a diffusers user writes. It prints wall-clock marks for the phases.
PLAIN_SCRIPT = r"""
import json, sys, time
marks = {}
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer
marks["imported"] = time.time()
model, config, tokenizer, out, steps, size, prompt, negative, seed, cfg, threads = sys.argv[1:]
if int(threads):
    torch.set_num_threads(int(threads))
pipe = StableDiffusionPipeline.from_single_file(
    model, config=config, local_files_only=True, dtype=torch.float32,
    tokenizer=CLIPTokenizer.from_pretrained(tokenizer, local_files_only=True),
    safety_checker=None, requires_safety_checker=False, feature_extractor=None,
)
pipe.set_progress_bar_config(disable=True)
marks["loaded"] = time.time()
def on_step_end(pipe, i, t, tensors):
    marks["last_step"] = time.time()
    return tensors
image = pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=int(steps), guidance_scale=float(cfg),
             generator=torch.Generator("cpu").manual_seed(int(seed)), height=int(size), width=int(size),
             callback_on_step_end=on_step_end).images[0]
image.save(out)
marks["saved"] = time.time()
print(json.dumps(marks), flush=True)
"""


def child_env() -> dict[str, str]:
    return os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(common.ROOT)}


def run_plain(model: Path, out: Path, steps: int, size: int, threads: int) -> dict[str, float]:
    from desktop.engine.resources import Resources

    resources = Resources.default()
    args = [str(model), str(resources.config_folder("sd15")), str(resources.tokenizer_folder()), str(out),
            str(steps), str(size), PROMPT, NEGATIVE, str(SEED), str(CFG), str(threads)]
    started = time.time()
    done = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, *args], env=child_env(), cwd=common.ROOT,
                          capture_output=True, text=True)
    ended = time.time()
    if done.returncode:
        raise SystemExit(f"plain script failed:\n{done.stderr[-3000:]}")
    marks = json.loads(done.stdout.strip().splitlines()[-1])
    return phases(started, marks["imported"], marks["loaded"], marks["last_step"], marks["saved"], ended)


def run_cli(model: Path, home: Path, out: Path, steps: int, size: int, threads: int) -> dict[str, float]:
    command = [sys.executable, "-m", "desktop", "--home", str(home), "generate", "--model", str(model),
               "--prompt", PROMPT, "--negative", NEGATIVE, "--steps", str(steps), "--cfg", str(CFG),
               "--seed", str(SEED), "--sampler", "default", "--width", str(size), "--height", str(size),
               "--device", "cpu", "--precision", "fp32", "--threads", str(threads), "--out", str(out), "--json"]
    started = time.time()
    process = subprocess.Popen(command, env=child_env(), cwd=common.ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    marks: dict[str, float] = {}
    assert process.stdout is not None
    for line in process.stdout:
        arrived = time.time()
        event = json.loads(line)
        kind = event["event"]
        if kind == "failed":
            raise SystemExit(f"marble generate failed: {event['message']}")
        if kind == "step":
            marks["last_step"] = arrived
        else:
            marks.setdefault(kind, arrived)
    stderr = process.stderr.read() if process.stderr else ""
    process.wait()
    ended = time.time()
    if process.returncode:
        raise SystemExit(f"marble generate exited {process.returncode}:\n{stderr[-3000:]}")
    # "loading" comes once torch is imported and the backend built: the import phase ends there.
    return phases(started, marks["loading"], marks["loaded"], marks["last_step"], marks["image"], ended)


def phases(started: float, imported: float, loaded: float, last_step: float, saved: float,
           ended: float) -> dict[str, float]:
    marks = (started, imported, loaded, last_step, saved, ended)
    values = {name: marks[i + 1] - marks[i] for i, name in enumerate(PHASES)}
    values["total"] = ended - started
    return values


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def line(label: str, runs: list[dict[str, float]]) -> str:
    cells = "  ".join(f"{name} {statistics.median(run[name] for run in runs):6.2f}" for name in PHASES)
    return f"{label:22s} total {statistics.median(run['total'] for run in runs):6.2f} s  |  {cells}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3, help="interleaved warm pairs after the first one")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="pin both arms to N CPU threads (like with like); 0: the app chooses (its default) "
                             "and the plain script keeps torch's default")
    parser.add_argument("--keep", action="store_true", help="keep the app's home (its converted model)")
    args = parser.parse_args()

    model = common.sd15_single_file()
    work = Path(tempfile.mkdtemp(prefix="marble-cli-bench-", dir=common.cache_root()))
    home = work / "home"
    print(f"model: {model} ({model.stat().st_size / 1e9:.2f} GB, fp32 on disk and in the run), "
          f"{args.size}x{args.size}, {args.steps} steps, CFG {CFG}, CPU, --threads {args.threads}")
    print(f"cpu cores: {os.cpu_count()}, load average at start: {load_average()}")
    try:
        first_plain = run_plain(model, work / "plain-first.png", args.steps, args.size, args.threads)
        first_app = run_cli(model, home, work / "app-first.png", args.steps, args.size, args.threads)
        plain_runs, app_runs = [], []
        for index in range(args.pairs):
            order = ("plain", "app") if index % 2 else ("app", "plain")
            for arm in order:
                if arm == "plain":
                    plain_runs.append(run_plain(model, work / f"plain-{index}.png", args.steps, args.size,
                                                 args.threads))
                else:
                    app_runs.append(run_cli(model, home, work / f"app-{index}.png", args.steps, args.size,
                                            args.threads))
        difference = np.abs(np.asarray(Image.open(work / "app-first.png").convert("RGB"), dtype=np.int16)
                            - np.asarray(Image.open(work / "plain-first.png").convert("RGB"), dtype=np.int16))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average at end: {load_average()}")
    print("seconds (medians), phases: import (process start to torch and the app/diffusers imported), load, "
          "steps (prompt encoding + denoising), save (VAE decode + PNG), exit")
    print(line("plain, first pair", [first_plain]))
    print(line("app, first (converts)", [first_app]))
    print(line("plain, warm", plain_runs))
    print(line("app, warm (cached)", app_runs))
    for label, app, plain in (("first run", [first_app], [first_plain]), ("warm runs", app_runs, plain_runs)):
        ratio = statistics.median(run["total"] for run in app) / statistics.median(run["total"] for run in plain)
        print(f"app / plain, {label}: {ratio:.3f} (target <= 1.05)")
    paired = [a["total"] / p["total"] for a, p in zip(app_runs, plain_runs, strict=True)]
    print(f"app / plain, warm pair by pair: {', '.join(f'{value:.3f}' for value in paired)}")
    print(f"pictures, app against plain (first pair), 8-bit levels: mean {difference.mean():.2f}, "
          f"max {difference.max()}")


if __name__ == "__main__":
    main()
