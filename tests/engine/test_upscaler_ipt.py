"""IPT upscalers: detected from the header (width, token patch, layers, norms, MLP, positions and so the crop
size, each task's tail) and run by Marble's own implementation (the crop network and the published test code's
overlapping crops), compared with spandrel 0.4.2 on the same file and input; tiled and tiny inputs run;
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

# 12 features in 2x2 tokens: 48 wide, which IPT's fixed 12 heads divide.
_TINY = {"n_feats": 12, "patch_dim": 2, "num_heads": 12}
# name: (spandrel's keyword arguments, Marble's label, scale, input size).
VARIANTS = {
    # The published layout (MLP, positions, norms) in the colour range 0..255, 8 px crops; crops overlap on
    # both sides and the flush bottom / right crops sit off the grid.
    "ipt-x2": ({**_TINY, "patch_size": 8, "scale": [2], "num_layers": 1, "rgb_range": 255},
               "IPT 2x (12 features, 1 layers, 8 px crops)", 2, [19, 23]),
    # The pre-trained file's kind: several tasks (2x, 3x, 4x, 1x); the 4x one's tail and query run.
    "ipt-tasks": ({**_TINY, "patch_size": 12, "scale": [2, 3, 4, 1], "num_queries": 4, "num_layers": 2,
                   "rgb_range": 1}, "IPT 4x (12 features, 2 layers, 12 px crops, the 4x of 4 tasks)", 4, [14, 17]),
    # No MLP and no norms: the crop size from the positions alone, a 3x tail.
    "ipt-plain": ({**_TINY, "patch_size": 8, "scale": [3], "num_layers": 1, "rgb_range": 255, "mlp": False,
                   "no_norm": True}, "IPT 3x (12 features, 1 layers, 8 px crops)", 3, [12, 9]),
    # The MLP without positions: the crop size from the query embedding's width.
    "ipt-query": ({**_TINY, "patch_size": 8, "scale": [2], "num_layers": 1, "rgb_range": 255, "no_pos": True},
                  "IPT 2x (12 features, 1 layers, 8 px crops)", 2, [9, 11]),
    # Neither MLP nor positions: nothing records the crop size; spandrel's (the published) 48 px is used.
    "ipt-48": ({**_TINY, "patch_size": 48, "scale": [1], "num_layers": 1, "rgb_range": 255, "mlp": False,
                "no_pos": True}, "IPT 1x (12 features, 1 layers, 48 px crops)", 1, [50, 53]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-ipt")
    specs = {
        name: {"class": "IPT", "seed": 90 + seed, "input": size, "kwargs": kwargs, "keep": ["sub_mean.", "add_mean."]}
        for seed, (name, (kwargs, _, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_ipt_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="IPT", layout="ipt", scale=scale)


def test_ipt_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "ipt-x2.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=16, overlap=4))
    assert tiled.shape == (80, 96, 3) and tiled.std() > 1
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)  # under one crop: mirrored up, cropped


def test_damaged_ipt_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    x2, tasks = load_file(str(workdir / "ipt-x2.safetensors")), load_file(str(workdir / "ipt-tasks.safetensors"))
    cases = {
        "missing": ({k: v for k, v in x2.items() if k != "body.decoder.layers.0.norm3.bias"},
                    "tensors do not fit the IPT 2x .*body.decoder.layers.0.norm3.bias"),
        "layer-gap": ({k: v for k, v in tasks.items() if not k.startswith("body.decoder.layers.1.")},
                      "encoder and decoder hold layers"),
        "odd-tail": ({**x2, "tail.0.0.0.weight": torch.zeros(60, 12, 3, 3)}, "makes 60 channels from 12"),
        "grey": ({**x2, "head.0.0.weight": torch.zeros(12, 1, 3, 3)}, "for 1-channel images"),
        "no-query": ({k: v for k, v in x2.items() if k != "body.query_embed.weight"},
                     "looks like an IPT upscaler but lacks body.query_embed.weight"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
