"""Every tensor the tests read from a safetensors file starts on a 64-byte boundary.

Why: safetensors maps a file and hands out tensors that start wherever the file put them (8-byte aligned,
after a header of any length). On some CPUs (seen on an AMD EPYC with AVX-512, torch 2.13's MKL) a
matrix-vector product, such as every model's timestep embedding, rounds differently when its weight is not
aligned to 64 bytes: a bare-diffusers reference loaded from a folder then differed from Marble's converted
single file by 3e-7, one level in two of 12,288 pixel values, while both computed the same weights. The
pixel-identity tests compare weights and pipelines, not where a file happens to place a tensor, so the
tests give both sides aligned tensors. (Marble itself keeps the mapped tensors: copying them would cost
a model's size in memory and load time for a difference far below one level; its conversion cache rebuilds
a restart's tensors at the very places a plain load puts them, which tests/engine/test_conversion_cache.py
checks with this switched off: `file_alignment`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_ALIGNMENT = 64


def aligned(tensor: Any) -> Any:
    """`tensor`, or a copy of it on a 64-byte boundary when it is not on one (a torch tensor on the CPU)."""
    if not _state["on"] or getattr(tensor, "device", None) is None:
        return tensor
    if tensor.device.type != "cpu" or tensor.numel() == 0:
        return tensor
    return tensor if tensor.data_ptr() % _ALIGNMENT == 0 else tensor.clone()


class _AlignedSlice:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getitem__(self, index: Any) -> Any:
        return aligned(self._inner[index])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _AlignedOpen:
    """safetensors' safe_open, handing out aligned tensors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._inner = _original_safe_open(*args, **kwargs)

    def __enter__(self) -> _AlignedOpen:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)

    def get_tensor(self, name: str) -> Any:
        return aligned(self._inner.get_tensor(name))

    def get_tensors(self, *args: Any, **kwargs: Any) -> Any:
        return {name: aligned(tensor) for name, tensor in self._inner.get_tensors(*args, **kwargs).items()}

    def get_slice(self, name: str) -> Any:
        return _AlignedSlice(self._inner.get_slice(name))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_original_safe_open: Any = None
_state = {"on": True}


@contextlib.contextmanager
def file_alignment() -> Iterator[None]:
    """Within: tensors start where their file puts them, as outside the tests (the conversion cache's tests
    check that a restart reproduces exactly the memory a plain load gives)."""
    _state["on"] = False
    try:
        yield
    finally:
        _state["on"] = True


def align_safetensors_loads() -> None:
    """Patch safetensors' readers (before diffusers or transformers import them by name)."""
    global _original_safe_open
    import safetensors
    import safetensors.torch

    if _original_safe_open is not None:
        return
    _original_safe_open = safetensors.safe_open
    safetensors.safe_open = _AlignedOpen
    safetensors.torch.safe_open = _AlignedOpen  # load_file reads through it
