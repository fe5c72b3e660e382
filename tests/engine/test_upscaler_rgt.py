"""RGT upscalers: detected from the header (scale, width, groups and blocks, heads, window, summary width)
and run by Marble's own implementation (DAT's window attention and feed-forward, RGT's own recursive
attention), compared with spandrel 0.4.2 on the same file and input; tiled and tiny inputs run; damaged
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

# Widths of 64 and 96: the position-bias MLP is a sixteenth of a branch's (half the width) channels wide,
# so narrower models would have a one-channel MLP whose LayerNorm hides the offsets.
_X2 = {"embed_dim": 64, "depth": [2, 2], "num_heads": [4, 4], "mlp_ratio": 2.0, "upscale": 2,
       "split_size": [4, 8], "c_ratio": 0.5}  # fmt: skip
_X4 = {"embed_dim": 96, "depth": [3], "num_heads": [6], "mlp_ratio": 1.5, "upscale": 4, "split_size": [8, 8],
       "c_ratio": 0.25, "resi_connection": "3conv", "qkv_bias": False}  # fmt: skip
# name: (spandrel's keyword arguments, Marble's label, scale, input size).
VARIANTS = {
    # Two groups (the odd group's shift pattern), a 4x8 window (its orientation from the table's values).
    "rgt-x2": (_X2, "RGT 2x (64 dims, 2x2 blocks)", 2, [19, 23]),
    # One group of three blocks (block 2 shifted), 3conv closings, no qkv bias, a quarter-width summary.
    "rgt-x4-3conv": (_X4, "RGT 4x (96 dims, 1x3 blocks)", 4, [19, 23]),
    # The x2 model on a wide input: 1040 px shrink three times (log4(1040 // 16) = 3), not twice.
    "rgt-x2-wide": (_X2, "RGT 2x (64 dims, 2x2 blocks)", 2, [64, 1040]),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-rgt")
    specs = {
        name: {"class": "RGT", "seed": 50 + (seed if name != "rgt-x2-wide" else 0), "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_rgt_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="RGT", layout="rgt", scale=scale)


def test_rgt_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "rgt-x2.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=8))
    assert tiled.shape == (80, 96, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Under the 16 px the recursion needs: padded and cropped back. Long and thin: the short side is
        # padded up to what three recursions need (spandrel's network fails on both).
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)
        assert network(torch.rand(1, 3, 17, 1030)).shape == (1, 3, 34, 2060)


def test_damaged_rgt_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    rgt = load_file(str(workdir / "rgt-x2.safetensors"))
    cases = {
        "missing": ({k: v for k, v in rgt.items() if k != "layers.1.blocks.1.attn.cpe.weight"},
                    "tensors do not fit the RGT 2x .*layers.1.blocks.1.attn.cpe.weight"),
        "gap": ({k: v for k, v in rgt.items() if not k.startswith("layers.0.blocks.0.")} | {
                 "layers.0.blocks.0.gamma": rgt["layers.0.blocks.0.gamma"]},
                "lacks layers.0.blocks.0.attn.attns.0.pos.pos3.2.weight"),
        "odd-upsampler": ({**rgt, "upsample.0.weight": torch.zeros(100, 64, 3, 3)}, "upsampling conv makes 100"),
        # Group 1 renamed 2: a group missing between them, told from the header before any load.
        "group-gap": ({"layers.2." + k[9:] if k.startswith("layers.1.") else k: v for k, v in rgt.items()},
                      r"RGT groups are not numbered 0..1 \(found \[0, 2\]\)"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
