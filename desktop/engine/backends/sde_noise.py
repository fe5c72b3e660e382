"""A1111's per-step noise for the SDE samplers: one Brownian tree per image, seeded with its seed.

A1111 runs k-diffusion, which draws every step's noise of DPM++ SDE, 2M SDE and 3M SDE from
`BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=<the batch's seeds>)`: image k's noise depends
only on its own seed, so it comes out the same alone or in a batch. diffusers' DPMSolverSDEScheduler
builds the same tree from `noise_sampler_seed`; its multistep SDE solver (2M/3M SDE) would draw plain
normal noise from the generator instead, so we hand it the tree's noise through `variance_noise`.

torch is imported inside the functions: only the diffusers backend loads this module, during a job.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


def use_brownian_noise(scheduler: Any, seeds: Sequence[int]) -> None:
    """Make `scheduler` (fresh, not yet stepped) draw A1111's Brownian-tree noise for `seeds`."""
    if hasattr(scheduler, "noise_sampler_seed"):
        # DPMSolverSDEScheduler: a list of seeds gives one tree per image (diffusers' BatchedBrownianTree).
        scheduler.noise_sampler_seed = list(seeds)
        return
    if scheduler.config.get("algorithm_type") not in ("sde-dpmsolver++", "sde-dpmsolver"):
        return
    original = scheduler.step
    trees: list[Any] = []

    # Same signature as the original (functools.wraps), so the pipeline still passes `generator`.
    @functools.wraps(original)
    def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        index = _step_index(scheduler, timestep)
        if not trees:
            trees.append(_tree_for(scheduler, sample, index, seeds))
        kwargs["variance_noise"] = _noise_at(scheduler.sigmas, index, trees[0], sample)
        return original(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = step


def _step_index(scheduler: Any, timestep: Any) -> int:
    """The index the scheduler is about to step from, found as diffusers' own `_init_step_index` does."""
    if scheduler.step_index is not None:
        return int(scheduler.step_index)
    if scheduler.begin_index is not None:
        return int(scheduler.begin_index)
    return int(scheduler.index_for_timestep(timestep))


def _tree_for(scheduler: Any, sample: Any, start: int, seeds: Sequence[int]) -> Any:
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    # k-diffusion spans the tree over the sigmas it is given; image-to-image gives it the tail from
    # the starting sigma, as A1111 does.
    sigmas = scheduler.sigmas[start:].float()
    positive = sigmas[sigmas > 0]
    return BrownianTreeNoiseSampler(sample.float(), positive.min().item(), sigmas.max().item(), list(seeds))


def _noise_at(sigmas: Any, index: int, tree: Any, sample: Any) -> Any:
    import torch

    sigma, sigma_next = sigmas[index].item(), sigmas[index + 1].item()
    if sigma_next <= 0:
        # k-diffusion's last step to sigma 0 returns the denoised sample: no noise (diffusers
        # multiplies the noise by sigma 0 there, so zeros give the same result without leaving the tree).
        return torch.zeros(sample.shape, dtype=torch.float32, device=sample.device)
    return tree(sigma, sigma_next)
