"""RCAN upscalers: detected from the header (scale, width, groups and blocks, the attention gate's width,
kernel size, mean shift, pixel-unshuffle head) and run by Marble's own implementation, compared with
spandrel 0.4.2 on the same file and input; tiled and tiny inputs run; damaged files refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.upscaler_checks import check_against_spandrel, check_refused

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

# name: (spandrel's keyword arguments, Marble's label, scale, input size).
VARIANTS = {
    # The mean shift (0-255 values), two groups, two 2x shuffle stages.
    "rcan-x4": ({"scale": 4, "n_resgroups": 2, "n_resblocks": 2, "n_feats": 16, "reduction": 4},
                "RCAN 4x (2 groups of 2 blocks, 16 features)", 4, [13, 17]),
    # No mean shift (0-1 values), one 3x stage, 5x5 kernels, a reduction of 8.
    "rcan-x3-k5": ({"scale": 3, "n_resgroups": 1, "n_resblocks": 3, "n_feats": 24, "reduction": 8, "norm": False,
                    "kernel_size": 5}, "RCAN 3x (1 group of 3 blocks, 24 features)", 3, [11, 14]),
    # Three 2x stages.
    "rcan-x8": ({"scale": 8, "n_resgroups": 2, "n_resblocks": 1, "n_feats": 8, "reduction": 2},
                "RCAN 8x (2 groups of 1 block, 8 features)", 8, [6, 7]),
    # The pixel-unshuffle head: 2x unshuffle before a 4x upsampler, odd sides padded by mirroring.
    "rcan-x2-unshuffle": ({"scale": 2, "unshuffle_mod": True, "n_resgroups": 1, "n_resblocks": 2, "n_feats": 16,
                           "reduction": 2}, "RCAN 2x (1 group of 2 blocks, 16 features)", 2, [13, 15]),
    # 4x unshuffle at 1x, no mean shift.
    "rcan-x1-unshuffle": ({"scale": 1, "unshuffle_mod": True, "n_resgroups": 1, "n_resblocks": 1, "n_feats": 16,
                           "reduction": 4, "norm": False}, "RCAN 1x (1 group of 1 block, 16 features)", 1, [14, 18]),
    # 1x without an upsampler at all (spandrel then assumes its default width, 64).
    "rcan-x1": ({"scale": 1, "n_resgroups": 1, "n_resblocks": 1, "n_feats": 64},
                "RCAN 1x (1 group of 1 block, 64 features)", 1, [12, 12]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-rcan")
    specs = {
        name: {"class": "RCAN", "seed": 70 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_rcan_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="RCAN", layout="rcan", scale=scale)


def test_rcan_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "rcan-x2-unshuffle.safetensors")
    image = Image.fromarray((np.random.default_rng(0).random((41, 47, 3)) * 255).astype(np.uint8))
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=7))
    whole = np.asarray(upscale(network, info.scale, image, tile=0))
    assert tiled.shape == whole.shape == (82, 94, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Sides shorter than the unshuffle factor cannot be mirrored: the edge is repeated instead.
        assert network(torch.rand(1, 3, 1, 3)).shape == (1, 3, 2, 6)
        x1, _ = load_upscaler(workdir / "rcan-x1-unshuffle.safetensors")
        assert x1(torch.rand(1, 3, 3, 5)).shape == (1, 3, 3, 5)


def test_damaged_rcan_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    rcan = load_file(str(workdir / "rcan-x4.safetensors"))
    cases = {
        "missing": ({k: v for k, v in rcan.items() if k != "body.1.body.1.body.3.conv_du.2.weight"},
                    "tensors do not fit the RCAN 4x .*body.1.body.1.body.3.conv_du.2.weight"),
        "no-closing-conv": ({k: v for k, v in rcan.items() if not k.startswith("body.0.body.2.")},
                            "lacks body.0.body.2.weight"),
        "gap": ({k: v for k, v in rcan.items() if not k.startswith("body.1.body.0.")},
                "RCAN group 1 has blocks \\[1\\] where group 0 has 2"),
        "no-add-mean": ({k: v for k, v in rcan.items() if not k.startswith("add_mean.")}, "lacks add_mean.weight"),
        "odd-upsampler": ({**rcan, "tail.0.0.weight": torch.zeros(100, 16, 3, 3)}, "upsampling conv makes 100"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
