"""MixDehazeNet dehazers: detected from the header (stage widths and block counts) and run by Marble's own
implementation, compared with spandrel 0.4.2's network on the same file and input, both on the published -1..1
value range (sizes off the 4 px unit padded by the network itself, as published); tiled and tiny inputs run;
damaged files refused by name."""

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

# name: (spandrel's keyword arguments, Marble's label, input size).
VARIANTS = {
    # The published tiny layout (widths narrowed), at spandrel's 40 px minimum, on the 4 px unit.
    "mixdehazenet": ({"embed_dims": [8, 16, 24, 16, 8], "depths": [1, 1, 2, 1, 1]},
                     "MixDehazeNet 1x dehaze (8-16-24 features, 1-1-2-1-1 blocks)", [40, 48]),
    # Every stage's count different, the widest stage outside, off the 4 px unit (the network mirrors).
    "mixdehazenet-deep": ({"embed_dims": [16, 8, 16, 8, 16], "depths": [2, 1, 3, 1, 2]},
                          "MixDehazeNet 1x dehaze (16-8-16 features, 2-1-3-1-2 blocks)", [42, 45]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-mixdehazenet")
    specs = {
        name: {"class": "MixDehazeNet", "seed": 160 + seed, "input": size, "kwargs": kwargs, "signed": True}
        for seed, (name, (kwargs, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_mixdehazenet_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="MixDehazeNet",
                           layout="mixdehazenet", scale=1)  # fmt: skip


def test_mixdehazenet_dehazes_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "mixdehazenet.safetensors")
    image = Image.fromarray((np.random.default_rng(0).random((50, 64, 3)) * 255).astype(np.uint8))
    tiled = np.asarray(upscale(network, info.scale, image, tile=24, overlap=6))
    assert tiled.shape == (50, 64, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Under the 40 px the quarter-size stage's mirrored convs need: mirrored up, then cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_damaged_mixdehazenet_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    net = load_file(str(workdir / "mixdehazenet.safetensors"))
    cases = {
        "missing": ({k: v for k, v in net.items() if k != "layer3.blocks.1.pa.2.bias"},
                    "tensors do not fit the MixDehazeNet 1x dehaze .*layer3.blocks.1.pa.2.bias"),
        "gap": ({**net, "layer3.blocks.3.conv1.weight": torch.zeros(24, 24, 1, 1)},
                r"stage 3 blocks are numbered \[0, 1, 3\], with gaps"),
        "no-stage": ({k: v for k, v in net.items() if not k.startswith("layer4.")},
                     "lacks layer4.blocks.0.conv1.weight"),
        "grey": ({**net, "patch_embed.proj.weight": torch.zeros(8, 1, 3, 3)}, "for 1-channel images"),
        "uneven": ({**net, "layer4.blocks.0.conv1.weight": torch.zeros(12, 12, 1, 1)},
                   "stages are 8-16-24-12-8 wide"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
