"""SAFMN-BCIE (SAFMN's 1x image-enhancement variant): detected from the header (width, groups and blocks,
feed-forward width, unshuffle factor) and run by Marble's own implementation, SAFMN's blocks shared,
compared with spandrel 0.4.2 on the same file and input (a size off the padding unit compared with
spandrel's own padding); tiled and tiny inputs run; damaged files refused by name."""

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

_F2 = {"dim": 8, "n_blocks": 2, "num_layers": 2, "upscaling_factor": 2}
# name: (spandrel's keyword arguments, Marble's label, input size, padded).
VARIANTS = {
    # The published 2x unshuffle on whole 16 px units: the network as is.
    "bcie-u2": (_F2, "SAFMN-BCIE (2x2 blocks, 8 features)", [32, 48], False),
    # The same off the unit: padded by mirroring to 16 px multiples, as spandrel's size requirement pads.
    "bcie-u2-padded": (_F2, "SAFMN-BCIE (2x2 blocks, 8 features)", [21, 30], True),
    # A 3x unshuffle (its unit is 24 px), one group of three blocks, a 1.5x feed-forward.
    "bcie-u3-ffn": ({"dim": 12, "n_blocks": 1, "num_layers": 3, "ffn_scale": 1.5, "upscaling_factor": 3},
                    "SAFMN-BCIE (1x3 blocks, 12 features)", [24, 48], False),
    # No unshuffle (an 8 px unit).
    "bcie-u1": ({"dim": 8, "n_blocks": 3, "num_layers": 1, "upscaling_factor": 1},
                "SAFMN-BCIE (3x1 blocks, 8 features)", [16, 24], False),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-safmn-bcie")
    specs = {
        name: {"class": "SAFMNBCIE", "seed": 90 + seed, "input": size, "kwargs": kwargs, "padded": padded}
        for seed, (name, (kwargs, _, size, padded)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_safmn_bcie_is_detected_and_matches_spandrel(reference, paths, name):
    label = VARIANTS[name][1]
    check_against_spandrel(*reference, paths, name, label=label, architecture="SAFMNBCIE", layout="safmn-bcie",
                           scale=1)  # fmt: skip


def test_safmn_bcie_enhances_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "bcie-u2.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=6))
    assert tiled.shape == (40, 48, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Under the 16 px the unshuffle and the pyramid need: mirrored up, then cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 17)).shape == (1, 3, 1, 17)


def test_damaged_safmn_bcie_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    bcie = load_file(str(workdir / "bcie-u2.safetensors"))
    cases = {
        "missing": ({k: v for k, v in bcie.items() if k != "feats.1.layers.1.safm.aggr.bias"},
                    r"tensors do not fit the SAFMN-BCIE \(2x2 .*feats.1.layers.1.safm.aggr.bias"),
        "group-gap": ({k: v for k, v in bcie.items() if not k.startswith("feats.0.conv.")},
                      r"groups are numbered \[1\], with gaps"),
        "uneven": ({k: v for k, v in bcie.items() if not k.startswith("feats.1.layers.1.norm1.")},
                   r"groups hold blocks \{0: \[0, 1\], 1: \[0\]\}"),
        "odd-unshuffle": ({**bcie, "to_feat.1.weight": torch.zeros(8, 10, 3, 3)}, "sees 10 channels"),
        "odd-output": ({**bcie, "to_img.0.weight": torch.zeros(16, 8, 3, 3)}, "output convs do not fit 8 features"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
