"""FBCNN JPEG artefact removal models (1x, in the upscaler slot): detected from the header (widths, blocks per
level, down- and upsampling kinds) and run by Marble's own implementation with the quality factor it
predicts itself, compared with spandrel 0.4.2's default call (also the predicted quality) on the same file
and input, on and off the 8 px padding unit; tiled and tiny inputs run; damaged files refused by name.

The bottom width is 512 in every variant: FBCNN's quality predictor reads it through 512-wide linear layers
spandrel's class fixes. Two blocks per level at least: with one, spandrel's model nests differently (its
`sequential` helper unwraps a lone block), which its detection does not read."""

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

# name: (spandrel's keyword arguments, Marble's label, input size).
VARIANTS = {
    # The published layout (stride-2 conv down, transposed conv up), an odd size (edge-repeated to 8 px).
    "fbcnn-strided": ({"nc": [8, 16, 32, 512], "nb": 2}, "FBCNN 1x JPEG artefact removal (8 features, 2 blocks "
                      "per level)", [19, 23]),
    # Pooling and a conv down, nearest upsampling and a conv up, two blocks per level.
    "fbcnn-pool-upconv": ({"nc": [4, 8, 16, 512], "nb": 3, "downsample_mode": "avgpool", "upsample_mode": "upconv"},
                          "FBCNN 1x JPEG artefact removal (4 features, 3 blocks per level)", [16, 24]),
    # A conv and a pixel shuffle up; a tiny odd input.
    "fbcnn-shuffle": ({"nc": [8, 8, 16, 512], "nb": 2, "upsample_mode": "pixelshuffle"},
                      "FBCNN 1x JPEG artefact removal (8 features, 2 blocks per level)", [9, 13]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-fbcnn")
    specs = {
        name: {"class": "FBCNN", "seed": 140 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_fbcnn_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="FBCNN", layout="fbcnn", scale=1)


def test_fbcnn_restores_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "fbcnn-strided.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=6))
    assert tiled.shape == (40, 48, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Smaller than the 8 px unit: edge-repeated up and cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_damaged_fbcnn_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    fbcnn = load_file(str(workdir / "fbcnn-strided.safetensors"))
    cases = {
        "missing": ({k: v for k, v in fbcnn.items() if k != "m_up2.1.res.2.weight"},
                    "tensors do not fit the FBCNN 1x .*m_up2.1.res.2.weight"),
        "gap": ({k: v for k, v in fbcnn.items() if not k.startswith("m_body_encoder.0.")},
                r"bottom blocks are numbered \[1\], with gaps"),
        "no-up": ({k: v for k, v in fbcnn.items() if not k.startswith("m_up3.0.")}, "upsampling .m_up3.0. has no"),
        "no-down": ({k: v for k, v in fbcnn.items() if not k.startswith("m_down1.2.")},
                    r"lacks its first downsampling conv \(m_down1.2 or"),
        "odd-down": ({**fbcnn, "m_down1.2.weight": torch.zeros(8, 8, 2, 2)}, r"m_down1.2.weight is \(8, 8, 2, 2\)"),
        "odd-predictor": ({**fbcnn, "qf_pred.4.weight": torch.zeros(512, 256)}, "quality predictor reads 256"),
        "grey": ({**fbcnn, "m_head.weight": torch.zeros(8, 1, 3, 3)}, "FBCNN for 1-channel images"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
