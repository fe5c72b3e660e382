"""Import torch and diffusers on a worker thread without freezing the GUI thread.

Two things hold the GIL for hundreds of milliseconds while torch imports: the dynamic loader mapping
libtorch (Python's import machinery calls dlopen with the GIL held), and full garbage collections over
the hundreds of thousands of objects the import creates. We load the libraries first through a ctypes
call, which releases the GIL, and keep the collector off for the import, then freeze what it built
so later collections skip it. Measured with tests/benchmarks/bench_gui_stalls.py.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Load order matters: each library's dependencies first.
_TORCH_LIBRARIES = ("libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_python.so")


def preload_torch_libraries() -> int:
    """dlopen libtorch with the GIL released; returns how many libraries were loaded (0 off Linux)."""
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return 0
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return 0
    folder = Path(spec.origin).parent / "lib"
    libc = ctypes.CDLL(None)
    libc.dlopen.restype = ctypes.c_void_p
    libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    loaded = 0
    for name in _TORCH_LIBRARIES:
        path = folder / name
        # A failed preload is harmless: `import torch` then loads (or reports) it as usual.
        if path.is_file() and libc.dlopen(os.fsencode(path), os.RTLD_NOW | os.RTLD_GLOBAL):
            loaded += 1
    return loaded


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep full collections from walking a half-built model's many objects while the GUI waits.

    Building a pipeline allocates hundreds of thousands of objects; each automatic collection of the
    oldest generation then holds the GIL for tens of milliseconds. Collections resume afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_gently(module: str, warm: tuple[str, ...] = ()) -> object:
    """Import `module` (which imports torch) with the GIL held as briefly as possible.

    `warm` names lazily imported attributes ("package:Name") to resolve now as well: otherwise
    their import happens later, in the middle of loading a model, with the collector back on.
    """
    preload_torch_libraries()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        imported = importlib.import_module(module)
        for entry in warm:
            package, _, name = entry.partition(":")
            getattr(importlib.import_module(package), name)
        return imported
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
