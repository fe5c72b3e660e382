"""The window end to end through the real diffusers backend on a tiny real model.

The worker imports torch, loads the model from the library folder and runs the real pipeline; the
test drives the window as a user does and checks what the user would see and find on disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from desktop.engine.request import LoraRef
from desktop.engine.resources import Resources
from tests.support import tiny_loras, tiny_models
from tests.support.real_window import real_window

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

# The first job imports torch and diffusers on the worker thread: seconds on a loaded CI machine.
TIMEOUT_MS = 180_000


@pytest.fixture
def real_studio(qtbot, tmp_path, tiny_sd15_dir) -> Iterator[tuple]:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    shutil.copytree(tiny_sd15_dir, paths.models / "tiny-sd15")
    with real_window(qtbot, paths, steps=4, seed=31337) as (window, controller):
        yield window, controller, paths

def test_generate_shows_previews_and_the_image_the_engine_makes(qtbot, real_studio):
    window, controller, paths = real_studio
    editor = window.prompt_editor.prompt_edit
    editor.setFocus()
    qtbot.keyClicks(editor, "a large red circle on a blue background")
    previews = []
    controller.preview_ready.connect(previews.append)
    with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    event = finished.args[0]
    # One preview per denoising step (PLMS runs one warm-up step more than asked for).
    assert [p.step for p in previews] == list(range(1, previews[-1].total + 1)) and previews[-1].total >= 4
    assert previews[-1].image.shape[2] == 3
    assert window.queue_panel.progress_bar.value() == window.queue_panel.progress_bar.maximum()
    path = event.paths[0]
    assert window.canvas.current_image is not None and not window.canvas.is_preview
    assert (window.canvas.current_image.width(), window.canvas.current_image.height()) == (64, 64)

    # The window's image is exactly what the engine alone makes from the request stored in the PNG.
    request = read_image_metadata(path).request
    assert request.prompt == "a large red circle on a blue background" and request.seed == 31337
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models))
    request = replace(request, model="tiny-sd15")
    backend.load(request)
    alone = backend.generate(request, 0, lambda _: None, CancelToken()).images[0]
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(alone))


def test_cancel_during_a_real_run_writes_nothing_and_the_next_job_runs(qtbot, real_studio):
    window, controller, paths = real_studio
    window.parameter_panel.steps_spin.setValue(150)
    window.prompt_editor.prompt_edit.setPlainText("a green square")
    with qtbot.waitSignal(controller.step_progressed, timeout=TIMEOUT_MS):
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    steps = []
    controller.step_progressed.connect(lambda event: steps.append(event.step))
    with qtbot.waitSignal(controller.job_cancelled, timeout=TIMEOUT_MS):
        qtbot.mouseClick(window.queue_panel.cancel_button, Qt.MouseButton.LeftButton)
    assert len(steps) <= 2  # at most the step running when Cancel was pressed, and maybe one queued
    assert not [p for p in paths.outputs.rglob("*") if p.is_file()]
    window.parameter_panel.steps_spin.setValue(2)
    with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS):
        qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
    assert len(list(paths.outputs.rglob("*.png"))) == 1


def test_every_field_typed_in_the_window_is_the_request_in_the_png(qtbot, tmp_path, tiny_sd15_dir):
    """Issue 23: each field of the panel and the prompt editor, set as a user sets it, arrives in the
    request stored in every PNG of the job (not just the fields the image happens to depend on)."""
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    shutil.copytree(tiny_sd15_dir, paths.models / "tiny-sd15")
    lora = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=5)
    tiny_loras.save_lora(lora, paths.loras / "ink.safetensors")
    with real_window(qtbot, paths, steps=3, seed=271828) as (window, controller):
        editor, panel = window.prompt_editor, window.parameter_panel
        editor.prompt_edit.setFocus()
        qtbot.keyClicks(editor.prompt_edit, "a (copper:1.2) kettle, steam")
        editor.negative_edit.setFocus()
        qtbot.keyClicks(editor.negative_edit, "blurry, [watermark]")
        panel.sampler_combo.setCurrentIndex(panel.sampler_combo.findData("DPM++ 2M Karras"))
        panel.cfg_spin.setValue(5.5)
        panel.width_spin.setValue(80)
        panel.height_spin.setValue(64)
        panel.batch_size_spin.setValue(2)
        panel.clip_skip_spin.setValue(2)
        panel.emphasis_combo.setCurrentIndex(panel.emphasis_combo.findData("No norm"))
        panel.memory_combo.setCurrentIndex(panel.memory_combo.findData("full"))
        panel.precision_combo.setCurrentIndex(panel.precision_combo.findData("fp32"))
        panel.lora_list.add_row("ink", 0.45)
        with qtbot.waitSignal(controller.job_finished, timeout=TIMEOUT_MS) as finished:
            qtbot.mouseClick(window.queue_panel.generate_button, Qt.MouseButton.LeftButton)
        paths_written = finished.args[0].paths

    assert len(paths_written) == 2
    for position, path in enumerate(paths_written):
        request = read_image_metadata(path).request
        stored = {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt, "model": request.model,
            "steps": request.steps, "cfg_scale": request.cfg_scale, "seed": request.seed,
            "sampler": request.sampler, "width": request.width, "height": request.height,
            "batch_count": request.batch_count, "batch_size": request.batch_size, "clip_skip": request.clip_skip,
            "emphasis": request.emphasis, "memory_mode": request.memory_mode, "precision": request.precision,
            "device": request.device, "fast_mode": request.fast_mode, "loras": request.loras,
        }  # fmt: skip
        assert stored == {
            "prompt": "a (copper:1.2) kettle, steam", "negative_prompt": "blurry, [watermark]",
            "model": "tiny-sd15", "steps": 3, "cfg_scale": 5.5, "seed": 271828 + position,
            "sampler": "DPM++ 2M Karras", "width": 80, "height": 64, "batch_count": 1, "batch_size": 2,
            "clip_skip": 2, "emphasis": "No norm", "memory_mode": "full", "precision": "fp32", "device": "cpu",
            "fast_mode": False, "loras": (LoraRef("ink", 0.45),),
        }, path  # fmt: skip
        with Image.open(path) as image:
            assert image.size == (80, 64)
