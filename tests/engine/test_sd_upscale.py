"""Upscale jobs and SD upscale: tile geometry and blend, the real backend against img2img run by hand
through diffusers with the tiny SD1.5 model, and `marble upscale --sd-upscale` into the history."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.backends.base import StepInfo
from desktop.engine.backends.upscale import load_upscaler, upscale
from desktop.engine.errors import Cancelled, InvalidRequest
from desktop.engine.events import JobFinished, StepProgress
from desktop.engine.history.store import HistoryStore
from desktop.engine.jobs import CancelToken, Job
from desktop.engine.library.index import Library
from desktop.engine.metadata import png_info, png_text_chunks, read_image_metadata
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.recipe import read_recipe
from desktop.engine.request import GenerationRequest
from desktop.engine.runner import JobRunner
from desktop.engine.upscale_job import UpscaleSettings, upscale_request
from desktop.engine.upscale_tiles import blend_tiles, tile_boxes, tile_starts
from tests.engine.test_diffusers_backend import make_backend, pixels, run
from tests.engine.test_upscalers import esrgan_state
from tests.support.cli_runner import run_cli


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def smooth_image(width: int, height: int) -> Image.Image:
    """A gradient: smooth, so any seam the tiles leave stands out against it."""
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, 1 - (x + y) / 2], axis=2)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def sd_request(model, source, **settings) -> GenerationRequest:
    values = dict(upscaler="Lanczos", scale=1.5, sd_upscale=True, sd_tile=96, sd_overlap=32, denoise=0.5)
    recipe = dict(prompt="a red circle", negative_prompt="blurry", model=str(model), steps=4, cfg_scale=7.0,
                  seed=42, width=64, height=64)
    return upscale_request(str(source), recipe, UpscaleSettings(**(values | settings)), device="cpu").validate()


def img2img_by_hand(model_dir, request: GenerationRequest, image: Image.Image) -> Image.Image:
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(model_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, image=image, strength=request.strength,
        num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0]


def seam_jump(image: Image.Image, column: int) -> float:
    """How much more the image changes across `column` than across its neighbouring columns."""
    a = np.asarray(image, dtype=np.float64)
    steps = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))
    around = np.concatenate([steps[column - 6 : column - 2], steps[column + 1 : column + 5]]).mean()
    return float(steps[column - 1] - around)


def test_tiles_cover_the_image_and_share_at_least_the_overlap():
    assert tile_starts(96, 96, 32) == [0]
    assert tile_starts(96, 64, 32) == [0, 32]
    for length, tile, overlap in ((1000, 512, 64), (2048, 512, 64), (700, 128, 16)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert tile_boxes((96, 64), 64, 32) == [(0, 0, 64, 64), (32, 0, 96, 64)]
    # A side shorter than the tile is one tile of that side, each side on its own.
    assert tile_boxes((160, 48), 64, 16) == [(0, 0, 64, 48), (48, 0, 112, 48), (96, 0, 160, 48)]
    assert tile_boxes((48, 112), 64, 16) == [(0, 0, 48, 64), (0, 48, 48, 112)]


def test_the_blend_ramps_across_the_overlap_where_a_paste_jumps():
    boxes = [(0, 0, 64, 16), (32, 0, 96, 16)]
    tiles = [Image.new("RGB", (64, 16), (0, 0, 0)), Image.new("RGB", (64, 16), (200, 200, 200))]
    blended = np.asarray(blend_tiles((96, 16), boxes, tiles))[0, :, 0].astype(int)
    hard = np.asarray(blend_tiles((96, 16), boxes, tiles, feather=False))[0, :, 0].astype(int)
    assert np.abs(np.diff(hard)).max() == 200  # the naive paste: one step from one tile to the other
    assert np.abs(np.diff(blended)).max() <= 8  # 200 spread over the 32 shared columns
    assert blended[0] == 0 and blended[-1] == 200 and np.all(np.diff(blended) >= 0)
    # Across the shared band the weights cross-fade linearly, each pixel's at its centre: (i + 0.5) / 32 of the
    # second tile; outside it each tile alone.
    expected = np.concatenate([np.zeros(32), 200 * (np.arange(32) + 0.5) / 32, np.full(32, 200)])
    assert np.array_equal(blended, np.rint(expected).astype(int))


def test_upscale_request_validation_says_what_is_wrong(tmp_path):
    with pytest.raises(InvalidRequest, match="source image"):
        GenerationRequest(prompt="", model="m", upscale_by=2.0).validate()
    with pytest.raises(InvalidRequest, match="SD upscale overlap 64 is out of range"):
        sd_request("m", tmp_path / "a.png", sd_tile=96, sd_overlap=64)
    with pytest.raises(InvalidRequest, match="No model is selected"):
        upscale_request("a.png", {}, UpscaleSettings(sd_upscale=True)).validate()
    upscale_request("a.png", {}, UpscaleSettings()).validate()  # a plain upscale needs no model
    # A recipe's size Marble could not generate at (a ComfyUI image at 1003 px) does not stop the upscale.
    assert upscale_request("a.png", {"width": 1003, "height": 512}, UpscaleSettings()).validate().height == 512


def test_one_tile_sd_upscale_is_the_img2img_pass_by_hand(paths, tiny_sd15_dir, tmp_path):
    source = tmp_path / "source.png"
    smooth_image(64, 64).save(source)
    request = sd_request(tiny_sd15_dir, source)  # 96x96 in one 96 px tile
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (96, 96)
    upscaled = Image.open(source).convert("RGB").resize((96, 96), Image.Resampling.LANCZOS)
    expected = img2img_by_hand(tiny_sd15_dir, request, upscaled)
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    assert steps and steps[-1].step == steps[-1].total


@pytest.mark.slow
def test_multi_tile_sd_upscale_blends_the_tiles_without_a_seam(paths, tiny_sd15_dir, tmp_path):
    source = tmp_path / "source.png"
    smooth_image(64, 64).save(source)
    request = sd_request(tiny_sd15_dir, source, sd_tile=64, sd_overlap=32)  # 96x96: 2 x 2 tiles of 64
    batch, steps = run(make_backend(paths), request)
    result = batch.images[0]
    assert result.size == (96, 96)
    assert steps[-1].total == steps[-1].step  # progress counts through all four tiles
    upscaled = Image.open(source).convert("RGB").resize((96, 96), Image.Resampling.LANCZOS)
    boxes = tile_boxes((96, 96), 64, 32)
    assert len(boxes) == 4
    tiles = [img2img_by_hand(tiny_sd15_dir, request, upscaled.crop(box)) for box in boxes]
    # Each tile is the img2img pass by hand, and the result is exactly their feathered blend ...
    assert np.array_equal(pixels(result), pixels(blend_tiles((96, 96), boxes, tiles)))
    # ... which changes across the border at x = 32 as gently as anywhere, where pasting jumps.
    hard = blend_tiles((96, 96), boxes, tiles, feather=False)
    assert seam_jump(hard, 32) > 4 * max(seam_jump(result, 32), 0.5)


def test_marble_upscale_sd_upscale_writes_the_result_and_the_history(tiny_sd15_dir, tmp_path):
    home = tmp_path / "home"
    source = tmp_path / "source.png"
    recipe = GenerationRequest(prompt="a red circle", model=str(tiny_sd15_dir), steps=4, seed=7, width=64, height=64)
    smooth_image(64, 64).save(source, pnginfo=png_info(png_text_chunks(recipe, 7, None, "test")))
    out = tmp_path / "big.png"
    code, stdout, err = run_cli(
        "upscale", str(source), "--upscaler", "lanczos", "--scale", "1.5", "--sd-upscale", "--model",
        str(tiny_sd15_dir), "--denoise", "0.5", "--tile", "96", "--overlap", "16", "--out", str(out),
        "--home", str(home),
    )
    assert code == 0, err
    assert Image.open(out).size == (96, 96)
    metadata = read_image_metadata(out)
    assert metadata.prompt == "a red circle"  # the source's recipe
    assert metadata.settings["Seed"] == "7"
    assert metadata.settings["Postprocess upscale by"] == "1.5"
    assert metadata.settings["Postprocess upscaler"] == "Lanczos"
    assert metadata.settings["SD upscale overlap"] == "16"
    assert metadata.settings["Denoising strength"] == "0.5"
    unsupported = " ".join(read_recipe(metadata).unsupported)
    assert "Postprocess" not in unsupported and "SD upscale" not in unsupported  # facts, not settings
    paths = AppPaths.for_root(home)
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    try:
        records = store.query()
        assert len(records) == 1 and records[0].seed == 7
        assert read_image_metadata(records[0].path).settings["Postprocess upscale by"] == "1.5"
    finally:
        store.close_all()
    code, _, err = run_cli("upscale", str(source), "--upscaler", "nope", "--sd-upscale", "--model",
                           str(tiny_sd15_dir), "--out", str(out), "--home", str(home))
    assert code != 0 and "Unknown upscaler 'nope'" in err and "Traceback" not in err


def test_a_plain_upscale_with_a_library_model_loads_no_pipeline_and_counts_its_tiles(paths, tmp_path):
    weights = tmp_path / "4x-tiny.safetensors"
    save_file(esrgan_state(), str(weights))
    Library(paths).import_path(weights, "upscaler")
    source = tmp_path / "photo.png"
    smooth_image(40, 24).save(source)  # no recipe, no model: a photo
    request = upscale_request(str(source), {}, UpscaleSettings(upscaler="4x-tiny", scale=2.0, tile=16),
                              device="cpu")
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    events = []
    try:
        runner = JobRunner(make_backend(paths), ImageWriter(paths.outputs), "test", store)
        runner.run(Job(request), events.append)
        assert runner.backend._pipe is None  # a plain upscale never loads a model
        finished = events[-1]
        assert isinstance(finished, JobFinished), finished
        made = Image.open(finished.paths[0])
        network, _ = load_upscaler(weights)
        expected = upscale(network, 4, Image.open(source).convert("RGB"), tile=16).resize(
            (80, 48), Image.Resampling.LANCZOS)
        assert np.array_equal(pixels(made), pixels(expected))
        steps = [(e.step, e.total) for e in events if isinstance(e, StepProgress)]
        assert steps == [(k, 6) for k in range(1, 7)]  # 3 x 2 tiles of 16 px over 40 x 24
        assert read_image_metadata(finished.paths[0]).settings["Postprocess upscaler"] == "4x-tiny"
        assert len(store.query()) == 1
    finally:
        store.close_all()


def test_cancel_during_the_second_tile_stops_the_job(paths, tiny_sd15_dir, tmp_path):
    source = tmp_path / "source.png"
    smooth_image(64, 64).save(source)
    request = sd_request(tiny_sd15_dir, source, sd_tile=64, sd_overlap=32)
    backend = make_backend(paths)
    backend.load(request)
    cancel = CancelToken()
    seen: list[StepInfo] = []

    def on_step(info: StepInfo) -> None:
        seen.append(info)
        if len(seen) == 4:  # the first tile runs 3 steps (PLMS's warm-up step included), then the second
            cancel.cancel()

    with pytest.raises(Cancelled):
        backend.generate(request, 0, on_step, cancel)
    # One total from the first step on: 4 tiles x 3 steps (int(4 x 0.5), plus PLMS's warm-up step).
    assert [(s.step, s.total) for s in seen] == [(1, 12), (2, 12), (3, 12), (4, 12)]


def test_sd_upscale_tiles_run_in_the_jobs_memory_mode_and_fall_back_on_out_of_memory(
    paths, tiny_sd15_dir, tmp_path, monkeypatch
):
    from dataclasses import replace

    from desktop.engine.errors import OutOfMemory
    from tests.engine.test_dit_oom import fail_first_calls

    source = tmp_path / "source.png"
    smooth_image(64, 64).save(source)
    request = sd_request(tiny_sd15_dir, source)
    expected, _ = run(make_backend(paths), request)
    # A mode the user forces reaches the tiles (VAE tiling on for "tiled"), as it reaches a generation.
    backend = make_backend(paths)
    tiled, _ = run(backend, replace(request, memory_mode="tiled"))
    assert backend.memory_mode == "tiled" and backend._pipe.vae.use_tiling
    # The tiny VAE's own tile is smaller than 96 px: its tiling shows in the picture.
    assert not np.array_equal(pixels(tiled.images[0]), pixels(expected.images[0]))
    # Out of memory on the first tile: the tiles run again one mode down, saying so, with the same picture.
    calls = fail_first_calls(monkeypatch, 1, StableDiffusionImg2ImgPipeline)
    backend = make_backend(paths)
    batch, _ = run(backend, replace(request, memory_mode="full"))
    assert len(calls) == 2 and backend.memory_mode == "tiled"
    assert any(note.startswith("Ran out of memory with everything on the device; retried with VAE tiling")
               for note in batch.notes), batch.notes  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(tiled.images[0]))  # the tiled mode's picture
    # Out of memory in the last mode there is: a clear error naming the tile size, no traceback.
    calls = fail_first_calls(monkeypatch, 99, StableDiffusionImg2ImgPipeline)
    with pytest.raises(OutOfMemory, match=r"ran out of memory on SD upscale's 96x96 tiles, even with"):
        run(make_backend(paths), request)
