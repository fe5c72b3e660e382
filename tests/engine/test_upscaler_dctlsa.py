"""DCTLSA upscalers: detected from the header (scale, width) and run by Marble's own implementation (SwinIR's
window helpers, its own linear window attention and dense module connections), compared with spandrel 0.4.2
on the same file and input; tiled and tiny inputs run; damaged files refused by name."""

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

# name: (spandrel's keyword arguments, Marble's label, scale, input size, padded by spandrel's size rule).
VARIANTS = {
    # 19 x 23: each layer mirrors out to 32 x 32, four windows, so the odd blocks' half-window roll matters.
    "dctlsa-x4": ({"nf": 20, "upscale": 4}, "DCTLSA 4x (20 features)", 4, [19, 23], False),
    # Under 16 px: padded to 16 (mirrored, then repeated), as spandrel's descriptor pads for the network.
    "dctlsa-x2-small": ({"nf": 10, "upscale": 2}, "DCTLSA 2x (10 features)", 2, [11, 5], True),
    "dctlsa-x1": ({"nf": 15, "upscale": 1}, "DCTLSA 1x restoration (15 features)", 1, [17, 16], False),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-dctlsa")
    specs = {
        name: {"class": "DCTLSA", "seed": 90 + seed, "input": size, "kwargs": kwargs, "padded": padded}
        for seed, (name, (kwargs, _, _, size, padded)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_dctlsa_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _, _ = VARIANTS[name]
    # 3e-4 of the output's range: DCTLSA's random tiny models amplify float rounding, and on an AMD EPYC the
    # 10-feature model came out 1.1e-4 from spandrel's run in its own process (1e-6 for the others).
    check_against_spandrel(*reference, paths, name, label=label, architecture="DCTLSA", layout="dctlsa", scale=scale,
                           tolerance=3e-4)  # fmt: skip


def test_dctlsa_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "dctlsa-x2-small.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=24, overlap=4))
    assert tiled.shape == (80, 96, 3) and tiled.std() > 1
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 1, 3)).shape == (1, 3, 2, 6)


def test_damaged_dctlsa_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    dctlsa = load_file(str(workdir / "dctlsa-x4.safetensors"))
    cases = {
        "missing": ({k: v for k, v in dctlsa.items() if k != "B6.body.1.transformer_body.0.blocks.1.mlp.fc2.bias"},
                    "tensors do not fit the DCTLSA 4x .*B6.body.1.transformer_body.0.blocks.1.mlp.fc2.bias"),
        "no-merge": ({k: v for k, v in dctlsa.items() if k != "c.0.weight"}, "lacks c.0.weight"),
        "five-modules": ({**dctlsa, "c.0.weight": torch.zeros(20, 100, 1, 1)}, "merges 100 channels"),
        "odd-upsampler": ({**dctlsa, "upsampler.0.weight": torch.zeros(30, 20, 3, 3)}, "makes 30 channels"),
        "odd-width": ({**dctlsa, "fea_conv.weight": torch.zeros(21, 3, 3, 3), "c.0.weight": torch.zeros(21, 126, 1, 1)},
                      "21 wide"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
