"""HVI-CIDNet low-light enhancers: detected from the header (widths, heads, layer norms) and run by Marble's own
implementation, compared with spandrel 0.4.2 on the same file and input (sizes off the 8 px padding unit
compared with spandrel's own padding for the model's size requirement); tiled and tiny inputs run; damaged
files refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

# name: (spandrel's keyword arguments, Marble's label, input size, padded).
VARIANTS = {
    # The published layout (first width = first level's, widths doubling, heads doubling), on the 8 px unit.
    "cidnet": ({"channels": [8, 8, 16, 32], "heads": [1, 2, 4, 8]},
               "HVI-CIDNet 1x low-light (8-8-16-32 channels)", [16, 24], False),
    # Layer norms after each resampling, widths and heads of their own, off the unit: padded as spandrel pads.
    "cidnet-norm": ({"channels": [4, 8, 12, 16], "heads": [1, 1, 3, 2], "norm": True},
                    "HVI-CIDNet 1x low-light (4-8-12-16 channels, layer norms)", [19, 13], True),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-cidnet")
    specs = {
        name: {"class": "HVICIDNet", "seed": 150 + seed, "input": size, "kwargs": kwargs, "padded": padded}
        for seed, (name, (kwargs, _, size, padded)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_cidnet_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="HVICIDNet", layout="cidnet", scale=1)


def test_cidnet_enhances_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "cidnet.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=6))
    assert tiled.shape == (40, 48, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Under the three halvings' 8 px: mirrored up, then cropped back. Grey and black pixels (no hue).
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)
        flat = network(torch.cat((torch.zeros(1, 3, 8, 4), torch.full((1, 3, 8, 4), 0.5)), -1))
        assert torch.isfinite(flat).all()


def test_damaged_cidnet_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    cid = load_file(str(workdir / "cidnet.safetensors"))
    cases = {
        "missing": ({k: v for k, v in cid.items() if k != "I_LCA5.gdfn.dwconv2.weight"},
                    "tensors do not fit the HVI-CIDNet 1x low-light .*I_LCA5.gdfn.dwconv2.weight"),
        "no-level": ({k: v for k, v in cid.items() if not k.startswith("HVE_block2.")},
                     "lacks HVE_block2.down.0.weight"),
        "grey": ({**cid, "HVE_block0.1.weight": torch.zeros(8, 1, 3, 3)}, "for 1-channel images"),
        "odd-heads": ({**cid, "HV_LCA2.ffn.temperature": torch.ones(3, 1, 1)},
                      "level 2 is 16 channels wide in 3 attention heads"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
