"""SCUNet denoisers (1x): detected from the header (width, colour or grey, blocks per stage, window, heads) and
run by Marble's own implementation, compared with spandrel 0.4.2 on the same file and input; odd sizes and
tiles run; a 1x model goes through `marble upscale` and the hires fix's resize; damaged files refused by name."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from desktop.engine.backends.hires import upscale_images
from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.support import spandrel_reference
from tests.support.cli_runner import run_cli
from tests.support.upscaler_checks import check_against_spandrel, check_refused, noise_image

pytestmark = pytest.mark.skipif(
    not spandrel_reference.available(),
    reason="spandrel 0.4.2 (the reference) is not installed: pip install --no-deps spandrel==0.4.2 einops",
)

# name: (spandrel's keyword arguments, per-channel (grey), Marble's label, input size). The width must be a
# multiple of 64: the first stage's transformer half is width / 2, and the heads are 32 channels wide.
# spandrel's network mirrors its padding in one pass, so inputs are over half the 64 px padding multiple.
VARIANTS = {
    # Two blocks in most stages (the second shifted, masked with -inf), one in others; 70 px tall pads to
    # 128, so the bottom stage has two windows down and the shift's mask joins regions across them.
    "scunet-colour": ({"in_nc": 3, "dim": 64, "config": [2, 1, 2, 2, 1, 2, 2]}, False,
                      "SCUNet 1x denoise (64 dims)", [70, 41]),
    # A grey model (each colour channel denoised alone) with a stage of no blocks (its conv only).
    "scunet-grey": ({"in_nc": 1, "dim": 64, "config": [1, 0, 2, 1, 2, 0, 1]}, True,
                    "SCUNet 1x denoise (grey, 64 dims)", [37, 45]),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spandrel-scunet")
    specs = {
        name: {"class": "SCUNet", "seed": 70 + seed, "input": size, "kwargs": kwargs, "per_channel": grey}
        for seed, (name, (kwargs, grey, _, size)) in enumerate(VARIANTS.items())
    }
    return workdir, spandrel_reference.build_and_run(workdir, specs)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_scunet_is_detected_and_matches_spandrel(reference, paths, name):
    _, _, label, _ = VARIANTS[name]
    check_against_spandrel(*reference, paths, name, label=label, architecture="SCUNet", layout="scunet", scale=1)


def test_a_scunet_denoises_odd_sizes_and_tiles(reference):
    workdir, _ = reference
    network, info = load_upscaler(workdir / "scunet-colour.safetensors")
    assert info.scale == 1 and info.detail.depths == (2, 1, 2, 2, 1, 2, 2) and info.detail.window == 8
    with torch.inference_mode():
        # Smaller than the mirroring can pad in one pass (spandrel's network refuses these): still its size.
        assert network(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
    image = noise_image(75, 50)
    tiled = np.asarray(upscale(network, 1, image, tile=40, overlap=8))
    assert tiled.shape == (50, 75, 3) and tiled.std() > 1


def test_a_1x_denoiser_keeps_the_size_in_marble_upscale_and_the_hires_fix(reference, tmp_path):
    """`marble upscale` with a 1x model writes the source's size (or --scale's, by Lanczos after the model);
    the hires fix's pixel path denoises, then resizes to its target."""
    workdir, _ = reference
    where = str(tmp_path / "home")
    code, _, err = run_cli("upscalers", "import", str(workdir / "scunet-grey.safetensors"), "--home", where)
    assert code == 0, err
    code, out, _ = run_cli("upscalers", "list", "--home", where)
    assert "SCUNet 1x denoise (grey, 64 dims)" in out
    source = tmp_path / "in.png"
    noise_image(48, 36).save(source)
    for scale, size in ((None, (48, 36)), ("2", (96, 72))):
        target = tmp_path / f"out-{scale}.png"
        extra = ["--scale", scale] if scale else []
        code, _, err = run_cli("upscale", str(source), "--upscaler", "scunet-grey", *extra, "--out", str(target),
                               "--home", where)  # fmt: skip
        assert code == 0, err
        assert Image.open(target).size == size
    network, info = load_upscaler(workdir / "scunet-grey.safetensors")
    model = functools.partial(upscale, network, info.scale)
    (hires,) = upscale_images([noise_image(48, 32)], (96, 64), (96, 64), "scunet-grey", model)
    assert hires.size == (96, 64)


def test_damaged_scunet_files_are_refused_by_name(reference, paths, tmp_path):
    workdir, _ = reference
    scunet = load_file(str(workdir / "scunet-colour.safetensors"))
    table = "m_body.1.trans_block.msa.relative_position_params"
    cases = {
        "missing": ({k: v for k, v in scunet.items() if k != "m_up2.1.conv1_2.bias"},
                    "tensors do not fit the SCUNet 1x denoise .*m_up2.1.conv1_2.bias"),
        "gap": ({k: v for k, v in scunet.items() if not k.startswith("m_down1.0.")},
                "m_down1 has layers \\[1, 2\\], with gaps"),
        "table": ({**scunet, table: torch.zeros(8, 13, 13)}, "disagree on the window or the head width"),
        "no-table": ({k: v for k, v in scunet.items() if k != table}, f"lacks {table}"),
    }  # fmt: skip
    check_refused(paths, tmp_path, cases)


def test_the_windows_upscale_job_runs_a_1x_denoiser_once_then_lanczos(reference, paths, tmp_path):
    """The window's Upscale action at 2x with a 1x model: one denoising pass (not a loop that never
    reaches the size), then Lanczos to the asked size."""
    from desktop.engine.events import JobFinished
    from desktop.engine.history.store import HistoryStore
    from desktop.engine.jobs import Job
    from desktop.engine.outputs import ImageWriter
    from desktop.engine.runner import JobRunner
    from desktop.engine.upscale_job import UpscaleSettings, upscale_request
    from tests.engine.test_diffusers_backend import make_backend

    workdir, _ = reference
    Library(paths).import_path(workdir / "scunet-colour.safetensors", "upscaler")
    source = tmp_path / "photo.png"
    noise_image(40, 24).save(source)
    request = upscale_request(str(source), {}, UpscaleSettings(upscaler="scunet-colour", scale=2.0, tile=0),
                              device="cpu")  # fmt: skip
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    events: list = []
    try:
        JobRunner(make_backend(paths), ImageWriter(paths.outputs), "test", store).run(Job(request), events.append)
        assert isinstance(events[-1], JobFinished), events[-1]
        network, _ = load_upscaler(workdir / "scunet-colour.safetensors")
        denoised = upscale(network, 1, Image.open(source).convert("RGB"), tile=0)
        expected = denoised.resize((80, 48), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(Image.open(events[-1].paths[0]).convert("RGB")), np.asarray(expected))
    finally:
        store.close_all()
