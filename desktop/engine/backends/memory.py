"""Memory modes: which one to start with, which one to fall back to after an out-of-memory error.

Pure policy, no torch: the diffusers backend measures the device and applies the mode (`apply_mode`, through
the pipeline's own methods).
  full     everything on the device, nothing sliced: fastest.
  tiled    VAE tiling and attention slicing: large images in less memory, same weights on the device.
  offload  model CPU offload (GPU only): each component visits the GPU only while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LADDER = ("full", "tiled", "offload")
# Above this many pixels the VAE decode alone can need more memory than the UNet steps.
TILING_PIXELS = 1024 * 1024
# A GPU with less than this multiple of the weights' size has no room for activations: offload.
HEADROOM = 1.5

# The diffusion-transformer modes (dit_memory.py) on a UNet model: the nearest UNet mode.
UNET_EQUIVALENT = {"group": "offload", "sequential": "offload", "fp8": "full", "nf4": "full", "int8": "full"}

DESCRIPTIONS = {
    "full": "everything on the device",
    "tiled": "VAE tiling and attention slicing",
    "offload": "model CPU offload",
}


def choose_mode(
    requested: str,
    device: str,
    width: int,
    height: int,
    device_bytes: int | None = None,
    model_bytes: int | None = None,
) -> str:
    """The mode to run with: the user's choice, or for `auto` a pick by device, size and GPU memory."""
    requested = UNET_EQUIVALENT.get(requested, requested)
    if requested != "auto":
        return requested if requested != "offload" or device == "cuda" else "tiled"
    short = device_bytes is not None and model_bytes is not None and device_bytes < model_bytes * HEADROOM
    if device == "cuda" and short:
        return "offload"
    return "tiled" if width * height > TILING_PIXELS else "full"


def lower_mode(mode: str, device: str) -> str | None:
    """The next mode down the ladder that this device supports, or None at the bottom."""
    index = LADDER.index(mode) + 1
    while index < len(LADDER):
        candidate = LADDER[index]
        if candidate != "offload" or device == "cuda":
            return candidate
        index += 1
    return None


@dataclass(frozen=True)
class Attempt:
    """One pipeline call of a job: the memory mode it runs in and why it is tried ("" for the first)."""

    mode: str
    reason: str


def attempts(mode: str, device: str) -> tuple[Attempt, ...]:
    """The memory modes one job tries, in order: the chosen mode, then, after an out-of-memory error,
    the next mode down this device supports. One retry only; the backend reports a second failure."""
    first = Attempt(mode, "")
    lower = lower_mode(mode, device)
    if lower is None:
        return (first,)
    retry = Attempt(
        lower,
        f"Ran out of memory with {DESCRIPTIONS[mode]}; retried with {DESCRIPTIONS[lower]} "
        f"(memory mode {lower!r}). Choose it in the settings to skip the first try.",
    )
    return (first, retry)


def apply_mode(pipe: Any, current: str | None, mode: str, device: str) -> None:
    """Put an SD pipeline that is in mode `current` (None: as loaded) in `mode`: on the device whole, with VAE
    tiling and attention slicing from "tiled" down, and with model offload in "offload". The base model and the
    SDXL refiner share it, so the refiner follows the base's mode."""
    if current == "offload" and mode != "offload":
        pipe.remove_all_hooks()
    if mode != "offload":
        pipe.to(device)
    if mode in ("tiled", "offload"):
        pipe.vae.enable_tiling()
        pipe.enable_attention_slicing()
    else:
        pipe.vae.disable_tiling()
        pipe.disable_attention_slicing()
    if mode == "offload" and current != "offload":
        pipe.enable_model_cpu_offload(device=device)
