"""The check for ControlNets whose pipeline takes no step range (Z-Image's, Sana's): Marble's hook gives the
ControlNet the unit's weight at each step inside the range, 0 outside (backends/control_dit.StepScales); and the scales
a ControlNet class is called with, which the image-to-image checks read too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.jobs import CancelToken
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run


def scales_seen(backend: Any, request: Any, model_class: Any) -> tuple[Any, list[float]]:
    """(the batch of `request`, the conditioning scale `model_class`'s forward saw at each call)."""
    seen: list[float] = []
    original = model_class.forward

    def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(float(kwargs["conditioning_scale"]))
        return original(self, *args, **kwargs)

    backend.load(request)
    model_class.forward = watched
    try:
        batch = backend.generate(request, 0, lambda _: None, CancelToken())
    finally:
        model_class.forward = original
    return batch, seen


def check_step_range(home: AppPaths, folder: Path, unit: ControlUnit, model_class: Any, **values: Any) -> None:
    """`unit` (weight 0.8, range 0 to 0.5) over 4 steps: the scales `model_class`'s forward sees, and a picture other
    than the whole range's."""
    backend = make_backend(home)
    ranged, seen = scales_seen(backend, request_for(folder, controls=(unit,), **(values | {"steps": 4})), model_class)
    assert seen == [0.8, 0.8, 0.0, 0.0]
    whole, _ = run(backend, request_for(folder, controls=(replace(unit, end=1.0),), **(values | {"steps": 4})))
    assert not np.array_equal(pixels(whole.images[0]), pixels(ranged.images[0]))
