"""What the frozen app carries besides code: the data list the PyInstaller spec bundles, and why.

Kept apart from the spec (which only PyInstaller can run) so a fast test can check it without a build:
every file under `resources/` is bundled unless listed in NOT_BUNDLED with a reason, at the same
relative path, so `Resources.default()` finds in the frozen app exactly what it finds in a checkout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

APP_FOLDER = "MarbleStudio"  # the one-folder build under dist/
WINDOW_EXECUTABLE = "marble-studio"
CLI_EXECUTABLE = "marble"

# Files under resources/ the app never reads at run time, by path relative to the repository, each with
# the reason. Empty: what the app does not read (the README's screenshot) lives outside resources/.
NOT_BUNDLED: Mapping[str, str] = {}

# Distributions whose metadata the frozen app must keep: diffusers, transformers, accelerate and peft
# look their dependencies up with importlib.metadata at import time and fail without it.
METADATA_PACKAGES: tuple[str, ...] = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "peft",
    "safetensors",
    "tokenizers",
    "huggingface_hub",
    "numpy",
    "pillow",
    "scipy",
    "torchsde",  # diffusers offers DPMSolverSDEScheduler only when this distribution's metadata is found
    "platformdirs",
    "packaging",
    "filelock",
    "regex",
    "requests",
    "tqdm",
    "pyyaml",
    "psutil",
    "importlib_metadata",
)

# Never needed by Marble; some are optional imports of its dependencies that would drag in hundreds of MB.
EXCLUDED_MODULES: tuple[str, ...] = (
    "tkinter",
    "matplotlib",
    "IPython",
    "jax",
    "flax",
    "tensorflow",
    "onnxruntime",
    "pytest",
    "torch.utils.tensorboard",
    "PySide6.QtQml",
    "PySide6.QtQuick",
    "PySide6.QtWebEngineCore",
)


def resource_files(root: Path) -> list[Path]:
    """Every file under `root/resources` that the app may read, sorted."""
    files = sorted(path for path in (root / "resources").rglob("*") if path.is_file())
    return [path for path in files if path.relative_to(root).as_posix() not in NOT_BUNDLED]


def data_entries(root: Path) -> list[tuple[str, str]]:
    """PyInstaller `datas`: (source file, destination folder inside the bundle), one per file."""
    return [(str(path), path.parent.relative_to(root).as_posix()) for path in resource_files(root)]
