"""AuraSR upscalers: detected from the header (level widths, down levels and so the scale, attention levels and
depths, kernel banks, the style network) and run by Marble's own implementation, compared with spandrel 0.4.2
on the same file and input with the same random draws (the network jitters its input and draws its style
noise; spandrel's child seeds torch as Marble's generator is seeded); inputs off the 64 px tile mirrored up to
it as spandrel pads them; tiled and tiny inputs run; damaged files refused by name."""

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

# The published model's settings that are not in the file: fused attention, 8 heads, skips at 0.4.
_FIXED = {"image_size": None, "input_image_size": None, "flash_attn": True, "self_attn_heads": 8,
          "skip_connect_scale": 0.4}  # fmt: skip
_X4 = _FIXED | {"dim": 4, "style_network": {"dim_in": 8, "dim_out": 32, "depth": 2},
                "up_dim_mults": (1, 2, 4, 8, 16), "down_dim_mults": (4, 8, 16),
                "full_attn": (False, False, False, True, True), "attn_depths": (2, 2, 2, 1, 2), "mid_attn_depth": 1,
                "self_attn_dim_head": 2, "num_conv_kernels": 2}  # fmt: skip
# name: (spandrel's keyword arguments, Marble's label, scale, input size, padded).
VARIANTS = {
    # The published layout, narrow: three downs (4x), attention on the two deepest up levels, 64 px (no padding).
    "aurasr-x4": (_X4, "AuraSR 4x (GigaGAN, 4 features)", 4, [64, 64], False),
    # Three kernels per bank, a one-layer style network, wider heads, other depths; 59 x 62 px, which both
    # spandrel and Marble mirror up to 64.
    "aurasr-x4-odd": (_X4 | {"attn_depths": (2, 2, 2, 2, 1), "mid_attn_depth": 2, "num_conv_kernels": 3,
                             "self_attn_dim_head": 4, "style_network": {"dim_in": 8, "dim_out": 32, "depth": 1}},
                      "AuraSR 4x (GigaGAN, 4 features)", 4, [59, 62], True),
    # Four downs: 2x (spandrel reads the scale from the style widths' ratio, 2 here as the levels make it), with
    # attention on the two deepest down levels too (a flag per level pairs down level L with up level 4 - L:
    # on the first levels it would attend over every pixel of the output, too big for a test).
    "aurasr-x2-attn": (_X4 | {"down_dim_mults": (2, 4, 8, 16), "full_attn": (False, False, True, True, True),
                              "attn_depths": (1, 1, 1, 2, 1),
                              "style_network": {"dim_in": 8, "dim_out": 16, "depth": 2}},
                       "AuraSR 2x (GigaGAN, 4 features)", 2, [64, 64], False),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-aurasr")
    specs = {
        name: {"class": "AuraSR", "seed": 140 + seed, "input": size, "kwargs": kwargs, "padded": padded,
               "call_seed": 0}  # Marble's generator seed (build_aurasr's default)
        for seed, (name, (kwargs, _, _, size, padded)) in enumerate(VARIANTS.items())
    }  # fmt: skip
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_aurasr_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="AuraSR", layout="aurasr", scale=scale)


def test_aurasr_is_fed_64px_tiles_and_runs_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "aurasr-x4.safetensors")
    seen, inner = [], []  # what upscale() feeds it; what its layers then see
    network.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    network.init_conv.register_forward_pre_hook(lambda module, args: inner.append(tuple(args[0].shape[-2:])))
    image = Image.fromarray((np.random.default_rng(0).random((120, 112, 3)) * 255).astype(np.uint8))
    # The default tile (256) and overlap (16) too big for it: upscale() cuts 64 px tiles, overlaps included.
    tiled = np.asarray(upscale(network, info.scale, image))
    assert tiled.shape == (480, 448, 3) and tiled.std() > 1
    assert len(seen) == 9 and max(max(size) for size in seen) == 64 and (64, 64) in seen
    assert set(inner) == {(64, 64)}  # the smaller edge tiles mirrored up to the trained size
    with torch.inference_mode():
        # Mirrored up to the 64 px tile, then cropped back; the same draws each run.
        small = network(torch.rand(1, 3, 5, 7))
        assert small.shape == (1, 3, 20, 28)
        assert set(inner) == {(64, 64)}
        source = torch.rand(1, 3, 16, 16)
        assert torch.equal(network(source), network(source))
        # Larger than the tile it runs whole, padded to its levels' unit: 16 px for the four-down 2x model.
        two, _ = load_upscaler(workdir / "aurasr-x2-attn.safetensors")
        assert two(torch.rand(1, 3, 72, 66)).shape == (1, 3, 144, 132)


def test_damaged_aurasr_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    aura = load_file(str(workdir / "aurasr-x4.safetensors"))
    cases = {
        "missing": ({k: v for k, v in aura.items() if k != "ups.2.0.3.block2.proj.weights"},
                    "tensors do not fit the AuraSR 4x .*ups.2.0.3.block2.proj.weights"),
        "gap": ({k: v for k, v in aura.items() if not k.startswith("downs.1.")}, r"down levels are numbered \[0, 2\]"),
        "no-rgb": ({k: v for k, v in aura.items() if k != "final_to_rgb.weight"}, "lacks final_to_rgb.weight"),
        "one-kernel": ({**aura, "mid_block1.block1.proj.weights": torch.zeros(1, 64, 64, 3, 3)},
                       "1 kernel per convolution"),
        "odd-heads": ({**aura, "mid_attn.layers.0.0.to_out.weight": torch.zeros(64, 12, 1, 1)},
                      "12 wide, which 8 heads do not split"),
        "odd-mid": ({**aura, "downs.2.1.1.weight": torch.zeros(48, 32, 3, 3)}, r"deepest down width \(48\)"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
