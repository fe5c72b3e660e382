"""MMRealSR upscalers: detected from the header (trunk width, blocks and growth, the number of degradation
strengths, the estimator's steps) and run by Marble's own implementation (ESRGAN's shared RRDB block, the
modulation and the degradation estimator), compared with spandrel 0.4.2 on the same file and input; tiled and
tiny inputs run; damaged files and the unrunnable 2x/1x layouts refused by name."""

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

_ESTIMATED = "degradation strengths estimated from the image"
# name: (spandrel's keyword arguments, Marble's label, input size).
VARIANTS = {
    # Two strengths (blur, noise: the published count); the estimator widens 8 -> 16 in a stride-2 conv.
    "mmrealsr-x4": ({"num_in_ch": 3, "num_out_ch": 3, "num_feat": 16, "num_block": 2, "num_grow_ch": 8,
                     "num_feats": [8, 16], "num_blocks": [1, 1], "downscales": [2, 1]},
                    f"MMRealSR 4x (2 blocks, 16 features; {_ESTIMATED})", [19, 23]),
    # Three strengths; same-width stride-2 convs, one closing the estimator's body; an odd-sized input.
    # spandrel's call passes two "estimate this strength" overrides whatever the count, which fails on a third:
    # the reference runs the network's forward with three (every strength estimated, as Marble runs it).
    "mmrealsr-3-strengths": ({"num_in_ch": 3, "num_out_ch": 3, "num_feat": 12, "num_block": 1, "num_grow_ch": 6,
                              "num_degradation": 3, "num_feats": [8, 8], "num_blocks": [1, 2], "downscales": [2, 2]},
                             f"MMRealSR 4x (1 blocks, 12 features; {_ESTIMATED})", [17, 21]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-mmrealsr")
    specs = {
        name: {"class": "MMRealSR", "seed": 70 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, size)) in enumerate(VARIANTS.items())
    }
    strengths = VARIANTS["mmrealsr-3-strengths"][0]["num_degradation"]
    specs["mmrealsr-3-strengths"]["forward"] = {"custom_degrees": [None] * strengths}
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_mmrealsr_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="MMRealSR", layout="mmrealsr", scale=4)


def test_mmrealsr_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "mmrealsr-x4.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=16, overlap=4))
    assert tiled.shape == (160, 192, 3) and tiled.std() > 1
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 20, 28)  # under spandrel's 16 px minimum


def test_damaged_mmrealsr_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    model = load_file(str(workdir / "mmrealsr-x4.safetensors"))
    cases = {
        "missing": ({k: v for k, v in model.items() if k != "am_list.1.fc.4.bias"},
                    "tensors do not fit the MMRealSR 4x .*am_list.1.fc.4.bias"),
        "no-embedding": ({k: v for k, v in model.items() if not k.startswith("dd_embed.")},
                         "looks like an MMRealSR upscaler but lacks dd_embed.0.weight"),
        "estimator-gap": ({k: v for k, v in model.items() if not k.startswith("de_net.body.0.1.")},
                          "lacks de_net.body.0.1: its degradation estimator is incomplete"),
        # The published 2x layout: its first conv reads the unshuffled input's 12 channels, and so does its
        # estimator, which is given the bare image: it runs nowhere (spandrel detects it, then fails).
        "two-x": ({**model, "conv_first.weight": torch.zeros(16, 12, 3, 3),
                   **{f"de_net.conv_first.{d}.weight": torch.zeros(8, 12, 3, 3) for d in range(2)}},
                  "is a 2x MMRealSR; only the 4x colour"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
