"""MoESR upscalers: detected from the header (groups, blocks, gate widths, Inception branches, each of the
five upsamplers and its scale; one nearest+conv stage's 2x or 3x from the file's MetaUpsample record) and
run by Marble's own implementation, compared with spandrel 0.4.2 on the same file and an odd-sized input;
tiled inputs run; damaged files refused by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.upscaler import inspect_upscaler
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

_TINY = {"dim": 16, "n_blocks": 1, "n_block": 1, "expansion_factor": 1.5, "expansion_msg": 1.5}
# name: (spandrel's keyword arguments, Marble's label, scale).
VARIANTS = {
    # The direct pixel shuffle (the default), two groups of two blocks, the default gate width (2.65625x).
    "moesr-x4": ({"dim": 16, "n_blocks": 2, "n_block": 2, "expansion_factor": 2.65625, "scale": 4},
                 "MoESR 4x (2x2 blocks, 16 features)", 4),  # fmt: skip
    # Pixel shuffle through a middle width: two 2x stages, one 3x stage.
    "moesr-ps-x4": ({**_TINY, "upsampler": "pixelshuffle", "upsample_dim": 8, "scale": 4},
                    "MoESR 4x (1x1 block, 16 features, pixel shuffle)", 4),  # fmt: skip
    "moesr-ps-x3": ({**_TINY, "upsampler": "pixelshuffle", "upsample_dim": 8, "scale": 3},
                    "MoESR 3x (1x1 block, 16 features, pixel shuffle)", 3),  # fmt: skip
    # Nearest upsampling + convs: one 2x stage and one 3x stage have the same tensors (MetaUpsample tells).
    "moesr-nc-x2": ({**_TINY, "upsampler": "nearest+conv", "scale": 2},
                    "MoESR 2x (1x1 block, 16 features, nearest + conv)", 2),  # fmt: skip
    "moesr-nc-x3": ({**_TINY, "upsampler": "nearest+conv", "scale": 3},
                    "MoESR 3x (1x1 block, 16 features, nearest + conv)", 3),  # fmt: skip
    "moesr-dys-x2": ({**_TINY, "upsampler": "dysample", "scale": 2, "expansion_msg": 2.0},
                     "MoESR 2x (1x1 block, 16 features, DySample)", 2),  # fmt: skip
    # Restoration at 1x: one conv.
    "moesr-conv-x1": ({**_TINY, "upsampler": "conv", "dim": 24}, "MoESR 1x (1x1 block, 24 features)", 1),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-moesr")
    specs = {
        name: {"class": "MoESR", "seed": 110 + seed, "input": [21, 25], "kwargs": kwargs}
        for seed, (name, (kwargs, _, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_moesr_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="MoESR", layout="moesr", scale=scale)


def test_moesr_nearest_stage_scale_comes_from_the_file(reference):
    workdir, _ = reference
    path = workdir / "moesr-nc-x3.safetensors"
    # The tensor shapes cannot tell a 3x nearest stage from a 2x one; the seven bytes of MetaUpsample, read
    # with the header, can.
    header = read_safetensors_header(path)
    assert header.small_values["upscale.MetaUpsample"][2] == 3
    assert inspect_upscaler(header, path.name).scale == 3
    assert inspect_upscaler(dataclasses.replace(header, small_values={}), path.name).scale == 2


def test_moesr_upscales_tiled_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "moesr-dys-x2.safetensors")
    tiled = np.asarray(upscale(network, info.scale, noise_image(47, 41), tile=24, overlap=8))
    assert tiled.shape == (82, 94, 3) and tiled.std() > 1


def test_damaged_moesr_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    moesr = load_file(str(workdir / "moesr-x4.safetensors"))
    shuffle = load_file(str(workdir / "moesr-ps-x4.safetensors"))
    cases = {
        "missing": ({k: v for k, v in moesr.items() if k != "blocks.1.msg.gated.2.gamma"},
                    "tensors do not fit the MoESR 4x .*blocks.1.msg.gated.2.gamma"),
        "gap": ({k: v for k, v in moesr.items() if not k.startswith("blocks.0.blocks.1.")} | {
                 k.replace("blocks.0.blocks.0.", "blocks.0.blocks.2."): v.clone() for k, v in moesr.items()
                 if k.startswith("blocks.0.blocks.0.")}, r"blocks in its first group \[0, 2\]"),
        "odd-upsampler": ({**moesr, "upscale.0.weight": torch.zeros(50, 16, 3, 3)}, "makes 50 channels"),
        "shuffle-stage": ({k: v for k, v in shuffle.items() if not k.startswith("upscale.4.")},
                          r"convs \[0, 2, 6\]"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
