"""RetinexFormer low-light enhancers: detected from the header (stages, width, block counts) and run by Marble's
own implementation, compared with spandrel 0.4.2 on the same file and input (sizes off the 8 px padding unit
compared with spandrel's own padding for the model's size requirement); tiled and tiny inputs run; damaged
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

# name: (spandrel's keyword arguments, Marble's label, input size, padded).
VARIANTS = {
    # The published shape (one stage, 1-2-2 blocks), narrow, on the 8 px unit: the network as is.
    "retinexformer": ({"n_feat": 8, "stage": 1, "num_blocks": [1, 2, 2]},
                      "RetinexFormer 1x low-light (8 features, 1-2-2 blocks)", [16, 24], False),
    # Three stages (spandrel's default), off the unit: padded as spandrel pads.
    "retinexformer-3s": ({"n_feat": 12, "stage": 3, "num_blocks": [1, 1, 1]},
                         "RetinexFormer 1x low-light (12 features, 1-1-1 blocks, 3 stages)", [19, 13], True),
    # Every level's count different, so a level read from the wrong blocks cannot load.
    "retinexformer-2s": ({"n_feat": 4, "stage": 2, "num_blocks": [2, 1, 3]},
                         "RetinexFormer 1x low-light (4 features, 2-1-3 blocks, 2 stages)", [24, 17], True),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-retinexformer")
    specs = {
        name: {"class": "RetinexFormer", "seed": 140 + seed, "input": size, "kwargs": kwargs, "padded": padded}
        for seed, (name, (kwargs, _, size, padded)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_retinexformer_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="RetinexFormer",
                           layout="retinexformer", scale=1)  # fmt: skip


def test_retinexformer_enhances_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "retinexformer.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=6))
    assert tiled.shape == (40, 48, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Under the two downsamplings' 4 px: mirrored up to 8 px, then cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_damaged_retinexformer_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    rf = load_file(str(workdir / "retinexformer.safetensors"))
    block = "body.0.denoiser.encoder_layers.1.0.blocks.0."
    cases = {
        "missing": ({k: v for k, v in rf.items() if k != "body.0.denoiser.decoder_layers.1.2.blocks.0.0.proj.bias"},
                    "tensors do not fit the RetinexFormer 1x low-light .*decoder_layers.1.2.blocks.0.0.proj.bias"),
        "gap": ({k: v for k, v in rf.items() if not k.startswith(block)}, "blocks under .*encoder_layers.1.0.blocks "
                r"are numbered \[1\], with gaps"),
        "no-mapping": ({k: v for k, v in rf.items() if k != "body.0.denoiser.mapping.weight"},
                       "lacks body.0.denoiser.mapping.weight"),
        "grey": ({**rf, "body.0.denoiser.embedding.weight": torch.zeros(8, 1, 3, 3)}, "for 1-channel images"),
        "odd-width": ({**rf, "body.0.denoiser.embedding.weight": torch.zeros(6, 3, 3, 3),
                       "body.0.estimator.conv1.weight": torch.zeros(6, 4, 1, 1)}, "6 features wide"),
        "three-levels": ({**rf, "body.0.denoiser.encoder_layers.2.1.weight": torch.zeros(64, 32, 4, 4)},
                         "with 3 downsampling levels"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
