"""Convert a pickled PyTorch checkpoint to safetensors, in a child process, with weights_only=True only.

A pickle is a program: unpickling can run any code. `torch.load(weights_only=True)` allows only tensors
and plain containers and raises on anything else; this module never retries with weights_only=False.
It runs as its own process (`python -m desktop.engine.backends.pickle_convert SRC DST`) so that even a
flaw in that restricted unpickler cannot reach the app's memory, threads or open files, and a crash or
a memory blow-up kills only the child. The parent (`desktop.engine.library.index`) reads one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

EXIT_OK = 0
EXIT_REFUSED = 3  # the file needs more than tensors (code, custom classes): never loaded
EXIT_EMPTY = 4


def convert_in_child(source: Path, target: Path, timeout: float | None = None) -> dict[str, object]:
    """Run the conversion in a fresh interpreter; return its report or raise ModelError with why."""
    from desktop.engine.errors import ModelError

    root = str(Path(__file__).resolve().parents[3])  # the folder holding the `desktop` package
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    command = [sys.executable, "-m", "desktop.engine.backends.pickle_convert", str(source), str(target)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as error:
        raise ModelError(f"Converting {source.name} took too long and was stopped.") from error
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    report: dict[str, object] = json.loads(lines[-1]) if lines else {}
    if done.returncode == EXIT_OK and report.get("ok"):
        return report
    why = report.get("message") or (done.stderr.strip().splitlines() or ["the converter crashed"])[-1]
    raise ModelError(f"{source.name} was not converted: {why}")


def _tensors_of(loaded: object) -> Mapping[str, object]:
    """The state dict inside what torch.load returned: top level, or under the usual wrapper keys."""
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model", "module"):
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and inner:
                return inner
        return loaded
    return {}


def _main(source: str, target: str) -> int:
    import pickle

    import torch
    from safetensors.torch import save_file

    def say(**report: object) -> None:
        print(json.dumps(report), flush=True)

    try:
        # weights_only=True: only tensors, numbers, strings and containers. No fallback, ever.
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as error:
        first = str(error).strip().splitlines()
        say(
            ok=False,
            message=(
                "it needs more than plain tensors to load (custom classes or code), so it may be unsafe and was "
                f"not loaded. ({(first[0] if first else type(error).__name__)[:200]})"
            ),
        )
        return EXIT_REFUSED
    tensors = {str(k): v for k, v in _tensors_of(loaded).items() if isinstance(v, torch.Tensor)}
    if not tensors:
        say(ok=False, message="it holds no tensors.")
        return EXIT_EMPTY
    skipped = len(_tensors_of(loaded)) - len(tensors)
    # Checkpoints often share storage between entries (tied weights); safetensors wants each on its own.
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, target)
    say(ok=True, tensors=len(tensors), skipped=skipped)
    return EXIT_OK


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m desktop.engine.backends.pickle_convert SOURCE TARGET", file=sys.stderr)
        sys.exit(2)
    sys.exit(_main(sys.argv[1], sys.argv[2]))
