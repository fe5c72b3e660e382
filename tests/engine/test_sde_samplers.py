"""The SDE samplers are stochastic and draw A1111's noise: one Brownian tree per image, seeded with its seed.

The reference noise is built here from torchsde directly, the way k-diffusion's BrownianTreeNoiseSampler
defines it, never by calling the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchsde
from diffusers import DPMSolverMultistepScheduler, DPMSolverSDEScheduler

from desktop.engine.backends.schedulers import SAMPLERS, canonical_sampler, sampler_for_scheduler
from desktop.engine.backends.sde_noise import use_brownian_noise
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run

SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SHAPE = (4, 8, 8)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def reference_noise(sigmas: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """k-diffusion: tree over [min positive sigma, max sigma]; step noise = W(s_next..s) / sqrt(|ds|), sign
    flipped because time runs from the larger sigma to the smaller; none on the last step to sigma 0."""
    sigmas = sigmas.float()
    low, high = sigmas[sigmas > 0].min().item(), sigmas.max().item()
    tree = torchsde.BrownianTree(t0=low, w0=torch.zeros(SHAPE), t1=high, entropy=seed)
    noise = []
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        if sigma_next == 0:
            noise.append(torch.zeros(SHAPE))
        else:
            noise.append(-tree(sigma_next, sigma) / (sigma - sigma_next) ** 0.5)
    return noise


def multistep(sampler: str) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler.from_config(SD_CONFIG, **dict(SAMPLERS[sampler].overrides))


def step_through(scheduler, seeds: list[int], steps: int = 6) -> list[torch.Tensor]:
    """Run the scheduler on a fake model; return the variance noise its step received each time."""
    received: list[torch.Tensor] = []
    original = scheduler.step

    def recording(model_output, timestep, sample, *args, **kwargs):
        received.append(kwargs["variance_noise"].clone())
        return original(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = recording
    scheduler.set_timesteps(steps)
    use_brownian_noise(scheduler, seeds)
    sample = torch.randn(len(seeds), *SHAPE, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        sample = scheduler.step(0.1 * sample, t, sample, generator=torch.Generator().manual_seed(5)).prev_sample
    return received


@pytest.mark.parametrize("sampler", ["DPM++ 2M SDE", "DPM++ 3M SDE Karras", "DPM++ 2M SDE Exponential"])
def test_multistep_sde_noise_is_the_seeded_brownian_tree(sampler):
    scheduler = multistep(sampler)
    received = step_through(scheduler, [1234])
    expected = reference_noise(scheduler.sigmas, 1234)
    assert len(received) == len(expected) == 6
    for got, want in zip(received, expected, strict=True):
        assert torch.allclose(got[0], want, atol=1e-6)
    assert received[0].abs().sum() > 0


def test_each_image_of_a_batch_gets_its_own_seeds_noise():
    batch = step_through(multistep("DPM++ 2M SDE"), [10, 11])
    alone = step_through(multistep("DPM++ 2M SDE"), [11])
    for together, single in zip(batch, alone, strict=True):
        assert torch.allclose(together[1], single[0], atol=1e-6)
    assert not torch.allclose(batch[0][0], batch[0][1])


def test_dpmpp_sde_tree_is_seeded_with_the_images_seed():
    scheduler = DPMSolverSDEScheduler.from_config(SD_CONFIG, **dict(SAMPLERS["DPM++ SDE Karras"].overrides))
    use_brownian_noise(scheduler, [77])
    scheduler.set_timesteps(5)
    sample = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    t = scheduler.timesteps[0]
    scheduler.step(0.1 * scheduler.scale_model_input(sample, t), t, sample)
    sigmas = scheduler.sigmas.float()
    low, high = sigmas[sigmas > 0].min().item(), sigmas.max().item()
    tree = torchsde.BrownianTree(t0=low, w0=torch.zeros(SHAPE), t1=high, entropy=77)
    a, b = 3.0, 2.0  # any sigmas inside the range: the scheduler's sampler must read the same tree
    assert torch.allclose(scheduler.noise_sampler(a, b)[0], -tree(b, a) / (a - b) ** 0.5, atol=1e-6)


def test_sde_names_map_to_stochastic_diffusers_schedulers():
    assert SAMPLERS["DPM++ SDE"].scheduler_class == "DPMSolverSDEScheduler"
    assert SAMPLERS["DPM++ 3M SDE"].overrides["solver_order"] == 3
    assert SAMPLERS["DPM++ 2M SDE Exponential"].overrides["use_exponential_sigmas"] is True
    assert canonical_sampler("DPM++ 3M SDE", "Exponential") == "DPM++ 3M SDE Exponential"
    assert SAMPLERS["DPM++ 3M SDE Exponential"].base_name == "DPM++ 3M SDE"
    config = dict(multistep("DPM++ 3M SDE Karras").config)
    assert sampler_for_scheduler("DPMSolverMultistepScheduler", config) == "DPM++ 3M SDE Karras"


@pytest.mark.parametrize(("sde", "sibling"), [("DPM++ SDE Karras", "DPM++ 2M Karras"),
                                              ("DPM++ 2M SDE", "DPM++ 2M")])
def test_sde_sampler_is_stochastic_and_seeded_through_the_real_pipeline(paths, tiny_sd15_dir, sde, sibling):
    backend = make_backend(paths)
    a, _ = run(backend, request_for(tiny_sd15_dir, seed=7, sampler=sde))
    torch.manual_seed(999)  # the global generator must play no part
    b, _ = run(backend, request_for(tiny_sd15_dir, seed=7, sampler=sde))
    c, _ = run(backend, request_for(tiny_sd15_dir, seed=8, sampler=sde))
    plain, _ = run(backend, request_for(tiny_sd15_dir, seed=7, sampler=sibling))
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(plain.images[0]))


def test_sde_batch_image_equals_the_same_seed_alone(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    together, _ = run(backend, request_for(tiny_sd15_dir, seed=20, batch_size=2, sampler="DPM++ 2M SDE"))
    alone, _ = run(backend, request_for(tiny_sd15_dir, seed=21, sampler="DPM++ 2M SDE"))
    difference = np.abs(pixels(together.images[1]).astype(int) - pixels(alone.images[0]).astype(int))
    assert difference.max() <= 1  # batched UNet matmuls may round differently in the last bit
