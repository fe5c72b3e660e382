"""Real-CUGAN upscalers: detected from the header (2x, 3x, 4x, pro, fast) and run by Marble's own
implementation, compared with spandrel 0.4.2 on the same file and input (sizes that are multiples of
nothing, so the internal padding and cropping matter); tiled, tiny and thin inputs run; damaged files
refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

# name: (spandrel's keyword arguments, Marble's label, scale, input size).
VARIANTS = {
    "cugan-x2": ({"scale": 2}, "Real-CUGAN 2x", 2, [37, 41]),  # odd sides: padded to even, cropped back
    "cugan-x2-pro": ({"scale": 2, "pro": True}, "Real-CUGAN 2x (pro)", 2, [36, 34]),
    "cugan-x3": ({"scale": 3}, "Real-CUGAN 3x", 3, [33, 38]),  # 3x pads to multiples of 4
    "cugan-x3-pro": ({"scale": 3, "pro": True}, "Real-CUGAN 3x (pro)", 3, [29, 31]),
    "cugan-x4": ({"scale": 4}, "Real-CUGAN 4x", 4, [35, 23]),
    "cugan-x4-pro": ({"scale": 4, "pro": True}, "Real-CUGAN 4x (pro)", 4, [31, 37]),
    # spandrel's fast network fails unless the sides are multiples of 4 (Marble's pads them).
    "cugan-x2-fast": ({"scale": 2, "fast": True}, "Real-CUGAN 2x (fast)", 2, [44, 40]),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-cugan")
    specs = {name: {"class": "RealCUGAN", "seed": 70 + seed, "input": size, "kwargs": kwargs}
             for seed, (name, (kwargs, _, _, size)) in enumerate(VARIANTS.items())}  # fmt: skip
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_cugan_is_detected_and_matches_spandrel(reference, paths, name):
    _, label, scale, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="RealCUGAN", layout="cugan",
                           scale=scale)  # fmt: skip


def test_cugan_upscales_tiled_tiny_and_thin_inputs(reference):
    workdir, _ = reference
    for name, scale in (("cugan-x3", 3), ("cugan-x2-fast", 2)):
        network, info = load_upscaler(workdir / f"{name}.safetensors")
        tiled = np.asarray(upscale(network, info.scale, noise_image(47, 37), tile=24, overlap=6))
        assert tiled.shape == (37 * scale, 47 * scale, 3) and tiled.std() > 1
        with torch.inference_mode():
            # Smaller than the border the U-Nets eat (mirrored in steps), a single row, a single pixel.
            for height, width in ((5, 7), (1, 13), (1, 1), (9, 2)):
                out = network(torch.rand(1, 3, height, width))
                assert out.shape == (1, 3, height * scale, width * scale) and torch.isfinite(out).all()


def test_cugan_pro_flag_of_any_shape_is_read(reference, tmp_path):
    """The published pro files' `pro` entry is a flag; a scalar one loads and runs as the (1,) one does."""
    workdir, _ = reference
    tensors = load_file(str(workdir / "cugan-x2-pro.safetensors"))
    save_file({**tensors, "pro": torch.tensor(1.0)}, str(tmp_path / "scalar-pro.safetensors"))
    source = torch.from_numpy(np.load(workdir / "cugan-x2-pro.input.npy"))
    network, info = load_upscaler(tmp_path / "scalar-pro.safetensors")
    assert info.label == "Real-CUGAN 2x (pro)"
    with torch.inference_mode():
        got = network(source).numpy()
    assert np.abs(got - np.load(workdir / "cugan-x2-pro.output.npy")).max() < 1e-4


def test_damaged_cugan_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    x2 = load_file(str(workdir / "cugan-x2.safetensors"))
    x4 = load_file(str(workdir / "cugan-x4.safetensors"))
    fast = load_file(str(workdir / "cugan-x2-fast.safetensors"))
    cases = {
        "missing": ({k: v for k, v in x2.items() if k != "unet2.conv4.seblock.conv2.bias"},
                    "tensors do not fit the Real-CUGAN 2x: .*unet2.conv4.seblock.conv2.bias"),
        "no-bottom": ({k: v for k, v in x2.items() if k != "unet1.conv_bottom.weight"},
                      "lacks unet1.conv_bottom.weight"),
        "odd-kernel": ({**x2, "unet1.conv_bottom.weight": torch.zeros(64, 3, 3, 3)}, "3, 3. deconvolution"),
        "odd-final": ({**x4, "conv_final.weight": torch.zeros(10, 64, 3, 3)}, "conv_final makes 10 channels"),
        "fast-pro": ({**fast, "pro": torch.zeros(1)}, "fast Real-CUGAN with a pro flag"),
        "grey": ({**x2, "unet1.conv1.conv.0.weight": torch.zeros(32, 1, 3, 3)}, "for 1-channel images"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)


def test_pickled_cugan_keeps_its_pro_flag(reference, paths, tmp_path):
    """A pro .pth's `pro` entry survives the conversion to safetensors even when it is no tensor (a
    tensor one is kept like any tensor)."""
    workdir, _ = reference
    tensors = {k: v for k, v in load_file(str(workdir / "cugan-x2-pro.safetensors")).items() if k != "pro"}
    torch.save({**tensors, "pro": True}, tmp_path / "up2x-pro.pth")
    entry = Library(paths).import_path(tmp_path / "up2x-pro.pth", "upscaler", convert_pickle=True)
    assert entry.architecture == "Real-CUGAN 2x (pro)"
