"""Whether the bitsandbytes memory modes (`nf4`, `int8`; backends/quantised_weights.py) can run here, told
without importing torch or bitsandbytes: the window asks at start, on the GUI thread, where importing torch
would cost seconds (the first paint is measured with torch not loaded). The generation thread still checks
`torch.cuda.is_available()` and refuses with a clear error; this only keeps the Memory list honest."""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Where an NVIDIA driver shows itself: the Linux kernel module's version file, and WSL's passed-through
# driver library (WSL has no /proc/driver/nvidia).
_LINUX_DRIVER_MARKS = ("/proc/driver/nvidia/version", "/usr/lib/wsl/lib/libcuda.so.1")


@dataclass(frozen=True)
class QuantisedSupport:
    """What the bitsandbytes modes need: the package installed, and CUDA (a CUDA build of torch and an
    NVIDIA driver)."""

    bitsandbytes: bool
    cuda: bool

    @property
    def usable(self) -> bool:
        return self.bitsandbytes and self.cuda


def detect_quantised_support(
    *,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    torch_version: Callable[[], str | None] | None = None,
    driver_present: Callable[[], bool] | None = None,
) -> QuantisedSupport:
    """Both facts, from package metadata and driver files only (milliseconds)."""
    version = (torch_version or _torch_version)()
    return QuantisedSupport(
        bitsandbytes=find_spec("bitsandbytes") is not None,
        cuda=version is not None and cuda_build(version) and (driver_present or nvidia_driver_present)(),
    )


def cuda_build(torch_version: str) -> bool:
    """Whether a torch wheel's version names a CUDA-capable build: the CPU wheels say so in their local tag
    ("2.13.0+cpu"); untagged PyPI wheels for Linux and Windows are CUDA builds, macOS ones never are."""
    local = torch_version.partition("+")[2].lower()
    return local != "cpu" and not local.startswith(("rocm", "xpu")) and sys.platform != "darwin"


def nvidia_driver_present() -> bool:
    if sys.platform == "win32":
        return ctypes.util.find_library("nvcuda") is not None  # a PATH search; no DLL is loaded
    return any(Path(mark).exists() for mark in _LINUX_DRIVER_MARKS)


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
