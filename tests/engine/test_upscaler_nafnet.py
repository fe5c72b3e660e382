"""NAFNet restoration models (1x, in the upscaler slot): detected from the header (width, blocks per encoder
level, middle, per decoder level) and run by Marble's own implementation, compared with spandrel 0.4.2 on the
same file and input (sizes off the U-Net's 2^levels unit too: both pad with zeros and crop back); tiled and
tiny inputs run; damaged files refused by name."""

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

# name: (spandrel's keyword arguments, Marble's label, input size).
VARIANTS = {
    # Two levels, uneven block counts on each side (the decoder numbered from the bottom), an odd size
    # (zero-padded to 4).
    "nafnet-2": ({"width": 8, "enc_blk_nums": [1, 2], "middle_blk_num": 1, "dec_blk_nums": [2, 1]},
                 "NAFNet 1x restoration (8 features, 1-2 / 1 / 2-1 blocks)", [19, 23]),
    # Three levels (the published models have four), a deep middle, a size already a multiple of 8.
    "nafnet-3": ({"width": 4, "enc_blk_nums": [1, 1, 3], "middle_blk_num": 2, "dec_blk_nums": [1, 1, 1]},
                 "NAFNet 1x restoration (4 features, 1-1-3 / 2 / 1-1-1 blocks)", [16, 24]),
    # One level, wider; a tiny odd input.
    "nafnet-1": ({"width": 16, "enc_blk_nums": [2], "middle_blk_num": 1, "dec_blk_nums": [1]},
                 "NAFNet 1x restoration (16 features, 2 / 1 / 1 blocks)", [5, 9]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-nafnet")
    specs = {
        name: {"class": "NAFNet", "seed": 120 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_nafnet_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="NAFNet", layout="nafnet", scale=1)


def test_nafnet_restores_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "nafnet-3.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=6))
    assert tiled.shape == (40, 48, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Smaller than the three levels' 8 px unit: padded up and cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_damaged_nafnet_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    nafnet = load_file(str(workdir / "nafnet-2.safetensors"))
    cases = {
        "missing": ({k: v for k, v in nafnet.items() if k != "decoders.0.1.conv3.weight"},
                    "tensors do not fit the NAFNet 1x .*decoders.0.1.conv3.weight"),
        "gap": ({k: v for k, v in nafnet.items() if not k.startswith("encoders.1.0.")},
                r"encoder level 1 blocks are numbered \[1\], with gaps"),
        "unpaired": ({k: v for k, v in nafnet.items() if not k.startswith(("decoders.1.", "ups.1."))},
                     "2 NAFNet encoder levels but 1 decoder levels"),
        "no-down": ({k: v for k, v in nafnet.items() if not k.startswith("downs.1.")}, "lacks downs.1.weight"),
        "odd-down": ({**nafnet, "downs.0.weight": torch.zeros(8, 8, 2, 2)}, "downsampling conv 0"),
        # KBNet-S's kernel-basis names beside NAFNet's: not read as a NAFNet.
        "kbnet-names": ({**nafnet, "middle_blks.0.attgamma": torch.zeros(1, 8, 1, 1)}, "not an upscaler model"),
        "grey": ({**nafnet, "intro.weight": torch.zeros(8, 1, 3, 3)}, "NAFNet for 1-channel images"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
