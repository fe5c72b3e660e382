"""SeemoRe upscalers: detected from the header (scale, width, groups, each expert's rank, striped kernel, the
SeemoRe-L settings) and run by Marble's own implementation, compared with spandrel 0.4.2 on the same file
and input; tiled, tiny and batched inputs run; damaged files refused by name."""

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

# name: (spandrel's keyword arguments, Marble's label, scale). Tiny widths, but SeemoRe-L's real size: its
# settings (no channel shuffle, one calibration shrink) are told by 16 groups of 48 features.
VARIANTS = {
    # Ranks 2, 3, 4 (the "linear" series), channel shuffle, two calibration shrinks, kernel 11.
    "seemore-x4": ({"scale": 4, "num_experts": 3, "num_layers": 2, "embedding_dim": 16},
                   "SeemoRe 4x (2 groups, 16 features, 3 experts)", 4),  # fmt: skip
    # Ranks 2, 4, 8, 16 (the "exp" series), a 7-wide striped kernel.
    "seemore-x2-exp": ({"scale": 2, "num_experts": 4, "num_layers": 1, "embedding_dim": 12, "lr_space": "exp",
                        "global_kernel_size": 7}, "SeemoRe 2x (1 group, 12 features, 4 experts)", 2),  # fmt: skip
    # Ranks 2, 4, 6 (the "double" series) at an odd scale.
    "seemore-x3-double": ({"scale": 3, "num_experts": 3, "num_layers": 1, "embedding_dim": 16,
                           "lr_space": "double"}, "SeemoRe 3x (1 group, 16 features, 3 experts)", 3),  # fmt: skip
    # SeemoRe-L's shape: no shuffle, one shrink (what spandrel reads for 16 groups of 48 features).
    "seemore-large": ({"scale": 2, "num_experts": 2, "num_layers": 16, "embedding_dim": 48, "use_shuffle": False,
                       "recursive": 1}, "SeemoRe 2x (16 groups, 48 features, 2 experts)", 2),  # fmt: skip
    # One expert, restoration at 1x.
    "seemore-x1": ({"scale": 1, "num_experts": 1, "num_layers": 1, "embedding_dim": 8},
                   "SeemoRe 1x (1 group, 8 features, 1 expert)", 1),  # fmt: skip
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-seemore")
    specs = {
        name: {"class": "SeemoRe", "seed": 90 + seed, "input": [19, 23], "kwargs": kwargs}
        for seed, (name, (kwargs, _, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_seemore_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="SeemoRe", layout="seemore",
                           scale=scale)  # fmt: skip


def test_seemore_upscales_tiled_tiny_and_batched_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "seemore-x4.safetensors")
    tiled = np.asarray(upscale(network, info.scale, noise_image(48, 40), tile=24, overlap=8))
    assert tiled.shape == (160, 192, 3) and tiled.std() > 1
    images = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        # Under the 16 px two calibration shrinks need: padded and cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 20, 28)
        # Each image of a batch is routed to its own expert: the batch gives what each gives alone.
        alone = torch.cat([network(image[None]) for image in images])
        assert torch.allclose(network(images), alone, atol=1e-5)


def test_damaged_seemore_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    seemore = load_file(str(workdir / "seemore-x4.safetensors"))
    expert, second = (f"body.{group}.local_block.block.moe_layer.experts.{index}.conv_{conv}.weight"
                      for group, index, conv in ((1, 2, 3), (0, 1, 1)))  # fmt: skip
    cases = {
        "missing": ({k: v for k, v in seemore.items() if k != expert}, f"tensors do not fit the SeemoRe 4x .*{expert}"),
        "gap": ({k: v for k, v in seemore.items() if not k.startswith("body.0.")} | {
                 k: v for k, v in seemore.items() if k.startswith("body.0.local_block.block.moe_layer.experts")} | {
                 "body.0.global_block.block.attn.conv.0.weight":
                     seemore["body.0.global_block.block.attn.conv.0.weight"]},
                "lacks body.0.local_block.norm_1.weight"),
        "expert-gap": ({k: v for k, v in seemore.items() if k != second},
                   r"experts \[0, 2\]"),
        "odd-upsampler": ({**seemore, "upsampler.0.weight": torch.zeros(50, 16, 3, 3)}, "makes 50 channels"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
