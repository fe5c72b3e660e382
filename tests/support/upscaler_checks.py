"""The check every upscaler architecture's tests share: a file spandrel built and ran (spandrel_reference.py)
is imported into Marble's library, detected with the expected label, shape and scale, and Marble's network
gives spandrel's output on the same input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from desktop.engine.paths import AppPaths


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def check_against_spandrel(
    workdir: Path, report: dict, paths: AppPaths, name: str, *, label: str, architecture: str, layout: str,
    scale: int, tolerance: float = 1e-4,
) -> None:
    """`tolerance` is relative to the output's largest magnitude (at least 1): random weights may amplify."""
    import torch

    from desktop.engine.backends.upscale import load_upscaler
    from desktop.engine.library.index import Library, guess_kind

    library = Library(paths)
    entry = library.import_path(workdir / f"{name}.safetensors", "upscaler")
    assert entry.architecture == label
    assert report[name] == {"architecture": architecture, "scale": scale}  # spandrel read the file the same way
    assert guess_kind(workdir / f"{name}.safetensors") == "upscaler"  # a file dropped on the window
    network, info = load_upscaler(library.path_of(entry))
    assert (info.layout, info.scale) == (layout, scale)
    source = torch.from_numpy(np.load(workdir / f"{name}.input.npy"))
    expected = np.load(workdir / f"{name}.output.npy")
    with torch.inference_mode():
        got = network(source).numpy()
    height, width = source.shape[2:]
    assert got.shape == expected.shape == (1, 3, height * scale, width * scale)
    assert np.abs(expected).max() > 0.5  # a real signal, not a network that outputs nothing
    assert np.abs(got - expected).max() <= tolerance * max(1.0, float(np.abs(expected).max()))


def check_refused(paths: AppPaths, folder: Path, cases: dict[str, tuple[dict, str]]) -> None:
    """Each damaged file (case name -> (its tensors, the expected message)) is refused with its file name and
    the message, by the library's import (what the header tells) or at the latest by the strict load."""
    import pytest
    from safetensors.torch import save_file

    from desktop.engine.backends.upscale import load_upscaler
    from desktop.engine.errors import ModelError
    from desktop.engine.library.index import Library

    for case, (tensors, message) in cases.items():
        path = folder / f"{case}.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(ModelError, match=f"{case}.safetensors.*{message}"):
            Library(paths).import_path(path, "upscaler")
            load_upscaler(path)
