"""The scheduler a few-step kind's timestep spacing makes of a sampler (library/few_step.py's presets).

Most of diffusers' schedulers take `timestep_spacing="trailing"` as a config value. LCM's ignores it: it picks its
steps from its distillation schedule (50 steps: 999, 759, 499, 259 for 4), while DMD2's card passes the steps evenly
spaced from the last training step (999, 749, 499, 249), which is what "trailing" means for the others.

diffusers is imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def trailing_lcm() -> Any:
    """LCMScheduler over steps spaced evenly from the last training step: its distillation schedule is taken as long
    as the job, so every one of its steps is used (4 steps: 999, 749, 499, 249)."""
    import diffusers

    class TrailingLCMScheduler(diffusers.LCMScheduler):
        def set_timesteps(
            self, num_inference_steps: int | None = None, device: Any = None,
            original_inference_steps: int | None = None, timesteps: list[int] | None = None, strength: float = 1.0,
        ) -> None:  # fmt: skip
            # With a strength below 1 (LCM's own image-to-image pipeline) the schedule is cut before the steps are
            # picked, so LCM's own rule stays; Marble's pipelines cut after and never pass one here.
            if num_inference_steps and original_inference_steps is None and timesteps is None and strength == 1.0:
                original_inference_steps = num_inference_steps
            super().set_timesteps(num_inference_steps, device, original_inference_steps, timesteps, strength)

    return TrailingLCMScheduler


def spaced(cls: Any, spacing: str) -> Any:
    """The scheduler class that honours `spacing` ("" for the sampler's own) for a sampler made by `cls`."""
    import diffusers

    return trailing_lcm() if spacing == "trailing" and issubclass(cls, diffusers.LCMScheduler) else cls
