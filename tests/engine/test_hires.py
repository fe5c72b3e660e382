"""Hires fix: A1111's two passes (txt2img, upscale, img2img) through the real backend, against the same
two passes run by hand through diffusers with the tiny model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from desktop.engine.backends.base import StepInfo
from desktop.engine.errors import Cancelled, InvalidRequest
from desktop.engine.history.rows import image_row
from desktop.engine.jobs import CancelToken
from desktop.engine.metadata import (
    format_parameters,
    interpret_chunks,
    png_info,
    png_text_chunks,
    read_image_metadata,
    read_text_chunks,
)
from desktop.engine.paths import AppPaths
from desktop.engine.recipe import read_recipe
from desktop.engine.request import hires_target
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.cli_runner import run_cli


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def by_hand(model_dir, request, upscale, counts: list[int] | None = None) -> np.ndarray:
    """The two passes through bare diffusers: `upscale` takes the first pass's output (latents or a
    PIL image, by the request's upscaler) and returns the second pass's `image`. `counts` gets each
    pass's number of step callbacks."""
    counts = [] if counts is None else counts

    def counting(pipe, i, t, tensors):
        counts[-1] += 1
        return {}

    plain = StableDiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    latent = request.hires_upscaler.startswith("Latent")
    counts.append(0)
    first = plain(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale, width=request.width, height=request.height,
        generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent" if latent else "pil",
        callback_on_step_end=counting,
    ).images
    second = StableDiffusionImg2ImgPipeline(**plain.components)
    second.scheduler = type(plain.scheduler).from_config(plain.scheduler.config)
    second.set_progress_bar_config(disable=True)
    counts.append(0)
    out = second(
        prompt=request.hires_prompt or request.prompt, negative_prompt=request.negative_prompt,
        image=upscale(first if latent else first[0]), strength=request.hires_denoise,
        num_inference_steps=request.hires_steps or request.steps, guidance_scale=request.cfg_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed), callback_on_step_end=counting,
    ).images[0]
    return pixels(out)


def hires_request(model, **changes):
    values = dict(hires_fix=True, hires_scale=2.0, hires_steps=6, hires_denoise=0.5) | changes
    return request_for(model, **values)


def test_latent_hires_matches_the_two_passes_by_hand(paths, tiny_sd15_dir):
    request = hires_request(tiny_sd15_dir)
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (128, 128)
    counts: list[int] = []
    expected = by_hand(tiny_sd15_dir, request, lambda latents: torch.nn.functional.interpolate(
        latents, size=(16, 16), mode="bilinear", antialias=False), counts)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # The second pass's steps count on from the first's, and the total says both from the first step
    # (the tiny model's PLMS runs steps + 1: 5 in the first pass, the last int(6 * 0.5) + 1 in the second).
    assert counts == [5, 4]
    assert [s.step for s in steps] == list(range(1, 10))
    assert {s.total for s in steps} == {9}
    assert all(s.preview is not None for s in steps)  # previews go on through the second pass


def test_lanczos_hires_matches_by_hand_and_differs_from_latent(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    request = hires_request(tiny_sd15_dir, hires_upscaler="Lanczos", hires_prompt="a green square")
    batch, _ = run(backend, request)
    assert batch.images[0].size == (128, 128)
    expected = by_hand(tiny_sd15_dir, request, lambda image: image.resize((128, 128), Image.Resampling.LANCZOS))
    assert np.array_equal(pixels(batch.images[0]), expected)
    latent, _ = run(backend, hires_request(tiny_sd15_dir, hires_prompt="a green square"))
    assert not np.array_equal(pixels(latent.images[0]), pixels(batch.images[0]))


def test_resize_to_crops_about_the_centre(paths, tiny_sd15_dir):
    request = hires_request(tiny_sd15_dir, hires_resize_w=128, hires_resize_h=96, hires_steps=2)
    batch, _ = run(make_backend(paths), request)
    assert batch.images[0].size == (128, 96)


def test_cancel_during_the_second_pass(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    request = hires_request(tiny_sd15_dir)
    backend.load(request)
    cancel = CancelToken()
    seen: list[StepInfo] = []

    def on_step(info: StepInfo) -> None:
        seen.append(info)
        if info.step == 6:  # the first step of the second pass
            cancel.cancel()

    with pytest.raises(Cancelled):
        backend.generate(request, 0, on_step, cancel)
    assert [s.step for s in seen] == [1, 2, 3, 4, 5, 6]


def test_hires_target_follows_a1111():
    assert hires_target(512, 512, 2.0, 0, 0) == (1024, 1024, 1024, 1024)
    assert hires_target(512, 768, 1.5, 0, 0) == (768, 1152, 768, 1152)
    assert hires_target(512, 768, 2.0, 1024, 0) == (1024, 1536, 1024, 1536)  # one side: aspect kept
    # Both sides: cover, then crop about the centre.
    assert hires_target(512, 768, 2.0, 1024, 1024) == (1024, 1536, 1024, 1024)
    assert hires_target(768, 512, 2.0, 1024, 1024) == (1536, 1024, 1024, 1024)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"hires_scale": 0.5}, "hires upscale 0.5 is out of range"),
        ({"hires_denoise": 0.0}, "hires denoising strength 0.0"),
        ({"hires_steps": 1, "hires_denoise": 0.5}, "leave no step to run"),
        ({"hires_sampler": "Nope"}, "Unknown hires sampler"),
        ({"hires_scale": 8.0}, "would make a 4096x8192 image"),
    ],
)
def test_bad_hires_settings_are_refused_in_words(tmp_path, changes, words):
    with pytest.raises(InvalidRequest, match=words):
        request_for(tmp_path, height=1024, width=512, **({"hires_fix": True} | changes))


def test_off_hires_settings_are_not_checked(tmp_path):
    request_for(tmp_path, hires_scale=0.5)  # off: nothing to refuse


# ------------------------------------------------------------------------------------------- metadata

A1111_HIRES = (
    "a castle\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, "
    "Model: dreamy, Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent (bicubic), "
    'Hires prompt: "a castle, detailed", Hires sampler: DPM++ 2M, Version: v1.10.1'
)


def test_written_as_a1111_writes_it():
    request = request_for("m", hires_fix=True, hires_scale=2.0, hires_steps=10, hires_denoise=0.5)
    text = format_parameters(request, 42, None, "0.1")
    assert "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Version" in text
    assert "Size: 64x64" in text  # A1111's Size is the first pass's
    resized = format_parameters(replace(request, hires_resize_w=128, hires_resize_h=96, hires_steps=0,
                                         hires_prompt="a, b", hires_sampler="Euler"), 42, None, "0.1")
    assert 'Hires resize: 128x96, Hires upscaler: Latent, Hires prompt: "a, b", Hires sampler: Euler' in resized
    assert "Hires" not in format_parameters(replace(request, hires_fix=False), 42, None, "0.1")


def test_a1111_hires_keys_are_restored_as_request_fields():
    metadata = interpret_chunks({"parameters": A1111_HIRES})
    expected = {
        "hires_fix": True, "hires_scale": 1.5, "hires_steps": 10, "hires_denoise": 0.45,
        "hires_upscaler": "Latent (bicubic)", "hires_prompt": "a castle, detailed", "hires_sampler": "DPM++ 2M",
    }
    assert {name: getattr(metadata.request, name) for name in expected} == expected
    recipe = read_recipe(metadata)
    assert {name: recipe.fields[name] for name in expected} == expected
    assert not [line for line in recipe.unsupported if "Hires" in line or "Denoising" in line]
    # An upscaler model the library lacks is named, and the default upscaler is used.
    missing = read_recipe(interpret_chunks({"parameters": A1111_HIRES.replace("Latent (bicubic)", "4x-UltraSharp")}))
    assert "hires_upscaler" not in missing.fields
    assert any("4x-UltraSharp" in line for line in missing.unsupported)
    # Without hires keys, an image was made without the hires fix.
    plain = read_recipe(interpret_chunks({"parameters": A1111_HIRES.split(", Denoising")[0]}))
    assert plain.fields["hires_fix"] is False


def test_png_round_trip(paths, tiny_sd15_dir, tmp_path):
    request = hires_request(tiny_sd15_dir, hires_upscaler="Lanczos", hires_steps=4, hires_prompt="sharp, red")
    batch, _ = run(make_backend(paths), request)
    target = tmp_path / "hires.png"
    batch.images[0].save(target, pnginfo=png_info(png_text_chunks(request, 42, None, "0.1", batch.sampler_used)))
    read = read_image_metadata(target)
    assert read.request == replace(request, model="tiny-sd15")
    assert read.request.hires_size == Image.open(target).size == (128, 128)
    a1111_only = interpret_chunks({"parameters": read.raw["parameters"]}).request
    for name in ("hires_fix", "hires_scale", "hires_steps", "hires_denoise", "hires_upscaler", "hires_prompt"):
        assert getattr(a1111_only, name) == getattr(request, name), name


def test_hires_fix_on_the_command_line(tmp_path, tiny_sd15_dir):
    out = tmp_path / "out.png"
    args = ("generate", "--model", str(tiny_sd15_dir), "--prompt", "a cat", "--steps", "2", "--seed", "3",
            "--width", "64", "--height", "64", "--device", "cpu", "--no-preview",
            "--home", str(tmp_path / "h"))  # fmt: skip
    code, _, err = run_cli(*args, "--hires-scale", "1.5", "--hires-steps", "4", "--hires-denoise", "0.5",
                           "--hires-upscaler", "lanczos", "--out", str(out))
    assert code == 0, err
    assert Image.open(out).size == (96, 96)
    assert "Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 4, Hires upscaler: Lanczos" in (
        read_text_chunks(out)["parameters"])
    code, _, err = run_cli(*args, "--hires-resize", "128x0", "--out", str(tmp_path / "r.png"))
    assert code == 0, err
    assert Image.open(tmp_path / "r.png").size == (128, 128)
    code, _, err = run_cli(*args, "--hires-scale", "2", "--hires-upscaler", "4x-Nothing",
                           "--out", str(tmp_path / "x.png"))
    assert code != 0 and "Unknown hires upscaler '4x-Nothing'" in err and "Traceback" not in err


def test_history_records_the_hires_image_size(tmp_path):
    request = request_for("m", hires_fix=True, hires_scale=2.0, hires_steps=6, hires_denoise=0.5)
    row = image_row(tmp_path / "a.png", 0.0, request, prompt="p", negative="", model="m", sampler="Euler",
                    source="marble")
    assert (row["width"], row["height"]) == (128, 128)
    plain = image_row(tmp_path / "a.png", 0.0, replace(request, hires_fix=False), prompt="p", negative="",
                      model="m", sampler="Euler", source="marble")
    assert (plain["width"], plain["height"]) == (64, 64)


def test_image_to_image_ignores_the_hires_fix_and_says_so(paths, tiny_sd15_dir, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    request = hires_request(tiny_sd15_dir, init_image=str(source), strength=0.5)
    batch, _ = run(make_backend(paths), request)
    assert batch.images[0].size == (64, 64)
    assert any("hires fix applies to text-to-image only" in note for note in batch.notes)
