"""DITN upscalers: detected from the header (scale, width, UFONE units and their ITL / SAL layers,
feed-forward width, projection biases) and run by Marble's own implementation, compared with spandrel
0.4.2 on the same file and input (on and off the 8 px patch); tiled and tiny inputs run; damaged and
grey-level files refused by name."""

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
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

# name: (spandrel's keyword arguments, Marble's label, scale, input size).
VARIANTS = {
    # Whole 8 px patches, no projection biases (the published models' setting).
    "ditn-x4": ({"dim": 16, "ITL_blocks": 2, "SAL_blocks": 2, "upscale": 4}, "DITN 4x (1x(2+2) blocks, 16 features)",
                4, [16, 24]),
    # Two units, biases, a 1.5x feed-forward, off the patch (the network mirrors up to whole patches).
    "ditn-x2-bias": ({"dim": 12, "ITL_blocks": 1, "SAL_blocks": 1, "UFONE_blocks": 2, "ffn_expansion_factor": 1.5,
                      "bias": True, "upscale": 2}, "DITN 2x (2x(1+1) blocks, 12 features)", 2, [19, 21]),
    # No spatial-aware layers at all, 3x.
    "ditn-x3-no-sal": ({"dim": 8, "ITL_blocks": 1, "SAL_blocks": 0, "upscale": 3},
                       "DITN 3x (1x(1+0) blocks, 8 features)", 3, [13, 8]),
    "ditn-x1": ({"dim": 8, "ITL_blocks": 1, "SAL_blocks": 1, "upscale": 1}, "DITN 1x (1x(1+1) blocks, 8 features)",
                1, [8, 16]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-ditn")
    specs = {
        name: {"class": "DITN", "seed": 70 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_ditn_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="DITN", layout="ditn", scale=scale)


def test_ditn_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "ditn-x4.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=6))
    assert tiled.shape == (160, 192, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Narrower than the padding (the published network's single mirror fails there): mirrored again.
        assert network(torch.rand(1, 3, 3, 5)).shape == (1, 3, 12, 20)
        assert network(torch.rand(1, 3, 1, 9)).shape == (1, 3, 4, 36)


def test_damaged_and_grey_ditn_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    ditn = load_file(str(workdir / "ditn-x2-bias.safetensors"))
    cases = {
        "missing": ({k: v for k, v in ditn.items() if k != "UFONE.1.SALs.0.SDA.scale"},
                    r"tensors do not fit the DITN 2x .*UFONE.1.SALs.0.SDA.scale"),
        "unit-gap": ({k: v for k, v in ditn.items() if not k.startswith("UFONE.0.SALs.")},
                     r"units hold layers \{.*'0.ITLs': \[0\], '1.ITLs': \[0\], '1.SALs': \[0\]\}"),
        "no-ffn": ({k: v for k, v in ditn.items() if not k.startswith("UFONE.0.ITLs.0.ffn.")},
                   "lacks UFONE.0.ITLs.0.ffn.project_in.weight"),
        "odd-upsampler": ({**ditn, "upsample.0.weight": torch.zeros(20, 12, 3, 3)}, "makes 20 channels"),
        "odd-ffn": ({**ditn, "UFONE.0.ITLs.0.ffn.project_in.weight": torch.zeros(35, 12, 1, 1)},
                    "feed-forward makes 35 channels"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
    # A grey-level model (spandrel reads sft's inputs as the colour channels): upscale() feeds RGB.
    grey = tmp_path / "ditn-grey.safetensors"
    save_file({**ditn, "sft.weight": torch.zeros(12, 1, 3, 3)}, str(grey))
    with pytest.raises(ModelError, match="ditn-grey.safetensors is a DITN for 1-channel images"):
        Library(paths).import_path(grey, "upscaler")
