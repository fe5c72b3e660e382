"""DnCNN and FDnCNN denoisers (1x): detected from the header (width, depth, BatchNorm or not, colour or grey,
the FDnCNN noise-level input) and run by Marble's own implementation, compared with spandrel 0.4.2 (through
its own call, which adds FDnCNN's default noise map) on the same file and input; tiles run; damaged files
refused by name."""

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

# name: (spandrel's keyword arguments, per-channel (grey), Marble's label). spandrel detects the plain-ReLU
# layout from 8 convs up (it probes model.14), the BatchNorm one from 4.
VARIANTS = {
    "dncnn-colour-bn": ({"in_nc": 3, "out_nc": 3, "nc": 16, "nb": 5, "act_mode": "BR"}, False,
                        "DnCNN 1x denoise (16 features, 5 convs, BatchNorm)"),
    "dncnn-grey": ({"in_nc": 1, "out_nc": 1, "nc": 8, "nb": 8, "act_mode": "R"}, True,
                   "DnCNN 1x denoise (grey, 8 features, 8 convs)"),
    "fdncnn-colour-bn": ({"in_nc": 4, "out_nc": 3, "nc": 16, "nb": 4, "act_mode": "BR", "mode": "FDnCNN"}, False,
                         "FDnCNN 1x denoise (noise level 15, 16 features, 4 convs, BatchNorm)"),
    "fdncnn-grey": ({"in_nc": 2, "out_nc": 1, "nc": 16, "nb": 8, "act_mode": "R", "mode": "FDnCNN"}, True,
                    "FDnCNN 1x denoise (noise level 15, grey, 16 features, 8 convs)"),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-dncnn")
    specs = {
        # He's gain of sqrt(2) on the convs, so the FDnCNNs' outputs (no residual) are not all near zero.
        name: {"class": "DnCNN", "seed": 80 + seed, "input": [19, 23], "kwargs": kwargs, "per_channel": grey,
               "gain": 2**0.5}
        for seed, (name, (kwargs, grey, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_dncnn_is_detected_and_matches_spandrel(reference, paths, name):
    _, _, label = VARIANTS[name]
    # Convolutions only, so float32 agrees closely: 1e-5 tells BatchNorm's epsilon (1e-4, not torch's 1e-5).
    check_against_spandrel(*reference, paths, name, label=label, architecture="DnCNN", layout="dncnn", scale=1,
                           tolerance=1e-5)  # fmt: skip


def test_a_dncnn_denoises_in_tiles_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "fdncnn-grey.safetensors")
    assert info.scale == 1 and (info.in_channels, info.out_channels) == (1, 1)
    image = noise_image(45, 38)
    whole = np.asarray(upscale(network, 1, image, tile=0)).astype(int)
    tiled = np.asarray(upscale(network, 1, image, tile=32, overlap=16)).astype(int)
    # Eight 3x3 convs see 8 px around, so a tile's outer 8 px see its zero padding; the ramps across the
    # 32 px bands weigh them down (measured at most 10 of 255 levels, 0.3 on average, for random weights).
    difference = np.abs(whole - tiled)
    assert tiled.shape == (38, 45, 3) and difference.max() <= 16 and difference.mean() < 0.5 and whole.std() > 1
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_damaged_dncnn_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    bn = load_file(str(workdir / "dncnn-colour-bn.safetensors"))
    colour = load_file(str(workdir / "fdncnn-colour-bn.safetensors"))
    cases = {
        "missing": ({k: v for k, v in bn.items() if k != "model.6.running_var"},
                    "tensors do not fit the DnCNN 1x denoise .*model.6.running_var"),
        "gap": ({k: v for k, v in bn.items() if not k.startswith("model.5.")},
                "layers are \\[0, 2, 3, 6, 8, 9, 11\\], not a conv every 3"),
        "channels": ({**colour, "model.0.weight": torch.zeros(16, 6, 3, 3)}, "from 6 channels to 3"),
        "kernel": ({**colour, "model.5.weight": torch.zeros(16, 16, 1, 1)}, "model.5 is not a 3x3 conv"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
