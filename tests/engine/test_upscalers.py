"""Upscaler models (ESRGAN family) as a library kind: detected from their tensor names, pickled .pth files
converted in a child process (a malicious one never runs), tiled upscaling against the whole image, and
the hires fix with an upscaler model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.library.upscaler import inspect_upscaler
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_hires import by_hand
from tests.engine.test_library_index import _Payload
from tests.support.cli_runner import run_cli

FEATURES, GROWTH, BLOCKS = 16, 8, 1


def esrgan_state(scale: int = 4, blocks: int = BLOCKS, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random RRDBNet in the original ESRGAN key layout (model.0, model.1.sub.N.RDBk.convj.0, the
    trunk conv, upsampling convs at model.3, model.6, then the HR and last convs), written out by hand."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, gain: float = 1.0) -> None:
        bound = gain / (cin * 9) ** 0.5
        state[f"{name}.weight"] = (torch.rand((cout, cin, 3, 3), generator=generator) * 2 - 1) * bound
        state[f"{name}.bias"] = torch.zeros(cout)

    conv("model.0", 3, FEATURES)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for k in range(1, 6):
                width = FEATURES + (k - 1) * GROWTH
                conv(f"model.1.sub.{block}.RDB{rdb}.conv{k}.0", width, GROWTH if k < 5 else FEATURES)
    conv(f"model.1.sub.{blocks}", FEATURES, FEATURES)
    ups = scale.bit_length() - 1
    for index in range(ups):
        conv(f"model.{3 + 3 * index}", FEATURES, FEATURES)
    conv(f"model.{2 + 3 * ups}", FEATURES, FEATURES)
    conv(f"model.{4 + 3 * ups}", FEATURES, 3, gain=4.0)
    state[f"model.{4 + 3 * ups}.bias"] = torch.full((3,), 0.5)  # mid-grey plus detail: not clamped flat
    return state


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.fixture
def tiny_esrgan(tmp_path):
    path = tmp_path / "4x-tiny.safetensors"
    save_file(esrgan_state(), str(path))
    return path


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_header_says_scale_blocks_and_width(tmp_path, scale):
    path = tmp_path / "x.safetensors"
    save_file(esrgan_state(scale, blocks=2), str(path))
    info = inspect_upscaler(read_safetensors_header(path))
    assert (info.layout, info.scale, info.blocks, info.features, info.growth) == ("esrgan", scale, 2, FEATURES, GROWTH)


def test_real_esrgan_names_load_the_same_network(tmp_path, tiny_esrgan):
    """BasicSR's names (conv_first, body.N.rdbK.convJ, conv_body, conv_up1/2, conv_hr, conv_last) for the
    same tensors give the same pixels."""
    renames = {"model.0.": "conv_first.", "model.1.sub.1.": "conv_body.", "model.3.": "conv_up1.",
               "model.6.": "conv_up2.", "model.8.": "conv_hr.", "model.10.": "conv_last."}  # fmt: skip
    basicsr = {}
    for key, value in esrgan_state().items():
        new = next((key.replace(old, new, 1) for old, new in renames.items() if key.startswith(old)), key)
        if new.startswith("model.1.sub."):
            block, rdb, conv, _, rest = new.split(".")[3:]
            new = f"body.{block}.{rdb.lower()}.{conv}.{rest}"
        basicsr[new] = value
    path = tmp_path / "basicsr.safetensors"
    save_file(basicsr, str(path))
    image = noise_image(24, 16)
    original, info = load_upscaler(tiny_esrgan)
    renamed, renamed_info = load_upscaler(path)
    assert renamed_info.layout == "basicsr" and renamed_info.scale == info.scale == 4
    assert np.array_equal(pixels(upscale(original, 4, image, tile=0)), pixels(upscale(renamed, 4, image, tile=0)))


def test_tiled_matches_whole_image_within_two_levels(tiny_esrgan):
    """Tolerance: every channel within 2 of 255 levels, and on average within 0.1 level. The network sees
    about 20 source pixels around each one; tiles overlap by 16 on each inner side and blend linearly
    across the 32-pixel band, so only pixels near the band's edges mix in a little of a tile's
    zero-padded border."""
    network, info = load_upscaler(tiny_esrgan)
    image = noise_image(96, 80)
    whole = pixels(upscale(network, info.scale, image, tile=0)).astype(int)
    tiled = pixels(upscale(network, info.scale, image, tile=32, overlap=16)).astype(int)
    assert whole.shape == (320, 384, 3) and whole.std() > 10  # a real picture, not a flat clamp
    difference = np.abs(whole - tiled)
    assert difference.max() <= 2 and difference.mean() < 0.1


def test_library_import_list_and_marble_upscale(tmp_path, tiny_esrgan):
    where = str(tmp_path / "home")
    pth = tmp_path / "4x-tiny.pth"
    torch.save({"params_ema": esrgan_state()}, pth)  # Real-ESRGAN's wrapper, as a pickled .pth
    code, _, err = run_cli("upscalers", "import", str(pth), "--home", where)
    assert code != 0 and "--convert-pickle" in err  # a pickle is never loaded without asking
    code, out, err = run_cli("upscalers", "import", str(pth), "--convert-pickle", "--home", where)
    assert code == 0, err
    code, out, _ = run_cli("upscalers", "list", "--home", where)
    assert "4x-tiny" in out and "ESRGAN 4x" in out
    source = tmp_path / "in.png"
    noise_image(40, 24).save(source)
    code, out, err = run_cli("upscale", str(source), "--upscaler", "4x-tiny", "--tile", "32", "--out",
                             str(tmp_path / "big.png"), "--home", where)
    assert code == 0, err
    assert Image.open(tmp_path / "big.png").size == (160, 96)
    code, _, err = run_cli("upscale", str(source), "--upscaler", "4x-tiny", "--scale", "2", "--out",
                           str(tmp_path / "half.png"), "--home", where)
    assert code == 0 and Image.open(tmp_path / "half.png").size == (80, 48)
    code, _, err = run_cli("upscale", str(source), "--upscaler", "nope", "--out", str(tmp_path / "x.png"),
                           "--home", where)
    assert code != 0 and "No upscaler named 'nope'" in err and "Traceback" not in err


def test_a_malicious_pth_never_runs(paths, tmp_path):
    marker = tmp_path / "PWNED"
    source = tmp_path / "4x-evil.pth"
    torch.save({"params_ema": esrgan_state(), "x": _Payload(marker)}, source)
    with pytest.raises(ModelError, match="was not converted: it needs more than plain tensors"):
        Library(paths).import_path(source, "upscaler", convert_pickle=True)
    assert not marker.exists()
    assert list(paths.upscalers.iterdir()) == []


def test_a_non_upscaler_is_refused_by_name(paths, tmp_path):
    path = tmp_path / "swinir.safetensors"
    save_file({"layers.0.residual_group.blocks.0.attn.relative_position_bias_table": torch.zeros(4, 4)}, str(path))
    with pytest.raises(ModelError, match="looks like a SwinIR upscaler"):
        Library(paths).import_path(path, "upscaler")


def test_hires_fix_with_an_upscaler_model_matches_by_hand(paths, tiny_sd15_dir, tiny_esrgan):
    """The first pass's image through the upscaler model (4x), Lanczos to the hires size (2x), then the
    second pass: as A1111 uses a model whose scale is not the one asked for."""
    Library(paths).import_path(tiny_esrgan, "upscaler")
    request = request_for(tiny_sd15_dir, hires_fix=True, hires_scale=2.0, hires_steps=4, hires_denoise=0.5,
                          hires_upscaler="4x-tiny")
    batch, _ = run(make_backend(paths), request)
    assert batch.images[0].size == (128, 128)
    network, _ = load_upscaler(tiny_esrgan)

    def by_model(image: Image.Image) -> Image.Image:
        return upscale(network, 4, image).resize((128, 128), Image.Resampling.LANCZOS)

    assert np.array_equal(pixels(batch.images[0]), by_hand(tiny_sd15_dir, request, by_model))


def test_a_dropped_upscaler_goes_to_the_upscaler_library(tiny_esrgan):
    assert guess_kind(tiny_esrgan) == "upscaler"


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        (["toRGB.0.weight", "stylegan_decoder.style_mlp.1.weight"],
         "looks like a GFPGAN face restorer, not an upscaler"),
        (["quantize.embedding.weight", "quant_conv.weight", "encoder.conv_in.weight", "encoder.conv_out.weight",
          "decoder.conv_out.weight", "encoder.down.0.block.0.norm1.weight"],
         "looks like a RestoreFormer face restorer"),
        (["generator.model.1.bn_l.running_mean", "generator.model.1.ffc.convl2l.weight"],
         "looks like a LaMa inpainting model, not an upscaler: it fills a masked area"),
    ],
)  # fmt: skip
def test_face_restorers_and_inpainters_are_refused_with_the_reason(paths, tmp_path, probes, message):
    """Networks the maintained loader reads that are no upscalers: a dropped file goes to the upscaler import,
    which says what the file is and why Marble does not run it."""
    path = tmp_path / "restorer.safetensors"
    save_file({name: torch.zeros(2, 2) for name in probes}, str(path))
    assert guess_kind(path) == "upscaler"
    with pytest.raises(ModelError, match=f"restorer.safetensors {message}"):
        Library(paths).import_path(path, "upscaler")
    assert list(paths.upscalers.iterdir()) == []
