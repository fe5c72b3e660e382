"""SAFMN upscalers: detected from the header (scale, width, blocks, feed-forward width) and run by Marble's
own implementation, compared with spandrel 0.4.2 on the same file and input (sizes off the 8 px padding
unit compared with spandrel's own padding for the model's size requirement); tiled and tiny inputs run;
damaged files refused by name."""

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

# name: (spandrel's keyword arguments, Marble's label, scale, input size, padded).
VARIANTS = {
    # Whole multiples of 8: the published network as is.
    "safmn-x4": ({"dim": 16, "n_blocks": 2, "upscaling_factor": 4}, "SAFMN 4x (2 blocks, 16 features)", 4,
                 [16, 24], False),
    # A 1.5x feed-forward, 3x, a size off the 8 px unit (the pyramid's pools then fall on spandrel's padding).
    "safmn-x3-ffn": ({"dim": 12, "n_blocks": 3, "ffn_scale": 1.5, "upscaling_factor": 3},
                     "SAFMN 3x (3 blocks, 12 features)", 3, [19, 23], True),
    "safmn-x2": ({"dim": 8, "n_blocks": 1, "upscaling_factor": 2}, "SAFMN 2x (1 block, 8 features)", 2,
                 [13, 16], True),
    # The 1x restoration models.
    "safmn-x1": ({"dim": 8, "n_blocks": 2, "upscaling_factor": 1}, "SAFMN 1x (2 blocks, 8 features)", 1,
                 [24, 17], True),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-safmn")
    specs = {
        name: {"class": "SAFMN", "seed": 80 + seed, "input": size, "kwargs": kwargs, "padded": padded}
        for seed, (name, (kwargs, _, _, size, padded)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_safmn_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="SAFMN", layout="safmn", scale=scale)


def test_safmn_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "safmn-x4.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=6))
    assert tiled.shape == (160, 192, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Smaller than the pyramid's 8x pool: mirrored up to 8 px, then cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 20, 28)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 4, 8)


def test_damaged_safmn_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    safmn = load_file(str(workdir / "safmn-x4.safetensors"))
    cases = {
        "missing": ({k: v for k, v in safmn.items() if k != "feats.1.safm.mfr.2.weight"},
                    "tensors do not fit the SAFMN 4x .*feats.1.safm.mfr.2.weight"),
        "gap": ({k: v for k, v in safmn.items() if not k.startswith("feats.0.norm")} | {
                 "feats.0.norm2.weight": safmn["feats.0.norm2.weight"]}, r"blocks are numbered \[1\], with gaps"),
        "no-ffn": ({k: v for k, v in safmn.items() if not k.startswith("feats.0.ccm.")},
                   "lacks feats.0.ccm.ccm.0.weight"),
        "odd-output": ({**safmn, "to_img.0.weight": torch.zeros(40, 16, 3, 3)}, "last conv makes 40 channels"),
        "odd-width": ({**safmn, "to_feat.weight": torch.zeros(18, 3, 3, 3)}, "18 features wide"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
