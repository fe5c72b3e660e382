"""Convert a pickled PyTorch checkpoint to safetensors, in a child process, with weights_only=True only.

A pickle is a program: unpickling can run any code. `torch.load(weights_only=True)` allows only tensors
and plain containers and raises on anything else; this module never retries with weights_only=False.
It runs as its own process so that even a flaw in that restricted unpickler cannot reach the app's
memory, threads or open files, and a crash or a memory blow-up kills only the child. The parent
(`desktop.engine.library.index`) reads one JSON line.

The child is isolated from the user's environment: from source it is `python -I` (no user site, no
PYTHON* variables, neither the current folder nor a script's folder on `sys.path`), told explicitly
where the `desktop` package is; in the frozen app it is the app's own executable with `CHILD_FLAG`
(`desktop.launch` dispatches it before anything else). Either way it runs in an empty temporary
folder, so nothing beside the user's working folder (a stray `json.py`) can be imported into it.
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

# The frozen app's executables run the converter when their first argument is this flag and the second
# is CHILD_NAME (desktop.launch). A frozen build has no `python -m`.
CHILD_FLAG = "--marble-child"
CHILD_NAME = "pickle-convert"

# From source: put the package's own folder first (never the current folder), then convert.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from desktop.engine.backends.pickle_convert import main; sys.exit(main(sys.argv[2:]))"
)


def child_command(source: Path, target: Path) -> list[str]:
    """The converter's command line: the frozen executable with CHILD_FLAG, or an isolated interpreter."""
    if getattr(sys, "frozen", False):
        return [sys.executable, CHILD_FLAG, CHILD_NAME, str(source), str(target)]
    root = str(Path(__file__).resolve().parents[3])  # the folder holding the `desktop` package
    return [sys.executable, "-I", "-c", _BOOT, root, str(source), str(target)]


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without the variables that steer Python's imports or start-up."""
    return {key: value for key, value in environ.items() if not key.startswith("PYTHON")}


def convert_in_child(source: Path, target: Path, timeout: float | None = None) -> dict[str, object]:
    """Run the conversion in a fresh, isolated process; return its report or raise ModelError with why."""
    import tempfile

    from desktop.engine.errors import ModelError

    command = child_command(source.resolve(), target.resolve())
    with tempfile.TemporaryDirectory(prefix="marble-convert-") as workdir:
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=child_environment(os.environ),
                cwd=workdir,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise ModelError(f"Converting {source.name} took too long and was stopped.") from error
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    report: dict[str, object] = json.loads(lines[-1]) if lines else {}
    if done.returncode == EXIT_OK and report.get("ok"):
        return report
    why = report.get("message") or (done.stderr.strip().splitlines() or ["the converter crashed"])[-1]
    raise ModelError(f"{source.name} was not converted: {why}")


_NESTED_PARTS = ("image_proj", "ip_adapter")


def _tensors_of(loaded: object) -> Mapping[str, object]:
    """The state dict inside what torch.load returned: top level, or under the usual wrapper keys."""
    if isinstance(loaded, Mapping):
        # params_ema / params: how Real-ESRGAN (BasicSR) wraps its upscalers.
        for key in ("state_dict", "model", "module", "params_ema", "params"):
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and inner:
                return inner
        parts = [loaded.get(part) for part in _NESTED_PARTS]
        if all(isinstance(part, Mapping) and part for part in parts):
            # h94's IP-Adapter .bin files (FaceID ships only as .bin) nest their two halves; the safetensors
            # releases name them `image_proj.*` / `ip_adapter.*`, which the control library reads.
            return {f"{name}.{key}": value for name, part in zip(_NESTED_PARTS, parts, strict=True)
                    for key, value in part.items()}  # fmt: skip
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
    if "pro" in _tensors_of(loaded) and "pro" not in tensors and "unet1.conv1_down.weight" in tensors:
        # Real-CUGAN's pro files flag themselves with a `pro` entry that need not be a tensor: keep the
        # flag as one (desktop.engine.library.upscaler_cugan reads it; the network never loads it).
        tensors["pro"] = torch.zeros(1)
    if not tensors:
        say(ok=False, message="it holds no tensors.")
        return EXIT_EMPTY
    skipped = len(_tensors_of(loaded)) - len(tensors)
    # Checkpoints often share storage between entries (tied weights); safetensors wants each on its own.
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, target)
    say(ok=True, tensors=len(tensors), skipped=skipped)
    return EXIT_OK


def main(argv: list[str]) -> int:
    """The child's entry: `SOURCE TARGET`."""
    if len(argv) != 2:
        print("usage: pickle_convert SOURCE TARGET", file=sys.stderr)
        return 2
    return _main(argv[0], argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
