"""DRCT upscalers: detected from the header (scale, width, groups, window, growth, per-block heads) and run
by Marble's own implementation, compared with spandrel 0.4.2 on the same file and a window-multiple
input (spandrel's DRCT does not pad); other sizes run padded and cropped; a damaged file refused by name."""

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

# name: (spandrel's keyword arguments, input size, Marble's label, scale). Tiny widths.
VARIANTS = {
    # 18 wide, gc 8, 3 heads: the blocks are 18, 26, 34, 42, 50 wide with 3, 1, 2, 3, 1 heads; window 8
    # shifted (img_size 16 > window saves the shift's mask), the last two blocks' MLP ratio 1.
    "drct-x4-shifted": ({"embed_dim": 18, "gc": 8, "depths": (6, 6), "num_heads": (3, 2), "window_size": 8,
                         "img_size": 16, "upscale": 4, "upsampler": "pixelshuffle"},
                        (16, 24), "DRCT 4x (18 dims, 2 groups, window 8)", 4),
    # Trained at one window (img_size = window): no shift, no mask; no qkv bias, no token norm, no body conv.
    "drct-x2-unshifted-bare": ({"embed_dim": 16, "gc": 8, "depths": (6,), "num_heads": (2,), "window_size": 4,
                                "img_size": 4, "upscale": 2, "upsampler": "pixelshuffle", "mlp_ratio": 1.5,
                                "qkv_bias": False, "patch_norm": False, "resi_connection": "identity"},
                               (12, 20), "DRCT 2x (16 dims, 1 groups, window 4)", 2),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-drct")
    specs = {
        name: {"class": "DRCT", "seed": 50 + seed, "input": list(size), "kwargs": kwargs}
        for seed, (name, (kwargs, size, _, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_drct_is_detected_and_matches_spandrel(reference, paths, name):
    _, (height, width), label, scale = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="DRCT", layout="drct", scale=scale)
    network, _ = load_upscaler(reference[0] / f"{name}.safetensors")
    source = torch.from_numpy(np.load(reference[0] / f"{name}.input.npy"))
    with torch.inference_mode():
        # Not a whole number of windows: padded, run, cropped back to the input's size times the scale.
        odd = network(source[:, :, :-3, :-5])
    assert odd.shape == (1, 3, (height - 3) * scale, (width - 5) * scale) and torch.isfinite(odd).all()


def test_a_drct_upscales_in_tiles_of_any_size(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "drct-x4-shifted.safetensors")
    image = Image.fromarray((np.random.default_rng(0).random((30, 37, 3)) * 255).astype(np.uint8))
    # 20 px tiles: neither they nor the edge tiles are whole 8 px windows.
    tiled = np.asarray(upscale(network, info.scale, image, tile=20, overlap=4))
    assert tiled.shape == (120, 148, 3) and tiled.std() > 1


def test_a_damaged_drct_is_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    drct = load_file(str(workdir / "drct-x4-shifted.safetensors"))
    table = "layers.1.swin3.attn.relative_position_bias_table"
    cases = {
        "odd-heads": ({**drct, table: torch.zeros(225, 4)}, "block 3 of group 1 has a position table 225 x 4"),
        "missing": ({k: v for k, v in drct.items() if k != "layers.0.adjust3.bias"},
                    "tensors do not fit the DRCT 4x .*layers.0.adjust3.bias"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
