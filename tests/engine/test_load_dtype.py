"""Weights load in the precision asked for, without a float32 copy on the way (issue 29).

A bf16 single-file checkpoint (the CPU's half precision; fp16 needs a GPU) is loaded by the real
backend. Its first load converts it once and caches a key map over the file: diffusers' from_single_file
builds each layer under accelerate's init_empty_weights, which lets torch allocate the layer's float32
parameters (uninitialised, never written) before moving them to the meta device, so the first load may show
float32 allocations the size of a weight but no float32 values: no copy, cast or fill. Every later load builds
the model from that key map and must not make a float32 tensor the size of a weight at all. Watched at torch's
dispatcher, so any upcast -- a load in float32 followed by `.to(bf16)` -- is seen.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, request_for
from tests.support import tiny_models


class Float32Tensors(TorchDispatchMode):
    """Records every real (not meta) float32 tensor of at least `numel` elements that an op returns."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self._numel = numel
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device.type != "meta"
                and out.numel() >= self._numel):
            self.seen.append((str(func), tuple(out.shape)))
        return out


def test_a_bf16_model_loads_as_bf16_without_a_float32_copy(tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    pipe = tiny_models.build_tiny_sd15()
    model = tiny_models.save_single_file(pipe, paths.models / "tiny-bf16.safetensors", dtype=torch.bfloat16)
    config = str(tiny_models.save_config_folder(pipe, tmp_path / "config"))
    request = request_for(model, precision="bf16", model_config=config)
    largest_unet_weight = max(parameter.numel() for parameter in pipe.unet.parameters())

    first = make_backend(paths)
    with Float32Tensors(largest_unet_weight) as watched:
        first.load(request)  # converts the file once, into the cache
    assert {first._pipe.unet.dtype, first._pipe.text_encoder.dtype, first._pipe.vae.dtype} == {torch.bfloat16}
    # Only allocations the meta device takes over at once: no float32 value is computed, copied or cast.
    assert {op for op, _ in watched.seen} <= {"aten.empty.memory_format"}, watched.seen[:5]

    again = make_backend(paths)  # the app after a restart
    with Float32Tensors(largest_unet_weight) as watched:
        again.load(request)
    assert again._pipe.unet.dtype == torch.bfloat16
    assert all(parameter.dtype == torch.bfloat16 for parameter in again._pipe.unet.parameters())
    assert watched.seen == [], watched.seen[:5]

    # The watcher does see float32 weights when they are asked for: the check above can fail.
    with Float32Tensors(largest_unet_weight) as watched:
        make_backend(paths).load(request_for(model, precision="fp32", model_config=config))
    assert watched.seen
