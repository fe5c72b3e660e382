"""CRAFT upscalers: detected from the header (scale, width, groups and units, heads, window, MLP and
feed-forward widths, qkv bias, closing conv) and run by Marble's own implementation (DAT's window
branches, CRAFT's own high-frequency and fusion blocks), compared with spandrel 0.4.2 on the same file
and input; tiled and tiny inputs run; damaged files refused by name."""

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

# A width of 64: the position-bias MLP is a sixteenth of a branch's (half the width) channels wide, so
# narrower models would have a one-channel MLP whose LayerNorm hides the offsets.
# name: (spandrel's keyword arguments, Marble's label, scale, input size).
VARIANTS = {
    # Two units (the shifted second block of each), the published 4x16 window, an input padded to 32.
    "craft-x4": ({"embed_dim": 64, "depths": [2], "num_heads": [4], "split_size_0": 4, "split_size_1": 16,
                  "upscale": 4}, "CRAFT 4x (64 dims, 1x2 blocks, window 4x16)", 4, [19, 23]),
    # Two groups with their own head counts, a 2x8 window, no qkv bias, no closing conv, MLP ratio 1.5,
    # 3x; whole-window sides still get a full window of padding.
    "craft-x3-identity": ({"embed_dim": 64, "depths": [1, 1], "num_heads": [2, 4], "split_size_0": 2,
                           "split_size_1": 8, "mlp_ratio": 1.5, "qkv_bias": False, "resi_connection": "identity",
                           "upscale": 3}, "CRAFT 3x (64 dims, 2x1 blocks, window 2x8)", 3, [16, 32]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-craft")
    specs = {
        name: {"class": "CRAFT", "seed": 110 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_craft_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="CRAFT", layout="craft", scale=scale)


def test_craft_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "craft-x3-identity.safetensors")
    image = Image.fromarray((np.random.default_rng(0).random((40, 47, 3)) * 255).astype(np.uint8))
    tiled = np.asarray(upscale(network, info.scale, image, tile=24, overlap=6))
    assert tiled.shape == (120, 141, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Shorter than its padding (spandrel's network fails here): mirrored repeatedly, cropped back.
        assert network(torch.rand(1, 3, 3, 5)).shape == (1, 3, 9, 15)


def test_damaged_craft_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    craft = load_file(str(workdir / "craft-x4.safetensors"))
    cases = {
        "missing": ({k: v for k, v in craft.items() if k != "layers.0.residual_group.srwa_blocks.3.get_v.weight"},
                    "tensors do not fit the CRAFT 4x .*srwa_blocks.3.get_v.weight"),
        "gap": ({k: v for k, v in craft.items() if not k.startswith("layers.0.residual_group.hf_blocks.1.")} | {
                 "layers.0.residual_group.hf_blocks.2.attn.temperature": craft[
                     "layers.0.residual_group.hf_blocks.1.attn.temperature"]},
                "CRAFT group 0 has units \\[0, 2\\], with gaps"),
        "no-table": ({k: v for k, v in craft.items() if k != "biases_h"}, "lacks biases_h"),
        "odd-upsampler": ({**craft, "upsample.0.weight": torch.zeros(50, 64, 3, 3)}, "upsampler makes 50 channels"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)


def test_craft_window_orientation_is_read_from_the_files_table(reference):
    """The header gives the window's two sides; which is the height the file's `biases_h` says (its last
    row is (height - 1, width - 1)): a table for 16x4 windows builds 16x4 first branches, not 4x16."""
    from desktop.engine.backends.upscale_craft import craft_split_from_biases
    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.upscaler import inspect_upscaler

    workdir, _ = reference
    path = workdir / "craft-x4.safetensors"
    info = inspect_upscaler(read_safetensors_header(path), path.name)
    state = load_file(str(path))
    assert craft_split_from_biases(state, info).detail.split == (4, 16)
    state["biases_h"] = state["biases_h"].flip(1)  # the same offsets, rows and columns swapped: 16x4
    assert craft_split_from_biases(state, info).detail.split == (16, 4)
