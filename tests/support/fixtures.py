"""Session-scoped fixtures with tiny models on disk, for tests/conftest.py to import.

Each model is built once per test session (a fraction of a second each) under tmp_path_factory.
Tests must treat these folders and files as read-only: copy them first to modify anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from desktop.engine.paths import AppPaths
from tests.support import tiny_models


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny SD 1.5 in the diffusers layout (model_index.json + component folders)."""
    root = tmp_path_factory.mktemp("tiny-sd15")
    return tiny_models.save_diffusers(tiny_models.build_tiny_sd15(), root / "tiny-sd15")


@pytest.fixture(scope="session")
def tiny_sd15_single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(single .safetensors file in the original layout, weightless config folder for from_single_file)."""
    root = tmp_path_factory.mktemp("tiny-sd15-single")
    pipe = tiny_models.build_tiny_sd15()
    return (
        tiny_models.save_single_file(pipe, root / "tiny-sd15.safetensors"),
        tiny_models.save_config_folder(pipe, root / "config"),
    )


@pytest.fixture(scope="session")
def tiny_sd15_inpaint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-sd15-inpaint")
    return tiny_models.save_diffusers(tiny_models.build_tiny_sd15_inpaint(), root / "tiny-sd15-inpaint")


@pytest.fixture(scope="session")
def tiny_sd15_inpaint_single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-sd15-inpaint-single")
    pipe = tiny_models.build_tiny_sd15_inpaint()
    return (
        tiny_models.save_single_file(pipe, root / "tiny-sd15-inpaint.safetensors"),
        tiny_models.save_config_folder(pipe, root / "config"),
    )


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-sdxl")
    return tiny_models.save_diffusers(tiny_models.build_tiny_sdxl(), root / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-sdxl-single")
    pipe = tiny_models.build_tiny_sdxl()
    return (
        tiny_models.save_single_file(pipe, root / "tiny-sdxl.safetensors"),
        tiny_models.save_config_folder(pipe, root / "config"),
    )


def share_compile_cache(home: Path, shared: Path) -> Path:
    """Make the app home `home` use `shared` as its compile cache (a link where the app looks), as the tests of
    one file do to build the kernels once and take them from there, as the app after a restart; returns home."""
    folder = AppPaths.for_root(home).compile_cache
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(shared, target_is_directory=True)
    return home
