"""Hires fix: A1111's two passes (txt2img, upscale, img2img) through the real backend, against the same
two passes run by hand through diffusers with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from desktop.engine.backends.base import StepInfo
from desktop.engine.errors import Cancelled, InvalidRequest
from desktop.engine.jobs import CancelToken
from desktop.engine.paths import AppPaths
from desktop.engine.request import hires_target
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run


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
