"""A LoRA picked in the window's parameter panel reaches the real diffusers backend and the PNG."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from desktop.engine.library.checkpoint import autov3_hash
from desktop.engine.metadata import read_image_metadata, read_text_chunks
from desktop.engine.paths import AppPaths
from desktop.engine.request import LoraRef
from tests.support import tiny_loras, tiny_models
from tests.support.real_window import real_window

# The first job imports torch and diffusers on the worker thread: seconds on a loaded CI machine.
TIMEOUT_MS = 180_000


@pytest.fixture
def lora_studio(qtbot, tmp_path, tiny_sd15_dir) -> Iterator[tuple]:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    shutil.copytree(tiny_sd15_dir, paths.models / "tiny-sd15")
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=31)
    tiny_loras.save_lora(tensors, paths.loras / "detail.safetensors")
    with real_window(qtbot, paths, steps=3, seed=4242) as (window, controller):
        try:
            qtbot.waitUntil(lambda: window.parameter_panel.lora_list.names() == ["detail"], timeout=10_000)
            window.prompt_editor.set_prompts("a blue square")
            yield window, controller, paths
        finally:
            window.library_integration.tasks.shutdown()

def test_panel_lora_changes_the_image_and_is_recorded(qtbot, lora_studio):
    window, controller, paths = lora_studio

    def run() -> str:
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as finished:
            window.generate()
        return finished.args[0].paths[0]

    plain = run()
    row = window.parameter_panel.lora_list.add_row("detail", 1.0)
    styled = run()
    row.weight_spin.setValue(0.0)
    zero = run()

    def pixels(path: str) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).astype(np.int16)

    assert np.abs(pixels(styled) - pixels(plain)).mean() > 2.0
    assert np.array_equal(pixels(zero), pixels(plain))
    parameters = read_text_chunks(styled)["parameters"]
    assert f'Lora hashes: "detail: {autov3_hash(paths.loras / "detail.safetensors")}"' in parameters
    assert read_image_metadata(styled).request.loras == (LoraRef("detail", 1.0),)
