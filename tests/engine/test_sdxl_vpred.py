"""SDXL v-prediction single files: the `v_pred` / `ztsnr` marker tensors set the scheduler up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from safetensors.torch import save_file

from desktop.engine.library.checkpoint import detect_model
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support import tiny_models


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def _marked_file(folder, markers: tuple[str, ...]):
    pipe = tiny_models.build_tiny_sdxl()
    tensors = {key: value.detach().contiguous() for key, value in tiny_models.ldm_state_dict(pipe).items()}
    for marker in markers:
        tensors[marker] = torch.tensor([])  # the markers are empty tensors in the published checkpoints
    path = folder / ("-".join(markers) or "plain") / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tiny_models.save_config_folder(pipe, path.parent / "config")


def _bare(config, request, **scheduler_changes):
    pipe = StableDiffusionXLPipeline.from_pretrained(str(config.parent / "bare"), local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, **scheduler_changes)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale, generator=torch.Generator("cpu").manual_seed(request.seed),
        height=request.height, width=request.width,
    ).images[0]  # fmt: skip


@pytest.mark.parametrize(
    ("markers", "changes", "label"),
    [
        (("v_pred", "ztsnr"), {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                               "timestep_spacing": "trailing"}, "SDXL v-prediction, zero terminal SNR"),
        (("v_pred",), {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, "SDXL v-prediction"),
        ((), {}, "SDXL"),
    ],
)  # fmt: skip
def test_marked_sdxl_gets_its_scheduler_and_matches_bare_diffusers(paths, tmp_path, markers, changes, label):
    path, config = _marked_file(tmp_path, markers)
    assert detect_model(path).label == label
    tiny_models.save_diffusers(tiny_models.build_tiny_sdxl(), config.parent / "bare")
    request = request_for(path, model_config=str(config), sampler="Euler", steps=3)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), pixels(_bare(config, request, **changes)))
    if markers:  # and the markers change the picture: without them it would be the plain SDXL image
        assert not np.array_equal(pixels(batch.images[0]), pixels(_bare(config, request)))
