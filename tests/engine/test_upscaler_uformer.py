"""Uformer restoration networks: detected from the header (width, per-layer blocks, heads, windows and
feed-forward widths, projection, feed-forward kind, modulators) and run by Marble's own implementation,
compared with spandrel 0.4.2 on the same file and input (sizes off the square 128 px unit compared with
spandrel's own padding for the model's size requirement); tiled and tiny inputs run; damaged files refused by
name."""

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
    # The published kind (linear projections, LeFF), narrow, two blocks where a shifted window matters, on the
    # square 128 px unit: the network as is.
    "uformer": ({"embed_dim": 4, "depths": [2, 1, 1, 1, 2, 1, 1, 1, 2], "num_heads": [1, 2, 2, 4, 4, 4, 2, 2, 1],
                 "mlp_ratio": 2.0},
                "Uformer 1x restoration (4 features, 2-1-1-1-2-1-1-1-2 blocks)", [128, 128], False),
    # Conv projections, FastLeFF and the modulator, off the unit (by less than each side, so spandrel's one
    # mirroring reaches as far as Marble's): padded to a square as spandrel pads.
    "uformer-conv": ({"embed_dim": 4, "depths": [1, 2, 1, 1, 1, 1, 1, 2, 1], "num_heads": [1, 1, 2, 2, 4, 4, 2, 1, 1],
                      "mlp_ratio": 3.0, "token_projection": "conv", "token_mlp": "fastleff", "modulator": True},
                     "Uformer 1x restoration (4 features, 1-2-1-1-1-1-1-2-1 blocks, conv projections, FastLeFF, "
                     "modulator)", [100, 70], True),
    # Plain MLP, unbiased linear projections, 4 px windows, both modulators, wider than tall.
    "uformer-mlp": ({"embed_dim": 4, "depths": [1, 1, 1, 2, 1, 2, 1, 1, 1], "num_heads": [2, 2, 2, 2, 2, 2, 2, 2, 2],
                     "win_size": 4, "mlp_ratio": 2.0, "qkv_bias": False, "token_mlp": "mlp", "modulator": True,
                     "cross_modulator": True},
                    "Uformer 1x restoration (4 features, 1-1-1-2-1-2-1-1-1 blocks, plain MLP, modulator, "
                    "cross modulator)", [66, 90], True),
    # 16 px windows: at the bottleneck the window covers the 256 px training crop's side there, so the published
    # construction dropped its shift; the square unit is 256.
    "uformer-w16": ({"embed_dim": 4, "depths": [1, 1, 1, 1, 2, 1, 1, 1, 1], "num_heads": [1, 1, 1, 1, 2, 2, 1, 1, 1],
                     "win_size": 16, "mlp_ratio": 2.0},
                    "Uformer 1x restoration (4 features, 1-1-1-1-2-1-1-1-1 blocks)", [256, 256], False),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-uformer")
    specs = {
        name: {"class": "Uformer", "seed": 170 + seed, "input": size, "kwargs": kwargs, "padded": padded}
        for seed, (name, (kwargs, _, size, padded)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_uformer_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, _, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="Uformer", layout="uformer", scale=1)


def test_uformer_restores_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "uformer.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=6))
    assert tiled.shape == (40, 48, 3) and tiled.std() > 1
    with torch.inference_mode():
        # Mirrored up to a 128 px square (repeatedly when tiny), then cropped back.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
        assert network(torch.rand(1, 3, 1, 2)).shape == (1, 3, 1, 2)


def test_damaged_uformer_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    uf = load_file(str(workdir / "uformer.safetensors"))
    table = "encoderlayer_1.blocks.0.attn.relative_position_bias_table"
    cases = {
        "missing": ({k: v for k, v in uf.items() if k != "decoderlayer_2.blocks.0.mlp.linear2.0.bias"},
                    "tensors do not fit the Uformer 1x restoration .*decoderlayer_2.blocks.0.mlp.linear2.0.bias"),
        "gap": ({k: v for k, v in uf.items() if not k.startswith("conv.blocks.0.")},
                r"blocks under conv are numbered \[1\], with gaps"),
        "no-output": ({k: v for k, v in uf.items() if k != "output_proj.proj.0.weight"},
                      "lacks output_proj.proj.0.weight"),
        "grey": ({**uf, "input_proj.proj.0.weight": torch.zeros(4, 1, 3, 3)}, "for 1-channel images"),
        "odd-table": ({**uf, table: torch.zeros(200, 2)}, "position table under encoderlayer_1 has 200 rows"),
        "heads": ({**uf, table: torch.zeros(225, 3)}, "encoderlayer_1 has 3 heads for 8 features"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
