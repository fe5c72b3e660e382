"""Real-ESRGAN's compact architecture (SRVGGNetCompact: realesr-general-x4v3, realesr-animevideov3):
detected from its header, built from the published layout, run tiled and whole, used by upscale jobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from safetensors.torch import save_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.index import Library
from desktop.engine.library.upscaler import inspect_upscaler
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import pixels
from tests.engine.test_upscalers import noise_image

FEATURES, CONVS = 8, 2


def compact_state(scale: int = 4, convs: int = CONVS, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random SRVGGNetCompact in Real-ESRGAN's key layout: body.0 conv, body.1 PReLU, then
    (conv, PReLU) x convs, and the last conv to 3 x scale^2 channels."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(index: int, cin: int, cout: int) -> None:
        bound = 1 / (cin * 9) ** 0.5
        state[f"body.{index}.weight"] = (torch.rand((cout, cin, 3, 3), generator=generator) * 2 - 1) * bound
        state[f"body.{index}.bias"] = (torch.rand(cout, generator=generator) - 0.5) * 0.1

    conv(0, 3, FEATURES)
    for k in range(convs + 1):
        state[f"body.{2 * k + 1}.weight"] = torch.full((FEATURES,), 0.25)  # PReLU's published start value
        if k < convs:
            conv(2 * k + 2, FEATURES, FEATURES)
    conv(2 * convs + 2, FEATURES, 3 * scale * scale)
    return state


def by_hand(state: dict[str, torch.Tensor], image: torch.Tensor, scale: int) -> torch.Tensor:
    """The published forward pass written with bare functions: convs and PReLUs in turn, pixel shuffle,
    plus the nearest-upsampled input."""
    out = image
    last = max(int(key.split(".")[1]) for key in state if key.endswith(".weight"))
    for index in range(0, last + 1, 2):
        out = F.conv2d(out, state[f"body.{index}.weight"], state[f"body.{index}.bias"], padding=1)
        if index < last:
            out = F.prelu(out, state[f"body.{index + 1}.weight"])
    return F.pixel_shuffle(out, scale) + F.interpolate(image, scale_factor=scale, mode="nearest")


@pytest.fixture
def tiny_compact(tmp_path):
    path = tmp_path / "realesr-tiny-x4.safetensors"
    save_file(compact_state(), str(path))
    return path


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_header_says_compact_scale_convs_and_width(tmp_path, scale):
    path = tmp_path / "c.safetensors"
    save_file(compact_state(scale=scale, convs=3), str(path))
    info = inspect_upscaler(read_safetensors_header(path))
    assert (info.layout, info.scale, info.blocks, info.features) == ("srvgg", scale, 3, FEATURES)
    assert info.label == f"Real-ESRGAN compact {scale}x (3 convs, 8 features)"


def test_the_network_is_the_published_forward_pass(tiny_compact):
    network, info = load_upscaler(tiny_compact)
    image = noise_image(20, 12)
    source = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = by_hand(compact_state(), source, 4)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    got = pixels(upscale(network, info.scale, image, tile=0))
    assert got.shape == (48, 80, 3)
    assert np.array_equal(got, (expected * 255).round().astype(np.uint8))


def test_tiled_matches_whole_image_within_two_levels(tiny_compact):
    """Tolerance as for ESRGAN: within 2 of 255 levels everywhere, 0.1 on average; the compact net sees
    only CONVS + 2 pixels around each one, well inside the 16-pixel overlap."""
    network, info = load_upscaler(tiny_compact)
    image = noise_image(96, 80)
    whole = pixels(upscale(network, info.scale, image, tile=0)).astype(int)
    tiled = pixels(upscale(network, info.scale, image, tile=32, overlap=16)).astype(int)
    assert whole.shape == (320, 384, 3) and whole.std() > 10
    difference = np.abs(whole - tiled)
    assert difference.max() <= 2 and difference.mean() < 0.1


def test_the_library_imports_it_and_refuses_a_broken_one(tmp_path, tiny_compact):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    entry = Library(paths).import_path(tiny_compact, "upscaler")
    assert entry.architecture.startswith("Real-ESRGAN compact 4x")
    broken = compact_state()
    del broken["body.3.weight"]  # a PReLU missing: not the layout the network is built from
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(ModelError, match="compact layout Marble cannot run"):
        Library(paths).import_path(path, "upscaler")
