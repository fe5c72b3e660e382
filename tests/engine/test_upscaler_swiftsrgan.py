"""Swift-SRGAN upscalers: detected from the header (scale, width, residual blocks) and run by Marble's own
implementation, compared with spandrel 0.4.2 on the same file and input; tiled and tiny inputs run;
damaged files refused by name."""

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

# name: (spandrel's keyword arguments, Marble's label, scale, input size).
VARIANTS = {
    "swift-x4": ({"num_channels": 16, "num_blocks": 2, "upscale_factor": 4},
                 "Swift-SRGAN 4x (2 blocks, 16 features)", 4, [12, 15]),
    "swift-x8": ({"num_channels": 8, "num_blocks": 1, "upscale_factor": 8},
                 "Swift-SRGAN 8x (1 block, 8 features)", 8, [6, 7]),
    # No upsampling stage at all: a 1x restoration model.
    "swift-x1": ({"num_channels": 12, "num_blocks": 3, "upscale_factor": 1},
                 "Swift-SRGAN 1x (3 blocks, 12 features)", 1, [16, 13]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-swiftsrgan")
    specs = {
        name: {"class": "SwiftSRGAN", "seed": 90 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_swiftsrgan_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _ = VARIANTS[name]
    check_against_spandrel(
        *reference, paths, name, label=label, architecture="SwiftSRGAN", layout="swiftsrgan", scale=scale
    )


def test_swiftsrgan_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "swift-x4.safetensors")
    image = Image.fromarray((np.random.default_rng(0).random((40, 47, 3)) * 255).astype(np.uint8))
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=8))
    assert tiled.shape == (160, 188, 3) and tiled.std() > 1
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 4, 8)


def test_damaged_swiftsrgan_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    swift = load_file(str(workdir / "swift-x4.safetensors"))
    cases = {
        # The PReLU the published network builds but never applies: its weight must still be there.
        "missing": ({k: v for k, v in swift.items() if k != "residual.1.block2.act.weight"},
                    "tensors do not fit the Swift-SRGAN 4x .*residual.1.block2.act.weight"),
        "gap": ({k: v for k, v in swift.items() if not k.startswith("residual.0.")},
                "residual blocks are \\[1\\], with gaps"),
        "no-pointwise": ({k: v for k, v in swift.items() if k != "initial.cnn.pointwise.weight"},
                         "lacks initial.cnn.pointwise.weight"),
        "grey": ({**swift, "initial.cnn.depthwise.weight": torch.zeros(1, 1, 9, 9)}, "for 1-channel images"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
