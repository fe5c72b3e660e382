"""OmniSR upscalers: detected from the header (scale, width, groups and blocks, window, position table)
and run by Marble's own implementation, compared with spandrel 0.4.2 on the same file and input; a
pickled .pth through the safe conversion, upscaled tiled; damaged files refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.cli_runner import run_cli
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

_TINY = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 16}
# name: (spandrel's keyword arguments, Marble's label, scale). Tiny widths; the input 19 x 23 px (padded).
VARIANTS = {
    "omnisr-x4": ({**_TINY, "up_scale": 4, "block_num": 1, "res_num": 1, "window_size": 8},
                  "OmniSR 4x (16 features, 1x1 blocks, window 8)", 4),
    "omnisr-x2-two-groups-no-table": ({**_TINY, "up_scale": 2, "block_num": 1, "res_num": 2, "pe": False},
                                      "OmniSR 2x (16 features, 2x1 blocks, window 8)", 2),
    "omnisr-x3-window-4-two-blocks-no-bias": (
        {**_TINY, "up_scale": 3, "block_num": 2, "res_num": 1, "window_size": 4, "bias": False},
        "OmniSR 3x (16 features, 1x2 blocks, window 4)", 3,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-omnisr")
    specs = {
        name: {"class": "OmniSR", "seed": 30 + seed, "input": [19, 23], "kwargs": kwargs}
        for seed, (name, (kwargs, _, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_omnisr_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="OmniSR", layout="omnisr", scale=scale)


def test_a_pickled_omnisr_is_converted_and_upscales_tiled(reference, tmp_path):
    workdir, _ = reference
    where = str(tmp_path / "home")
    pth = tmp_path / "4x-omnisr-test.pth"
    torch.save(load_file(str(workdir / "omnisr-x4.safetensors")), pth)
    code, _, err = run_cli("upscalers", "import", str(pth), "--convert-pickle", "--home", where)
    assert code == 0, err
    code, out, _ = run_cli("upscalers", "list", "--home", where)
    assert "4x-omnisr-test" in out and "OmniSR 4x (16 features, 1x1 blocks, window 8)" in out
    network, info = load_upscaler(workdir / "omnisr-x4.safetensors")
    image = noise_image(48, 40)
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=8))
    # The tiles (edge ones smaller than a window, padded) run and join into the whole picture's size.
    assert tiled.shape == (160, 192, 3) and tiled.std() > 1
    # An input under 16 px (too small for the ESA gate's pooling unpadded) runs, padded, and is cropped back.
    with torch.inference_mode():
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 20, 28)


def test_flop_counters_left_in_a_published_file_are_ignored(reference, tmp_path):
    workdir, _ = reference
    omni = load_file(str(workdir / "omnisr-x4.safetensors"))
    counters = {"total_ops": torch.zeros(1, dtype=torch.float64), "total_params": torch.zeros(1, dtype=torch.float64),
                "residual_layer.0.esa.conv1.total_ops": torch.zeros(1, dtype=torch.float64)}  # fmt: skip
    save_file({**omni, **counters}, str(tmp_path / "counted.safetensors"))
    network, _ = load_upscaler(tmp_path / "counted.safetensors")
    source = torch.from_numpy(np.load(workdir / "omnisr-x4.input.npy"))
    with torch.inference_mode():
        got = network(source).numpy()
    expected = np.load(workdir / "omnisr-x4.output.npy")
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_damaged_omnisr_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    omni = load_file(str(workdir / "omnisr-x4.safetensors"))
    table = "residual_layer.0.residual_layer.0.layer.2.fn.rel_pos_bias.weight"
    cases = {
        "odd-table": ({**omni, table: torch.zeros(50, 4)}, "position table has 50 rows"),
        "odd-upsampler": ({**omni, "up.0.weight": torch.zeros(20, 16, 3, 3)}, "upsampler makes 20 channels"),
        "missing": ({k: v for k, v in omni.items() if k != "residual_layer.0.esa.conv3.bias"},
                    "tensors do not fit the OmniSR 4x .*residual_layer.0.esa.conv3.bias"),
        "truncated": ({k: v for k, v in omni.items() if not k.startswith("residual_layer.0.residual_layer.1.")},
                      "blocks \\[0\\] in its first group"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
