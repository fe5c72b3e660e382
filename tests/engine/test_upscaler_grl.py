"""GRL upscalers: detected from the header (scale, width, stages and blocks, heads, qkv and anchor projections,
closing convs, reconstruction; window, stripes and anchor factor from the position buffers where the file
has them, the published configurations otherwise) and run by Marble's own implementation, compared with
spandrel 0.4.2 on the same file and input; tiled and tiny inputs run; damaged files refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)


def _grl(**kwargs: object) -> dict:
    # Four blocks a stage: windows shifted in blocks 0 and 2, stripes transposed in 1 and 3, shifted in 2 and 3.
    base = {"embed_dim": 32, "depths": [4], "num_heads_window": [2], "num_heads_stripe": [2], "mlp_ratio": 2.0,
            "stripe_shift": True, "window_size": 32, "stripe_size": [64, 64], "anchor_window_down_factor": 4}
    return base | kwargs  # fmt: skip


# name: (spandrel's keyword arguments, Marble's label, scale, input size, spec extras).
VARIANTS = {
    # Classical pixel shuffle, pooled anchors (factor 4 assumed), linear qkv; the published 32/64x64 sizes
    # assumed; a 19x23 input too small to mirror up to 64: zero padding.
    "grl-x4": (_grl(upscale=4, upsampler="pixelshuffle"),
               "GRL-T 4x (32 dims, 1x4 blocks, window 32, stripes 64x64)", 4, [19, 23], {}),
    # One-step pixel shuffle, a one-step conv anchor (factor 4 from its 5x5 kernel), separable qkv without
    # bias, 3conv closings, two stages; a 40x44 input mirrored up to 64x64.
    "grl-x2-direct": (_grl(upscale=2, upsampler="pixelshuffledirect", depths=[2, 2], num_heads_window=[2, 4],
                           num_heads_stripe=[4, 2], anchor_proj_type="conv2d",
                           qkv_proj_type="separable_conv", qkv_bias=False, conv_type="3conv"),
                      "GRL-T 2x (32 dims, 2x2 blocks, window 32, stripes 64x64)", 2, [40, 44], {}),
    # 1x restoration (window 8, stripes 8x8), a one-step separable-conv anchor (factor 4 from its kernel),
    # GRL-B's conv branch, 1x1 closings, three window heads.
    "grl-x1": (_grl(upscale=1, upsampler="", embed_dim=36, num_heads_window=[3], window_size=8,
                    stripe_size=[8, 8], anchor_proj_type="separable_conv", local_connection=True,
                    conv_type="1conv1x1"),
               "GRL-T 1x restoration (36 dims, 1x4 blocks, window 8, stripes 8x8)", 1, [19, 23], {}),
    # Real-world 4x (nearest + conv; window 16, stripes 32x64: transposed in odd blocks), anchors in two
    # patch-merging steps (factor 4), linear closings.
    "grl-x4-nearest": (_grl(upscale=4, upsampler="nearest+conv", window_size=16, stripe_size=[32, 64],
                            anchor_proj_type="patchmerging", anchor_one_stage=False, conv_type="linear"),
                       "GRL-T 4x (32 dims, 1x4 blocks, window 16, stripes 32x64)", 4, [19, 23], {}),
    # A file with the published code's position buffers: window 8, stripes 16x8, pooled anchors at factor 2,
    # all read from them; two-step separable-conv anchors are another variant of the same file.
    "grl-x2-buffers": (_grl(upscale=2, upsampler="pixelshuffle", window_size=8, stripe_size=[16, 8],
                            anchor_window_down_factor=2),
                       "GRL-T 2x (32 dims, 1x4 blocks, window 8, stripes 16x8)", 2, [19, 23], {"buffers": True}),
    "grl-x3-steps": (_grl(upscale=3, upsampler="pixelshuffle", window_size=8, stripe_size=[8, 16],
                          anchor_proj_type="separable_conv", anchor_one_stage=False, depths=[2]),
                     "GRL-T 3x (32 dims, 1x2 blocks, window 8, stripes 8x16)", 3, [19, 23], {"buffers": True}),
    # One patch-merging step (factor 2, from the buffers) and convs in two halving steps (factor 4).
    "grl-x2-merge": (_grl(upscale=2, upsampler="pixelshuffle", window_size=8, stripe_size=[8, 8], depths=[2],
                          anchor_proj_type="patchmerging", anchor_window_down_factor=2),
                     "GRL-T 2x (32 dims, 1x2 blocks, window 8, stripes 8x8)", 2, [19, 23], {"buffers": True}),
    "grl-x2-conv-steps": (_grl(upscale=2, upsampler="pixelshuffle", window_size=8, stripe_size=[8, 8], depths=[2],
                               anchor_proj_type="conv2d", anchor_one_stage=False),
                          "GRL-T 2x (32 dims, 1x2 blocks, window 8, stripes 8x8)", 2, [19, 23], {"buffers": True}),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-grl")
    specs = {
        name: {"class": "GRL", "seed": 70 + seed, "input": size, "kwargs": kwargs, **extra}
        for seed, (name, (kwargs, _, _, size, extra)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_grl_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="GRL", layout="grl", scale=scale)


def test_grl_upscales_tiled_and_tiny_inputs(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "grl-x2-buffers.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=8))
    assert tiled.shape == (80, 96, 3) and tiled.std() > 1
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 1, 3)).shape == (1, 3, 2, 6)  # padded with zeros, cropped back
        # In bfloat16 too: the position tables and masks follow the network's type.
        assert network.to(torch.bfloat16)(torch.rand(1, 3, 19, 23, dtype=torch.bfloat16)).shape == (1, 3, 38, 46)


def test_damaged_grl_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    grl = load_file(str(workdir / "grl-x4.safetensors"))
    stripe = "layers.0.blocks.0.attn.stripe_attn.attn_transform1.logit_scale"
    merge = {k: v for k, v in grl.items() if not k.startswith("layers.0.blocks.0.attn.anchor.body.")}
    cases = {
        "missing": ({k: v for k, v in grl.items() if k != "layers.0.blocks.3.mlp.fc2.bias"},
                    "tensors do not fit the GRL-T 4x .*layers.0.blocks.3.mlp.fc2.bias"),
        "gap": ({k: v for k, v in grl.items() if not k.startswith("layers.0.blocks.1.")},
                "stage 0 has blocks \\[0, 2, 3\\], with gaps"),
        "no-anchor": ({k: v for k, v in merge.items() if ".anchor." not in k}, "lacks layers.0.blocks.0.attn.anchor"),
        # One patch-merging step: the down factor is only in position buffers this file lacks.
        "one-merge": ({k: v for k, v in grl.items() if ".anchor.body.0.reduction.bias" not in k},
                      "one patch-merging step: the file does not say the down factor"),
        "odd-upsampler": ({**grl, "upsample.up.0.weight": torch.zeros(100, 64, 3, 3)}, "upsampling conv makes 100"),
        "odd-heads": ({**grl, stripe: torch.zeros(3, 1, 1)}, "GRL layout Marble cannot run"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)


def test_grl_files_saved_by_the_training_wrapper_load(reference, tmp_path):
    """`model.`-prefixed names, and the blind-SR file's generator under `model_g.` beside other networks'
    tensors: the same network, the same output as the plain file."""
    workdir, _ = reference
    grl = load_file(str(workdir / "grl-x1.safetensors"))
    source = torch.from_numpy(np.load(workdir / "grl-x1.input.npy"))
    expected = np.load(workdir / "grl-x1.output.npy")
    variants = {
        "wrapped": {f"model.{k}": v for k, v in grl.items()},
        "generator": {f"model_g.{k}": v for k, v in grl.items()} | {"model_d.conv0.weight": torch.zeros(8, 3, 3, 3)},
    }
    for case, tensors in variants.items():
        path = tmp_path / f"{case}.safetensors"
        save_file(tensors, str(path))
        network, info = load_upscaler(path)
        assert info.label == "GRL-T 1x restoration (36 dims, 1x4 blocks, window 8, stripes 8x8)"
        with torch.inference_mode():
            assert np.abs(network(source).numpy() - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
