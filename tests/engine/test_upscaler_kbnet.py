"""KBNet-S restoration models (1x, in the upscaler slot): detected from the header (NAFNet's frame: width and
blocks per level; the basis count, feed-forward ratio, lightweight variant) and run by Marble's own
implementation, compared with spandrel 0.4.2 on the same file and input, on and off the 2^levels padding
unit; the same for KBNet-L (a Restormer-style U-Net with kernel-basis feed-forwards); tiled and tiny inputs
run; damaged files refused by name."""

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
    # Two levels, the 5x5 large-kernel branch over four-channel groups, an odd size (zero-padded to 4).
    "kbnet-s": ({"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]},
                "KBNet-S 1x restoration (8 features, 1-1 / 1 / 1-1 blocks)", [19, 23]),
    # Lightweight (a 3x3 per channel), a 1.5x feed-forward, the narrowest width, a whole multiple.
    "kbnet-s-light": ({"width": 4, "enc_blk_nums": [2], "middle_blk_num": 2, "dec_blk_nums": [1],
                       "lightweight": True, "ffn_scale": 1.5},
                      "KBNet-S light 1x restoration (4 features, 2 / 2 / 1 blocks)", [16, 16]),
    # The bottom level wider than 32 (64): the basis-weight branch stays 32 channels wide there.
    "kbnet-s-wide": ({"width": 32, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]},
                     "KBNet-S 1x restoration (32 features, 1 / 1 / 1 blocks)", [9, 13]),
}  # fmt: skip
# KBNet-L: spandrel pads its input to 16 px for it (the spec's "padded"), as Marble's network does itself.
LARGE = {
    # Two heads from level 2, a 2x feed-forward, no biases, an odd size. (Widths must divide by the basis-weight
    # branch's min(width, 24) channels at every level, and the feed-forward width be even.)
    "kbnet-l": ({"dim": 6, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 2, 2, 4],
                 "ffn_expansion_factor": 2.0, "bias": False},
                "KBNet-L 1x restoration (6 features, 1-1-1-1 + 1 blocks)", [19, 23]),
    # Biases, a 1.5x feed-forward, two blocks at the top, widths past the 24-channel basis-weight branch.
    "kbnet-l-bias": ({"dim": 12, "num_blocks": [2, 1, 1, 1], "num_refinement_blocks": 2, "heads": [1, 1, 2, 4],
                      "ffn_expansion_factor": 1.5, "bias": True},
                     "KBNet-L 1x restoration (12 features, 2-1-1-1 + 2 blocks)", [16, 16]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-kbnet")
    specs = {
        name: {"class": "KBNet_s", "seed": 160 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, size)) in enumerate(VARIANTS.items())
    }
    specs |= {
        name: {"class": "KBNet_l", "seed": 170 + seed, "input": size, "kwargs": kwargs, "padded": True}
        for seed, (name, (kwargs, _, size)) in enumerate(LARGE.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_kbnet_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="KBNet", layout="kbnet", scale=1)


@pytest.mark.parametrize("name", list(LARGE))
def test_each_kbnet_l_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _ = LARGE[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="KBNet", layout="kbnet-l", scale=1)


def test_kbnet_restores_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "kbnet-s.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=6))
    assert tiled.shape == (40, 48, 3) and tiled.std() > 1
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)
    large, _ = load_upscaler(workdir / "kbnet-l.safetensors")
    with torch.inference_mode():
        # Under the 16 px unit, and narrower than one mirror step: mirrored repeatedly, cropped back.
        assert large(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert large(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_damaged_kbnet_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    kbnet = load_file(str(workdir / "kbnet-s.safetensors"))
    large = load_file(str(workdir / "kbnet-l.safetensors"))
    cases = {
        "missing": ({k: v for k, v in kbnet.items() if k != "decoders.1.0.conv2.2.weight"},
                    "tensors do not fit the KBNet-S 1x .*decoders.1.0.conv2.2.weight"),
        "gap": ({k: v for k, v in kbnet.items() if not k.startswith("middle_blks.0.")} | {
                 k: v for k, v in kbnet.items() if k.startswith("middle_blks.0.") and k.endswith(("attgamma", ".w"))},
                r"KBNet-S middle blocks are numbered \[\], with gaps"),
        "unpaired": ({k: v for k, v in kbnet.items() if not k.startswith(("decoders.1.", "ups.1."))},
                     "2 KBNet-S encoder levels but 1 decoder levels"),
        "no-ffn": ({k: v for k, v in kbnet.items() if k != "middle_blks.0.conv4.weight"},
                   "lacks middle_blks.0.conv4.weight"),
        "grey": ({**kbnet, "intro.weight": torch.zeros(8, 1, 3, 3)}, "KBNet-S for 1-channel images"),
        # KBNet-L's.
        "large-missing": ({k: v for k, v in large.items() if k != "decoder_level2.0.attn.conv2.2.weight"},
                          "tensors do not fit the KBNet-L 1x .*decoder_level2.0.attn.conv2.2.weight"),
        "large-gap": ({k: v for k, v in large.items() if not k.startswith("refinement.0.norm1")},
                      r"KBNet-L refinement blocks are numbered \[\], with gaps"),
        "large-no-heads": ({k: v for k, v in large.items() if k != "latent.0.ffn.temperature"},
                           "lacks latent.0.ffn.temperature"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
