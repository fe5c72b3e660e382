"""Live previews for the DiT families: at the backend's cadence, in the job's aspect ratio, changing from
step to step, and without touching the final image (pixel-identical with previews on and off)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from desktop.engine.backends.diffusers_backend import _X0Watcher
from desktop.engine.backends.preview import latents_to_rgb
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import build_tiny_flux, build_tiny_sd3, save_pipeline
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, build_tiny_z_image

# Flux with Flux.1's 16-channel autoencoder, so its preview goes through the Flux factor table.
BUILDERS = {
    "flux": functools.partial(build_tiny_flux, latent_channels=16),
    "sd3": build_tiny_sd3,
    "qwen-image": build_tiny_qwen_image,
    "z-image": build_tiny_z_image,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dit-previews")
    folders = {}
    for family, build in BUILDERS.items():
        pipe = build()
        if family in ("flux", "sd3"):
            folders[family] = save_pipeline(pipe, tmp / family)  # Marble's shipped tokenizers serve
        else:
            pipe.save_pretrained(str(tmp / family), safe_serialization=True)  # with its tiny Qwen tokenizer
            folders[family] = tmp / family
    return folders


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("family", list(BUILDERS))
def test_dit_previews_come_at_the_cadence_in_the_jobs_shape_and_leave_the_image_alone(paths, folders, family):
    request = request_for(folders[family], steps=4, cfg_scale=2.0, width=96, height=64)
    backend = make_backend(paths, preview_every=2)
    batch, steps = run(backend, request)
    assert "step" not in vars(backend._pipe.scheduler)  # the preview's watch on the scheduler ended with the job
    assert [info.step for info in steps] == [1, 2, 3, 4]
    previews = [info.preview for info in steps]
    assert [preview is not None for preview in previews] == [False, True, False, True]
    for preview in (previews[1], previews[3]):
        # Latent size: 96x64 pixels over the VAE's factor, so 3:2 like the job.
        assert preview.dtype == np.uint8 and preview.ndim == 3 and preview.shape[2] == 3
        assert preview.shape[1] * 2 == preview.shape[0] * 3
    assert not np.array_equal(previews[1], previews[3])
    assert len(np.unique(previews[3].reshape(-1, 3), axis=0)) > 4  # a picture, not a flat colour
    plain, quiet = run(make_backend(paths, preview_every=0), request)
    assert all(info.preview is None for info in quiet)
    assert np.array_equal(pixels(batch.images[0]), pixels(plain.images[0]))


def test_the_flow_matching_preview_is_the_euler_step_taken_to_sigma_zero():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    watcher = _X0Watcher(scheduler)
    sample, velocity = torch.randn(1, 16, 4, 6), torch.randn(1, 16, 4, 6)
    scheduler.step(velocity, scheduler.timesteps[1 - 1], sample)
    sigma = float(scheduler.sigmas[0])
    assert torch.allclose(watcher.predicted_x0(sample), sample - sigma * velocity, atol=1e-6)
    scheduler.step(velocity, scheduler.timesteps[1], sample)  # the next step uses the next sigma
    assert torch.allclose(watcher.predicted_x0(sample), sample - float(scheduler.sigmas[1]) * velocity, atol=1e-6)
    watcher.detach()
    assert "step" not in vars(scheduler)


def test_sixteen_channel_latents_use_their_familys_table_with_its_offset():
    latents = np.zeros((16, 2, 3), dtype=np.float32)
    latents[0] = 1.0
    # Flux.1's first row plus its offset: (1 + [-0.0346 - 0.0329, 0.0244 - 0.0718, 0.0681 - 0.0851]) * 127.5
    assert tuple(latents_to_rgb(latents, "flux")[0, 0]) == (118, 121, 125)
    assert tuple(latents_to_rgb(latents, "z-image")[0, 0]) == (118, 121, 125)
    assert tuple(latents_to_rgb(latents, "qwen-image")[0, 0]) == (87, 94, 122)  # Wan 2.1's first row and offset
    assert tuple(latents_to_rgb(np.zeros((16, 2, 3)), "sd3")[0, 0]) == (158, 154, 152)  # SD3's offset alone
