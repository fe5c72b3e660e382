"""FFTformer deblurring networks: detected from the header (width, block counts, refinement, feed-forward widths,
biases) and run by Marble's own implementation, compared with spandrel 0.4.2 on the same file and input (a
size off the 32 px padding unit compared with spandrel's own padding for the model's size requirement);
tiled and tiny inputs run; damaged files refused by name."""

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
    # The published layout (3x feed-forward, no biases), narrow, on the 32 px unit: the network as is.
    "fftformer": ({"dim": 8, "num_blocks": [1, 1, 2], "num_refinement_blocks": 1, "ffn_expansion_factor": 3},
                  "FFTformer 1x deblur (8 features, 1-1-2 blocks, 1 refinement)", [32, 64], False),
    # Biases on, a fractional feed-forward factor, every level's count different, the published refinement
    # count (not in the label), off the unit: padded as spandrel pads.
    "fftformer-bias": ({"dim": 4, "num_blocks": [2, 1, 3], "num_refinement_blocks": 4, "ffn_expansion_factor": 2.5,
                        "bias": True},
                       "FFTformer 1x deblur (4 features, 2-1-3 blocks)", [36, 23], True),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-fftformer")
    specs = {
        name: {"class": "FFTformer", "seed": 160 + seed, "input": size, "kwargs": kwargs, "padded": padded}
        for seed, (name, (kwargs, _, size, padded)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_fftformer_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="FFTformer", layout="fftformer",
                           scale=1)  # fmt: skip


def test_fftformer_deblurs_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "fftformer.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=24, overlap=6))
    assert tiled.shape == (40, 48, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Off the 32 px unit: mirrored up to it (repeatedly when tiny), then cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_damaged_fftformer_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    ff = load_file(str(workdir / "fftformer.safetensors"))
    cases = {
        "missing": ({k: v for k, v in ff.items() if k != "decoder_level2.0.attn.project_out.weight"},
                    "tensors do not fit the FFTformer 1x deblur .*decoder_level2.0.attn.project_out.weight"),
        "gap": ({k: v for k, v in ff.items() if not k.startswith("encoder_level3.0.")},
                r"blocks under encoder_level3 are numbered \[1\], with gaps"),
        "no-output": ({k: v for k, v in ff.items() if k != "output.weight"}, "lacks output.weight"),
        "grey": ({**ff, "patch_embed.proj.weight": torch.zeros(8, 1, 3, 3)}, "for 1-channel images"),
        "unmirrored": ({k: v for k, v in ff.items() if not k.startswith("decoder_level3.1.")},
                       "decoder level 3 has 1 blocks for the encoder's 2"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
