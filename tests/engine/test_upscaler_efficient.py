"""SPAN and (Real)PLKSR upscalers: detected from the header (scale, width, SPAN's input normalisation,
PLKSR's mixer, kernel and norms) and run by Marble's own implementations, compared with spandrel 0.4.2 on
the same file and input; a pickled .pth through the safe conversion; tiled against whole; damaged files
refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.cli_runner import run_cli
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

# name: (spandrel's keyword arguments, Marble's label, scale). Tiny widths; the input 19 x 23 px.
VARIANTS = {
    "span-x4": ({"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 12, "upscale": 4}, "SPAN 4x (12 features)", 4),
    "span-x2": ({"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 8, "upscale": 2}, "SPAN 2x (8 features)", 2),
    "span-x2-no-norm": (
        {"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 8, "upscale": 2, "norm": False},
        "SPAN 2x (8 features, no input normalisation)", 2,
    ),
}  # fmt: skip
_PLKSR = {"dim": 16, "n_blocks": 2, "split_ratio": 0.25}
PLKSR_VARIANTS = {
    "plksr-x2-ccm": ("PLKSR", {**_PLKSR, "upscaling_factor": 2, "ccm_type": "CCM", "kernel_size": 7},
                     "PLKSR (CCM) 2x (16 features, 2 blocks, kernel 7)", 2),
    "plksr-x3-iccm": ("PLKSR", {**_PLKSR, "upscaling_factor": 3, "ccm_type": "ICCM", "kernel_size": 5},
                      "PLKSR (ICCM) 3x (16 features, 2 blocks, kernel 5)", 3),
    "plksr-x4-dccm-no-attention": (
        "PLKSR", {**_PLKSR, "upscaling_factor": 4, "ccm_type": "DCCM", "kernel_size": 9, "use_ea": False},
        "PLKSR (DCCM) 4x (16 features, 2 blocks, kernel 9)", 4,
    ),
    "realplksr-x4": ("RealPLKSR", {**_PLKSR, "upscaling_factor": 4, "kernel_size": 7},
                     "RealPLKSR 4x (16 features, 2 blocks, kernel 7)", 4),
    "realplksr-x2-layer-norm": ("RealPLKSR", {**_PLKSR, "upscaling_factor": 2, "kernel_size": 7, "layer_norm": True},
                                "RealPLKSR 2x (16 features, 2 blocks, kernel 7)", 2),
    "realplksr-x2-dysample": ("RealPLKSR", {**_PLKSR, "upscaling_factor": 2, "kernel_size": 7, "dysample": True},
                              "RealPLKSR 2x (16 features, 2 blocks, kernel 7, DySample)", 2),
    "realplksr-x3-dysample": ("RealPLKSR", {**_PLKSR, "upscaling_factor": 3, "kernel_size": 5, "dysample": True},
                              "RealPLKSR 3x (16 features, 2 blocks, kernel 5, DySample)", 3),
}  # fmt: skip
# The same float32 operations in another order (one fused kernel against the chain, as spandrel runs it), on
# random weights that amplify the 0..255 input to outputs in the hundreds: agreement relative to the output.
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-span")
    specs = {
        name: {"class": "SPAN", "seed": 10 + seed, "input": [19, 23], "kwargs": kwargs}
        for seed, (name, (kwargs, _, _)) in enumerate(VARIANTS.items())
    } | {
        name: {"class": kind, "seed": 20 + seed, "input": [19, 23], "kwargs": kwargs}
        for seed, (name, (kind, kwargs, _, _)) in enumerate(PLKSR_VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_span_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="SPAN", layout="span", scale=scale,
                           tolerance=TOLERANCE)  # fmt: skip


@pytest.mark.parametrize("name", list(PLKSR_VARIANTS))
def test_each_plksr_is_detected_and_matches_spandrel(reference, paths, name):
    _, _, label, scale = PLKSR_VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="PLKSR", layout="plksr", scale=scale)
    assert load_upscaler(reference[0] / f"{name}.safetensors")[1].blocks == 2


def test_a_pickled_span_is_converted_and_upscales_tiled_like_whole(reference, tmp_path):
    workdir, _ = reference
    where = str(tmp_path / "home")
    pth = tmp_path / "4x-span-test.pth"
    torch.save(load_file(str(workdir / "span-x4.safetensors")), pth)
    code, _, err = run_cli("upscalers", "import", str(pth), "--convert-pickle", "--home", where)
    assert code == 0, err
    code, out, _ = run_cli("upscalers", "list", "--home", where)
    assert "4x-span-test" in out and "SPAN 4x (12 features)" in out
    network, info = load_upscaler(workdir / "span-x4.safetensors")
    image = noise_image(72, 56)
    whole = np.asarray(upscale(network, info.scale, image, tile=0)).astype(int)
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=16)).astype(int)
    assert whole.shape == (224, 288, 3) and whole.std() > 10
    # A pixel of SPAN's output sees 21 px around it (21 3x3 convs on its longest path); the default 16 px
    # overlap leaves seams, small on average (measured 1.66 levels; a network of real weights is smoother).
    difference = np.abs(whole - tiled)
    assert difference.mean() < 2.0


def test_damaged_span_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    span = load_file(str(workdir / "span-x4.safetensors"))
    cases = {
        "no-block-6": ({k: v for k, v in span.items() if not k.startswith("block_6.")},
                       "SPAN blocks \\[1, 2, 3, 4, 5\\]"),
        "missing": ({k: v for k, v in span.items() if k != "block_3.c2_r.conv.1.bias"},
                    "tensors do not fit the SPAN 4x .*block_3.c2_r.conv.1.bias"),
        "odd-upsampler": ({**span, "upsampler.0.weight": torch.zeros(20, 12, 3, 3),
                           "upsampler.0.bias": torch.zeros(20)},
                          "upsampler makes 20 channels"),
    }  # fmt: skip
    plksr = load_file(str(workdir / "realplksr-x4.safetensors"))
    cases |= {
        "plksr-gap": ({k: v for k, v in plksr.items() if not k.startswith("feats.2.")},
                      "PLKSR with layer\\(s\\) \\[2\\] of feats missing"),
        "plksr-dysample": ({**plksr, "to_img.init_pos": torch.zeros(1, 8, 1, 1)}, "DySample upsampler of shapes"),
        "plksr-missing": ({k: v for k, v in plksr.items() if k != "feats.2.norm.bias"},
                          "tensors do not fit the RealPLKSR 4x .*feats.2.norm.bias"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
