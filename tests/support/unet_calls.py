"""Watching every UNet call of a job: what each one is given (the residuals of a T2I-Adapter, the IP-Adapters'
scales), for the checks that count steps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from diffusers import UNet2DConditionModel


@contextlib.contextmanager
def watching_unet(record: Callable[[Any, Any, dict[str, Any]], None]) -> Iterator[None]:
    """Inside the block, `record(unet, sample, kwargs)` is called before every UNet2DConditionModel forward."""
    original = UNet2DConditionModel.forward

    def watched(self: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        record(self, sample, kwargs)
        return original(self, sample, *args, **kwargs)

    UNet2DConditionModel.forward = watched
    try:
        yield
    finally:
        UNet2DConditionModel.forward = original
