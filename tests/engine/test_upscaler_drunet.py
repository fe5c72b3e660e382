"""DRUNet denoisers (1x, DPIR's plug-and-play prior): detected from the header (widths, blocks, down and up
kinds, colour or grey) and run by Marble's own implementation with spandrel's default noise level (15),
compared with spandrel 0.4.2 through its own call (which adds that noise map) on the same file and input;
odd sizes and tiles run; damaged files refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.errors import ModelError
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.upscaler_checks import check_against_spandrel, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

_WIDTHS = [8, 16, 16, 24]
# name: (spandrel's keyword arguments, per-channel (grey), Marble's label). Inputs are multiples of 8, as
# spandrel's network (called without its padding) needs.
VARIANTS = {
    # The published layout: strided-conv downs, transposed-conv ups.
    "drunet-colour": ({"in_nc": 4, "out_nc": 3, "nc": _WIDTHS, "nb": 2}, False,
                      "DRUNet 1x denoise (noise level 15, 8 features, 2 blocks)"),
    # Average-pool downs (a pool, then a 3x3 conv) and pixel-shuffle ups; grey. (One block per stage would
    # leave m_body a bare block, named without its index, which spandrel does not detect.)
    "drunet-grey-pool-shuffle": ({"in_nc": 2, "out_nc": 1, "nc": _WIDTHS, "nb": 2, "downsample_mode": "avgpool",
                                  "upsample_mode": "pixelshuffle"}, True,
                                 "DRUNet 1x denoise (noise level 15, grey, 8 features, 2 blocks, avgpool, "
                                 "pixelshuffle)"),
    # Nearest-upsample-and-conv ups.
    "drunet-upconv": ({"in_nc": 4, "out_nc": 3, "nc": _WIDTHS, "nb": 2, "upsample_mode": "upconv"}, False,
                      "DRUNet 1x denoise (noise level 15, 8 features, 2 blocks, upconv)"),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-drunet")
    specs = {
        name: {"class": "DRUNet", "seed": 90 + seed, "input": [24, 32], "kwargs": kwargs, "per_channel": grey}
        for seed, (name, (kwargs, grey, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_drunet_is_detected_and_matches_spandrel(reference, paths, name):
    _, _, label = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="DRUNet", layout="drunet", scale=1,
                           tolerance=1e-5)  # fmt: skip


def test_a_drunet_denoises_odd_sizes_and_tiles(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "drunet-grey-pool-shuffle.safetensors")
    assert info.scale == 1 and (info.in_channels, info.out_channels) == (1, 1)
    with torch.inference_mode():
        # Not a multiple of 8, and under 8 px: mirrored (then repeated) up to one, cropped back.
        assert network(torch.rand(1, 3, 19, 23)).shape == (1, 3, 19, 23)
        assert network(torch.rand(1, 3, 3, 5)).shape == (1, 3, 3, 5)
    tiled = np.asarray(upscale(network, 1, noise_image(45, 38), tile=32, overlap=8))
    assert tiled.shape == (38, 45, 3) and tiled.std() > 1


def test_damaged_drunet_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    drunet = load_file(str(workdir / "drunet-colour.safetensors"))
    cases = {
        "missing": ({k: v for k, v in drunet.items() if k != "m_up2.1.res.2.weight"},
                    "tensors do not fit the DRUNet 1x denoise .*m_up2.1.res.2.weight"),
        "gap": ({k: v for k, v in drunet.items() if not k.startswith("m_down3.1.")},
                "m_down3 has blocks \\[0\\], not 2 from 0"),
        "no-noise-map": ({**drunet, "m_head.weight": torch.zeros(8, 3, 3, 3)}, "from 3 channels to 3"),
        "no-body-width": ({k: v for k, v in drunet.items() if k != "m_down2.0.res.0.weight"},
                          "lacks m_down2.0.res.0.weight|m_down2 has blocks"),
    }  # fmt: skip
    for case, (tensors, message) in cases.items():
        path = tmp_path / f"{case}.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(ModelError, match=f"{case}.safetensors.*({message})"):
            Library(paths).import_path(path, "upscaler")
            load_upscaler(path)
