"""Transformer upscalers (SwinIR, Swin2SR, HAT, DAT): every reconstruction variant detected from its header and run by
Marble's own implementation, compared with spandrel 0.4.2 (an independent maintained loader) on the same
file and input; pickled .pth through the safe child conversion; tiled against whole; broken files refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.errors import ModelError
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.cli_runner import run_cli
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

# Tiny but complete SwinIRs: two residual groups of two blocks (one unshifted, one shifted), 12 dims, heads 2
# and 3, trained at 32 px so the shifted windows are on (28 px for the window-7 JPEG model).
_SWINIR = {"img_size": 32, "window_size": 8, "embed_dim": 12, "depths": [2, 2], "num_heads": [2, 3],
           "mlp_ratio": 2.0, "in_chans": 3}  # fmt: skip
# Tiny DATs: 32 dims (the least the position-bias MLP allows); groups of 3 and 2 blocks, so both shifted
# patterns (block 2 of an even group, block 0 of an odd one) and both attentions run; 2x4 and 8x4 windows
# (the second one taller than wide: the table's values, not the header, say which side is the height).
_DAT = {"img_size": 16, "embed_dim": 32, "expansion_factor": 2.0, "in_chans": 3, "num_heads": [2, 4]}
# Tiny HATs: SwinIR's tiny shape plus the conv branch (12 -> 4 channels, channel attention through 2) and
# the overlapping attention (window 8 -> 12, 4 -> 6); one with qkv biases and the conv after each group,
# one without either.
_HAT = {"img_size": 64, "in_chans": 3, "embed_dim": 12, "depths": [2, 2], "num_heads": [2, 3], "mlp_ratio": 2.0,
        "compress_ratio": 3, "squeeze_factor": 6, "overlap_ratio": 0.5}  # fmt: skip
# name: (spandrel class, its keyword arguments, Marble's label for the file, scale). The input, 19 x 23 px,
# is a multiple of no window, so the padding and the crop are part of every comparison.
VARIANTS = {
    "classical-x2": (
        "SwinIR", {**_SWINIR, "upscale": 2, "upsampler": "pixelshuffle"},
        "SwinIR 2x (classical, 12 dims, 2x2 blocks, window 8)", 2,
    ),
    "classical-x3": (
        "SwinIR", {**_SWINIR, "upscale": 3, "upsampler": "pixelshuffle"},
        "SwinIR 3x (classical, 12 dims, 2x2 blocks, window 8)", 3,
    ),
    "lightweight-x4": (
        "SwinIR", {**_SWINIR, "upscale": 4, "upsampler": "pixelshuffledirect"},
        "SwinIR 4x (lightweight, 12 dims, 2x2 blocks, window 8)", 4,
    ),
    "realworld-x4": (
        "SwinIR", {**_SWINIR, "upscale": 4, "upsampler": "nearest+conv", "resi_connection": "3conv"},
        "SwinIR 4x (real-world, 12 dims, 2x2 blocks, window 8)", 4,
    ),
    "jpeg-x1": (
        "SwinIR", {**_SWINIR, "upscale": 1, "upsampler": "", "window_size": 7, "img_size": 28, "img_range": 255.0},
        "SwinIR 1x (restoration, 12 dims, 2x2 blocks, window 7)", 1,
    ),
    "swin2sr-x2": (
        "Swin2SR", {**_SWINIR, "upscale": 2, "upsampler": "pixelshuffle"},
        "Swin2SR 2x (classical, 12 dims, 2x2 blocks, window 8)", 2,
    ),
    "swin2sr-light-x3": (
        "Swin2SR", {**_SWINIR, "upscale": 3, "upsampler": "pixelshuffledirect", "qkv_bias": False},
        "Swin2SR 3x (lightweight, 12 dims, 2x2 blocks, window 8)", 3,
    ),
    "swin2sr-realworld-x4": (
        "Swin2SR", {**_SWINIR, "upscale": 4, "upsampler": "nearest+conv", "resi_connection": "3conv"},
        "Swin2SR 4x (real-world, 12 dims, 2x2 blocks, window 8)", 4,
    ),
    "hat-x2": (
        "HAT", {**_HAT, "window_size": 8, "upscale": 2}, "HAT 2x (12 dims, 2x2 blocks, window 8, overlap window 12)", 2,
    ),
    "hat-x4": (
        "HAT", {**_HAT, "window_size": 4, "upscale": 4, "resi_connection": "identity", "qkv_bias": False},
        "HAT 4x (12 dims, 2x2 blocks, window 4, overlap window 6)", 4,
    ),
    "dat-x2": (
        "DAT", {**_DAT, "split_size": [2, 4], "depth": [3, 2], "upscale": 2, "upsampler": "pixelshuffle"},
        "DAT 2x (classical, 32 dims, 3+2 blocks, window 2x4, expansion 2)", 2,
    ),
    # spandrel reads the training size from group 0's block 2, which this one lacks: its default, 64.
    "dat-light-x4": (
        "DAT", {**_DAT, "img_size": 64, "split_size": [8, 4], "depth": [2, 1], "upscale": 4,
                "upsampler": "pixelshuffledirect", "resi_connection": "3conv", "qkv_bias": False},
        "DAT 4x (lightweight, 32 dims, 2+1 blocks, window 4x8, expansion 2)", 4,
    ),
}  # fmt: skip
# The two implementations do the same float32 operations; they agree to rounding.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Every variant built, saved and run by spandrel in one child process (a few seconds)."""
    workdir = tmp_path_factory.mktemp("spandrel")
    specs = {
        name: {"class": kind, "seed": seed, "input": [19, 23], "kwargs": kwargs}
        for seed, (name, (kind, kwargs, _, _)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_is_detected_and_matches_spandrel(reference, paths, name):
    kind, _, label, scale = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture=kind, layout=kind.lower(), scale=scale,
                           tolerance=TOLERANCE)  # fmt: skip


def test_a_pickled_swinir_goes_through_the_safe_conversion(reference, tmp_path):
    """A .pth in the official release's wrapper (`params`) is refused unless converted, converted in the
    child process, listed with its shape, and `marble upscale` runs it tiled."""
    workdir, _ = reference
    where = str(tmp_path / "home")
    pth = tmp_path / "SwinIR-M-x2.pth"
    torch.save({"params": load_file(str(workdir / "classical-x2.safetensors"))}, pth)
    code, _, err = run_cli("upscalers", "import", str(pth), "--home", where)
    assert code != 0 and "--convert-pickle" in err
    code, _, err = run_cli("upscalers", "import", str(pth), "--convert-pickle", "--home", where)
    assert code == 0, err
    code, out, _ = run_cli("upscalers", "list", "--home", where)
    assert "SwinIR-M-x2" in out and "SwinIR 2x (classical" in out
    source = tmp_path / "in.png"
    noise_image(40, 24).save(source)
    code, _, err = run_cli("upscale", str(source), "--upscaler", "SwinIR-M-x2", "--tile", "32", "--out",
                           str(tmp_path / "big.png"), "--home", where)
    assert code == 0, err
    network, _ = load_upscaler(workdir / "classical-x2.safetensors")
    expected = upscale(network, 2, Image.open(source), tile=32)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "big.png")), np.asarray(expected))


@pytest.mark.parametrize("name", ["classical-x2", "swin2sr-x2", "hat-x2", "dat-x2"])
def test_tiled_matches_whole_image_and_tiny_tiles_work(reference, name):
    """Attention reaches across a whole window and, through the shifted ones, beyond (DAT's channel
    attention over the whole tile), so the seams of a random transformer differ more than an ESRGAN's:
    within 32 of 255 levels, 1.0 on average, at the default 16-pixel overlap (measured 24 and 0.7 for
    SwinIR, 26 and 0.6 for DAT). Tiles smaller than a window, and an image smaller than the padding that
    mirroring can add (one pixel: nothing to mirror), still run at the right size."""
    workdir, _ = reference
    network, info = load_upscaler(workdir / f"{name}.safetensors")
    image = noise_image(64, 48)
    whole = np.asarray(upscale(network, info.scale, image, tile=0)).astype(int)
    tiled = np.asarray(upscale(network, info.scale, image, tile=32, overlap=16)).astype(int)
    assert whole.shape == (96, 128, 3) and whole.std() > 10
    difference = np.abs(whole - tiled)
    # Swin2SR's random one reaches further (measured 60 and 2.8): its random logit scales (up to e^6) make
    # attention far sharper than a trained model's, and the post-norms keep every block at full strength.
    worst, mean = (64, 3.0) if name.startswith("swin2sr") else (32, 1.0)
    assert difference.max() <= worst and difference.mean() < mean
    small = upscale(network, info.scale, noise_image(12, 10), tile=5, overlap=2)
    assert small.size == (24, 20)
    assert upscale(network, info.scale, noise_image(3, 2), tile=0).size == (6, 4)  # mirrored thrice
    assert upscale(network, info.scale, noise_image(3, 1), tile=0).size == (6, 2)  # nothing to mirror


def _without(state: dict, drop) -> dict:  # noqa: ANN001 - a predicate on names
    return {k: v for k, v in state.items() if not drop(k)}


def test_broken_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    swinir = load_file(str(workdir / "classical-x2.safetensors"))
    dat = load_file(str(workdir / "dat-x2.safetensors"))
    hat = load_file(str(workdir / "hat-x2.safetensors"))
    swin2sr = load_file(str(workdir / "swin2sr-x2.safetensors"))
    cases = {
        # A block missing in the middle of a group: the numbering has a gap.
        "gap": (_without(swinir, lambda k: k.startswith("layers.1.residual_group.blocks.0.")),
                "group 1 has blocks \\[1\\], with gaps"),
        # One tensor of a block missing: the header fits SwinIR, the strict load names what is missing.
        "missing": (_without(swinir, lambda k: k == "layers.1.residual_group.blocks.1.norm2.weight"),
                    "tensors do not fit the SwinIR 2x .*Missing key.*norm2.weight"),
        "no-first-conv": (_without(swinir, lambda k: k.startswith("conv_first.")),
                          "looks like a SwinIR upscaler but lacks conv_first.weight"),
        "hat-no-overlap": (_without(hat, lambda k: k.startswith("layers.1.residual_group.overlap_attn.")),
                           "looks like a HAT upscaler but lacks layers.1.residual_group.overlap_attn"),
        # A Swin2SR block without its bias MLP's last layer: the header fits, the strict load names it.
        "swin2sr-missing": (_without(swin2sr, lambda k: k == "layers.1.residual_group.blocks.1.attn.cpb_mlp.2.weight"),
                            "tensors do not fit the Swin2SR 2x .*Missing key.*cpb_mlp.2.weight"),
        "swin2sr-no-scale": (_without(swin2sr, lambda k: k == "layers.1.residual_group.blocks.1.attn.logit_scale"),
                             "looks like a Swin2SR upscaler but lacks layers.1.*blocks.1.attn.logit_scale"),
        "swin2sr-no-index": (_without(swin2sr, lambda k: k.endswith("blocks.0.attn.relative_position_index")),
                             "looks like a Swin2SR upscaler but lacks layers.0.residual_group.blocks.0.attn"),
        # The compressed-input model's auxiliary reconstruction: refused by name, not half-loaded.
        "swin2sr-aux": ({**swin2sr, "conv_bicubic.weight": torch.zeros(4, 3, 3, 3)},
                        "Swin2SR with the auxiliary \\(compressed-input\\) reconstruction"),
        # A wider position-bias MLP than Swin2SR's 512: a mismatched file, refused with the shape.
        "swin2sr-mismatch": ({**swin2sr, "layers.0.residual_group.blocks.0.attn.cpb_mlp.0.weight": torch.zeros(8, 2)},
                             "tensors do not fit the Swin2SR 2x .*cpb_mlp.0.weight"),
        "dat-gap": (_without(dat, lambda k: k.startswith("layers.0.blocks.1.")),
                    "DAT group 0 has blocks \\[0, 2\\], with gaps"),
        "dat-missing": (_without(dat, lambda k: k == "layers.0.blocks.2.attn.dwconv.1.running_var"),
                        "tensors do not fit the DAT 2x .*Missing key.*running_var"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)
    for source in ("classical-x2", "swin2sr-x2"):
        truncated = tmp_path / f"truncated-{source}.safetensors"
        truncated.write_bytes((workdir / f"{source}.safetensors").read_bytes()[:-1000])
        with pytest.raises(ModelError, match=f"truncated-{source}.safetensors"):
            Library(paths).import_path(truncated, "upscaler")


def test_a_pickled_swin2sr_is_converted_and_matches(reference, paths, tmp_path):
    """A Swin2SR .pth (the official `params` wrapper) goes through the safe child conversion into the
    library with its shape, and the converted file runs as the safetensors one does."""
    workdir, _ = reference
    pth = tmp_path / "Swin2SR_ClassicalSR_X2.pth"
    torch.save({"params": load_file(str(workdir / "swin2sr-x2.safetensors"))}, pth)
    library = Library(paths)
    with pytest.raises(ModelError, match="convert"):
        library.import_path(pth, "upscaler")
    entry = library.import_path(pth, "upscaler", convert_pickle=True)
    assert entry.architecture == VARIANTS["swin2sr-x2"][2]
    network, info = load_upscaler(library.path_of(entry))
    assert info.layout == "swin2sr"
    source = torch.from_numpy(np.load(workdir / "swin2sr-x2.input.npy"))
    with torch.inference_mode():
        got = network(source).numpy()
    assert np.abs(got - np.load(workdir / "swin2sr-x2.output.npy")).max() <= TOLERANCE
