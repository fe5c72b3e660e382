"""ATD and ATD-light upscalers: detected from the header (scale, width, groups and blocks, heads, window,
dictionary size, reconstruction) and run by Marble's own implementation (SwinIR's window helpers, ATD's
dictionary and category attentions), compared with spandrel 0.4.2 on the same file and input, inputs not
a multiple of the window; tiled inputs run; damaged files refused by name."""

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

_SMALL = {"embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "num_tokens": 8,
          "reducted_dim": 4, "convffn_kernel_size": 5, "mlp_ratio": 2.0}  # fmt: skip
# name: (spandrel's keyword arguments, Marble's label, scale, input size). Inputs of 19 x 23 pad to 20 x 24
# (window 4: 480 pixels), so 256-pixel categories fill two runs, the second filled up with the mirrored tail.
VARIANTS = {
    # Classical 2x, two groups with different heads.
    "atd-x2": ({**_SMALL, "upscale": 2, "upsampler": "pixelshuffle"}, "ATD 2x (16 dims, 2x2 blocks)", 2, [19, 23]),
    # The same on an input under one window and one category (5 x 7 mirrored to 8 x 8: one 64-pixel run).
    "atd-x2-tiny": ({**_SMALL, "upscale": 2, "upsampler": "pixelshuffle"}, "ATD 2x (16 dims, 2x2 blocks)", 2,
                    [5, 7]),
    # Two pixel-shuffle stages, 3conv closings, no qkv bias, no token norm, window 8 (19 x 23 pads to 24 x 24),
    # a group of three blocks (the third unshifted, the last without the dictionary refinement).
    "atd-x4-3conv": ({"embed_dim": 24, "depths": [3], "num_heads": [3], "window_size": 8, "num_tokens": 16,
                      "reducted_dim": 6, "convffn_kernel_size": 3, "mlp_ratio": 1.5, "qkv_bias": False,
                      "patch_norm": False, "resi_connection": "3conv", "upscale": 4, "upsampler": "pixelshuffle"},
                     "ATD 4x (24 dims, 1x3 blocks)", 4, [19, 23]),
    # A 3x stage, saved without the mean colour (`no_norm`).
    "atd-x3-nomean": ({**_SMALL, "upscale": 3, "upsampler": "pixelshuffle", "norm": False},
                      "ATD 3x (16 dims, 2x2 blocks)", 3, [19, 23]),
    # ATD-light: 48 dims with the one-step upsampler, 128-pixel categories (four runs of 480 pixels).
    "atd-light-x4": ({**_SMALL, "embed_dim": 48, "num_heads": [4, 4], "upscale": 4,
                      "upsampler": "pixelshuffledirect"}, "ATD-light 4x (48 dims, 2x2 blocks)", 4, [19, 23]),
    # The one-step upsampler at another width: plain ATD, 256-pixel categories.
    "atd-direct-x2": ({**_SMALL, "upscale": 2, "upsampler": "pixelshuffledirect"}, "ATD 2x (16 dims, 2x2 blocks)",
                      2, [19, 23]),
    # The real-world tail (nearest 2x twice, 4x only) and groups of different depths, the second of one
    # block (its only block is its last: unshifted, no dictionary refinement).
    "atd-real-x4": ({**_SMALL, "depths": [3, 1], "upscale": 4, "upsampler": "nearest+conv"},
                    "ATD 4x (16 dims, 3+1 blocks)", 4, [19, 23]),
    # 1x restoration: the residual over the input.
    "atd-x1": ({**_SMALL, "upscale": 1, "upsampler": ""}, "ATD 1x (16 dims, 2x2 blocks)", 1, [19, 23]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-atd")
    specs = {
        name: {"class": "ATD", "seed": 70 + seed, "input": size, "kwargs": kwargs}
        for seed, (name, (kwargs, _, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_atd_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="ATD", layout="atd", scale=scale)


def test_atd_upscales_tiled_and_narrow_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "atd-x4-3conv.safetensors")
    image = Image.fromarray((np.random.default_rng(0).random((30, 37, 3)) * 255).astype(np.uint8))
    # 20 px tiles: neither they nor the edge tiles are whole 8 px windows.
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=4))
    assert tiled.shape == (120, 148, 3) and tiled.std() > 1
    with torch.inference_mode():
        # 3 px mirrored up to a window of 8 needs two mirrorings (spandrel's one would leave it short).
        assert network(torch.rand(1, 3, 3, 11)).shape == (1, 3, 12, 44)


def test_damaged_atd_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    atd = load_file(str(workdir / "atd-x2.safetensors"))
    block = "layers.1.residual_group.layers.0."
    cases = {
        "missing": ({k: v for k, v in atd.items() if k != block + "attn_aca.proj.weight"},
                    f"tensors do not fit the ATD 2x .*{block}attn_aca.proj.weight"),
        "gap": ({"layers.2." + k[9:] if k.startswith("layers.1.") else k: v for k, v in atd.items()},
                r"groups are not numbered 0..1 \(found \[0, 2\]\)"),
        "no-block": ({k: v for k, v in atd.items() if not k.startswith("layers.1.residual_group.layers.0.")},
                     "group 1 has blocks \\[1\\], with gaps"),
        "odd-heads": ({**atd, block + "attn_win.relative_position_bias_table": torch.zeros(49, 3)},
                      "group 1 has a position table 49 x 3"),
        "fixed-size": ({**atd, "absolute_pos_embed": torch.zeros(1, 4096, 16)}, "absolute position embedding"),
        "odd-upsampler": ({**atd, "upsample.0.weight": torch.zeros(100, 64, 3, 3)}, "upsampling conv makes 100"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
