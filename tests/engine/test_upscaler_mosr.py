"""MoSR upscalers: detected from the header (upsampler kind, scale, width, block count, gate widths, kernel)
and run by Marble's own implementation, compared with spandrel 0.4.2 on the same file and input; tiled
inputs run; damaged files refused by name."""

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

# name: (spandrel's keyword arguments, Marble's label, scale). Tiny widths: every variant runs in well under a second.
VARIANTS = {
    # The published defaults' proportions (gate 1.5x wide, all of it depth-wise, kernel 7), pixel shuffle.
    "mosr-x4": ({"upscale": 4, "n_block": 2, "dim": 16}, "MoSR 4x (2 blocks, 16 features)", 4),
    # A gate twice as wide whose depth-wise conv sees only half the width (an identity part), kernel 5.
    "mosr-x2-split": ({"upscale": 2, "n_block": 3, "dim": 16, "kernel_size": 5, "expansion_ratio": 2.0,
                       "conv_ratio": 0.5}, "MoSR 2x (3 blocks, 16 features)", 2),  # fmt: skip
    # The geometric-ensemble pixel shuffle (eight predictions averaged) at an odd scale.
    "mosr-gps-x3": ({"upscale": 3, "n_block": 1, "dim": 12, "upsampler": "gps"},
                    "MoSR 3x (1 block, 12 features, geometric-ensemble shuffle)", 3),  # fmt: skip
    # DySample: 4 groups at every scale (unlike RealPLKSR's 3 at odd ones), a closing 1x1 conv even at 1x.
    "mosr-dys-x2": ({"upscale": 2, "n_block": 2, "dim": 16, "upsampler": "dys"},
                    "MoSR 2x (2 blocks, 16 features, DySample)", 2),  # fmt: skip
    "mosr-dys-x3": ({"upscale": 3, "n_block": 1, "dim": 16, "upsampler": "dys", "conv_ratio": 0.75},
                    "MoSR 3x (1 block, 16 features, DySample)", 3),  # fmt: skip
    "mosr-dys-x1": ({"upscale": 1, "n_block": 1, "dim": 8, "upsampler": "dys"},
                    "MoSR 1x (1 block, 8 features, DySample)", 1),  # fmt: skip
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-mosr")
    specs = {
        name: {"class": "MoSR", "seed": 70 + seed, "input": [19, 23], "kwargs": kwargs}
        for seed, (name, (kwargs, _, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_mosr_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="MoSR", layout="mosr", scale=scale)


def test_mosr_upscales_tiled_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "mosr-dys-x2.safetensors")
    image = noise_image(48, 40)
    whole = np.asarray(upscale(network, info.scale, image, tile=0)).astype(int)
    tiled = np.asarray(upscale(network, info.scale, image, tile=24, overlap=8)).astype(int)
    assert tiled.shape == whole.shape == (80, 96, 3) and tiled.std() > 1
    # Convolutions only: with an 8 px overlap the tiles see most of what the whole image does.
    assert np.abs(tiled - whole).mean() < 2


def test_damaged_mosr_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    mosr = load_file(str(workdir / "mosr-x4.safetensors"))
    dys = load_file(str(workdir / "mosr-dys-x2.safetensors"))
    cases = {
        "missing": ({k: v for k, v in mosr.items() if k != "shortcut.conv11.weight"},
                    "tensors do not fit the MoSR 4x .*shortcut.conv11.weight"),
        "gap": ({k: v for k, v in mosr.items() if not k.startswith("gblocks.2.")}, r"layer\(s\) \[2\] of gblocks"),
        "partial": ({k: v for k, v in mosr.items() if k != "gblocks.2.fc2.bias"}, "block 2 lacks gblocks.2.fc2.bias"),
        "odd-upsampler": ({**mosr, "upsampler.0.weight": torch.zeros(50, 16, 3, 3)}, "makes 50 channels"),
        "no-end-conv": ({k: v for k, v in dys.items() if not k.startswith("upsampler.end_conv")},
                        "without upsampler.end_conv.weight"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
