"""A job's source image and mask: the size its request works at, the folder their files are saved in,
and how the steps of an edit are counted.

The canvas toolbar and the command line both build image-to-image and inpainting requests from a
source; asking here keeps a window job and a `marble generate` job with the same source the same.
"""

from __future__ import annotations

from pathlib import Path

from desktop.engine.imaging import working_size
from desktop.engine.paths import AppPaths
from desktop.engine.request import MAX_SIDE, MIN_SIDE, GenerationRequest


def request_size(source_size: tuple[int, int], resize_mode: str) -> tuple[int, int]:
    """The width and height a request works a whole source at: its size made a multiple of 8 (rounded
    or padded, as `resize_mode` says), within the sides a request accepts. Callers refuse a source the
    model cannot work on first (`check_source_size`); the clamp is for "Only masked", whose crop
    is made at this size whatever the source's."""
    width, height = working_size(source_size, resize_mode)
    return min(max(width, MIN_SIDE), MAX_SIDE), min(max(height, MIN_SIDE), MAX_SIDE)


def inputs_folder(paths: AppPaths) -> Path:
    """Where a job's source and mask files are saved, named by content: in the cache, so the request
    and its PNG metadata point at real files without filling the user's folders."""
    return paths.cache / "inputs"


def step_words(step: int, total: int, request: GenerationRequest) -> str:
    """How far a job is, in words the window's progress bar and the command line share.

    Image to image and inpainting run only the last `int(steps * strength)` of the steps asked for
    (diffusers' rule), so "22 of 22 steps: 30 at strength 0.75" says why the count is not 30.
    """
    if request.hires_active:
        # One count through both passes (the backend counts the second on from the first).
        width, height = request.hires_size
        return f"step {step}/{total}: {request.steps} steps, then the hires fix to {width}x{height}"
    if request.init_image is not None and request.strength < 1:
        return f"{step} of {total} steps: {request.steps} at strength {request.strength:g}"
    return f"step {step}/{total}"
