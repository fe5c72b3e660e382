"""FDAT upscalers: detected from the header and the upsampler's settings tensor (scale, width, groups and
blocks, window, upsampler kind, unshuffled input) and run by Marble's own implementation, compared with
spandrel 0.4.2 on the same file and input, one variant per upsampler kind; tiled and tiny inputs run;
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


def _fdat(upsampler: str, scale: int, **more) -> dict:
    # Tiny: 16 dims, 2 heads, 4 px windows, one group of one spatial-channel pair unless more are asked.
    return {"embed_dim": 16, "num_groups": 1, "depth_per_group": 1, "num_heads": 2, "window_size": 4,
            "ffn_expansion_ratio": 1.5, "aim_reduction_ratio": 4, "mid_dim": 12, "upsampler_type": upsampler,
            "scale": scale} | more  # fmt: skip


# name: (spandrel's keyword arguments, Marble's label, scale); every input is 11 x 13 px (no whole window).
VARIANTS = {
    "fdat-x4-pixelshuffle": (_fdat("pixelshuffle", 4, num_groups=2, depth_per_group=2),
                             "FDAT 4x (16 dims, 2x4 blocks, pixel shuffle upsampler)", 4),
    "fdat-x2-direct": (_fdat("pixelshuffledirect", 2),
                       "FDAT 2x (16 dims, 1x2 blocks, direct pixel shuffle upsampler)", 2),
    "fdat-x1-conv": (_fdat("conv", 1), "FDAT 1x restoration (16 dims, 1x2 blocks, conv upsampler)", 1),
    # 3x nearest + conv has the 2x one's tensors: only the settings tell them apart.
    "fdat-x3-nearest": (_fdat("nearest+conv", 3), "FDAT 3x (16 dims, 1x2 blocks, nearest + conv upsampler)", 3),
    "fdat-x2-nearest": (_fdat("nearest+conv", 2), "FDAT 2x (16 dims, 1x2 blocks, nearest + conv upsampler)", 2),
    "fdat-x2-dysample": (_fdat("dysample", 2), "FDAT 2x (16 dims, 1x2 blocks, DySample upsampler)", 2),
    "fdat-x4-transpose": (_fdat("transpose+conv", 4), "FDAT 4x (16 dims, 1x2 blocks, transposed conv upsampler)", 4),
    "fdat-x3-transpose": (_fdat("transpose+conv", 3), "FDAT 3x (16 dims, 1x2 blocks, transposed conv upsampler)", 3),
    # LDA sampling after a conv to its own (middle) width.
    "fdat-x2-lda": (_fdat("lda", 2, mid_dim=24), "FDAT 2x (16 dims, 1x2 blocks, LDA sampling upsampler)", 2),
    # The settings record the middle width in the input width's place; spandrel reads these only when equal.
    "fdat-x2-pa": (_fdat("pa_up", 2, mid_dim=16), "FDAT 2x (16 dims, 1x2 blocks, pixel-attention upsampler)", 2),
    # Unshuffled input: 2x models see it in 2x2 cells, 1x ones in 4x4 cells (mirror-padded to whole cells).
    "fdat-x2-unshuffle": (_fdat("pixelshuffle", 2, unshuffle_mod=True),
                          "FDAT 2x (16 dims, 1x2 blocks, pixel shuffle upsampler, unshuffled input)", 2),
    "fdat-x1-unshuffle": (_fdat("dysample", 1, unshuffle_mod=True, mid_dim=16),
                          "FDAT 1x restoration (16 dims, 1x2 blocks, DySample upsampler, unshuffled input)", 1),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-fdat")
    specs = {
        name: {"class": "FDAT", "seed": 70 + seed, "input": [11, 13], "kwargs": kwargs}
        for seed, (name, (kwargs, _, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_fdat_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="FDAT", layout="fdat", scale=scale)


def test_fdat_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "fdat-x4-pixelshuffle.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=8))
    assert tiled.shape == (160, 192, 3) and tiled.std() > 1
    unshuffled, _ = load_upscaler(workdir / "fdat-x1-unshuffle.safetensors")
    with torch.inference_mode():
        # Smaller than a window, and (unshuffled) than one 4x4 cell: padded and cropped back.
        assert network(torch.rand(1, 3, 3, 2)).shape == (1, 3, 12, 8)
        assert unshuffled(torch.rand(1, 3, 1, 3)).shape == (1, 3, 1, 3)


def test_damaged_fdat_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    fdat = load_file(str(workdir / "fdat-x2-direct.safetensors"))
    meta = fdat["upsampler.MetaUpsample"]

    def settings(**changes: int) -> torch.Tensor:
        values = meta.clone()
        for index, value in changes.items():
            values[int(index[1:])] = value
        return values

    cases = {
        "missing": ({k: v for k, v in fdat.items() if k != "groups.0.blocks.1.inter.sg.0.weight"},
                    "tensors do not fit the FDAT 2x .*groups.0.blocks.1.inter.sg.0.weight"),
        "gap": ({k: v for k, v in fdat.items() if not k.startswith("groups.0.blocks.0.")} | {
                 "groups.0.blocks.0.inter.cg.1.weight": fdat["groups.0.blocks.0.inter.cg.1.weight"]},
                "group 0 has blocks \\[1\\], with gaps"),
        "no-settings": ({**fdat, "upsampler.MetaUpsample": meta[:5].clone()}, "not the seven settings bytes"),
        "unknown-kind": ({**fdat, "upsampler.MetaUpsample": settings(v1=9)}, "settings Marble does not know"),
        "lda": ({**fdat, "upsampler.MetaUpsample": settings(v1=6)}, "LDA sampling upsampler is 12 wide"),
        "wrong-width": ({**fdat, "upsampler.MetaUpsample": settings(v3=20)}, "takes 20 channels"),
        "wrong-scale": ({**fdat, "upsampler.MetaUpsample": settings(v2=4)}, "tensors do not fit the FDAT 4x"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
