"""Prompt editing, alternation and AND through the real diffusers backend and the tiny real models:
what the UNet receives at each call is compared with the pipeline's own encodings of the prompts a
hand-worked A1111 schedule names, and AND with the composable formula computed from separate UNet calls."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> DiffusersBackend:
    paths = AppPaths.for_root(tmp_path_factory.mktemp("schedule-home")).ensure()
    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), 0)


def request_for(model, prompt: str, **changes) -> GenerationRequest:
    values = dict(prompt=prompt, negative_prompt="blurry", model=str(model), steps=4, cfg_scale=7.0, seed=5,
                  width=64, height=64, device="cpu", sampler="Euler")  # fmt: skip
    return GenerationRequest(**(values | changes)).validate()


def run(backend: DiffusersBackend, request: GenerationRequest, record: list | None = None) -> np.ndarray:
    """Generate; with `record`, every UNet call's inputs and output are appended to it, as the UNet
    itself receives them (after any hook)."""
    backend.load(request)
    unet = backend._pipe.unet
    if record is not None:
        original = unet.forward

        @functools.wraps(original)
        def forward(sample, timestep, encoder_hidden_states, **kwargs):
            output = original(sample, timestep, encoder_hidden_states, **kwargs)
            added = kwargs.get("added_cond_kwargs") or {}
            record.append((sample.clone(), timestep, encoder_hidden_states.clone(), added, output[0].clone()))
            return output

        unet.forward = forward
    try:
        batch = backend.generate(request, 0, lambda _: None, CancelToken())
    finally:
        unet.__dict__.pop("forward", None)
    return np.asarray(batch.images[0].convert("RGB"))


def encoded(pipe, text: str) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.encode_prompt(text, "cpu", 1, False)[0]


def test_each_unet_call_gets_the_prompts_of_its_step(backend, tiny_sd15_dir):
    request = request_for(tiny_sd15_dir, "a [red:blue:1] circle [cat|dog]", negative_prompt="[blurry|ugly]")
    calls: list = []
    run(backend, request, calls)
    # By hand, A1111's rules: ends at steps 1 (both constructs), 2, 3, 4; call i takes the first end >= i.
    positive = ["a red circle cat", "a red circle cat", "a blue circle dog", "a blue circle cat"]
    negative = ["blurry", "blurry", "ugly", "blurry"]
    assert len(calls) == 4
    pipe = backend._pipe
    for (_, _, hidden, _, _), text, avoid in zip(calls, positive, negative, strict=True):
        expected = torch.cat([encoded(pipe, avoid), encoded(pipe, text)])
        assert torch.allclose(hidden, expected, atol=1e-5), text


def test_a_schedule_that_never_changes_is_the_plain_image(backend, tiny_sd15_dir):
    """The hooks replace the conditioning with the same values: not one pixel moves. And the plain
    prompt, which takes no hook at all, gives what the pipeline makes of the text itself."""
    plain = run(backend, request_for(tiny_sd15_dir, "a red circle"))
    assert np.array_equal(run(backend, request_for(tiny_sd15_dir, "a red [circle:circle:2]")), plain)
    pipe = backend._pipe
    pipe.scheduler = backend._make_scheduler("Euler")
    with torch.inference_mode():
        direct = pipe("a red circle", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.0,
                      width=64, height=64, generator=torch.Generator("cpu").manual_seed(5)).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(direct.convert("RGB")), plain)
    changed = run(backend, request_for(tiny_sd15_dir, "a red [circle:square:2]"))
    assert not np.array_equal(changed, plain)


@pytest.mark.parametrize(("cfg", "images"), [(7.0, 1), (1.0, 1), (7.0, 2)])
def test_and_is_the_weighted_sum_of_separate_predictions(backend, tiny_sd15_dir, cfg, images):
    request = request_for(tiny_sd15_dir, "a red circle :1.5 AND a blue [square:moon:1]:0.5", cfg_scale=cfg, steps=3,
                          batch_size=images)  # fmt: skip
    calls: list = []
    original_make = backend._make_scheduler
    guided: list = []

    def make_scheduler(sampler, few_step=""):
        scheduler = original_make(sampler, few_step)
        step = scheduler.step

        @functools.wraps(step)
        def recorded(model_output, *args, **kwargs):
            guided.append(model_output.clone())
            return step(model_output, *args, **kwargs)

        scheduler.step = recorded
        return scheduler

    backend._make_scheduler = make_scheduler
    try:
        run(backend, request, calls)
    finally:
        del backend._make_scheduler
    pipe = backend._pipe
    second = ["a blue square", "a blue square", "a blue moon"]
    assert len(calls) == len(guided) == 3
    for (sample, timestep, _, _, _), prediction, text in zip(calls, guided, second, strict=True):
        latents = sample[:images]  # the unconditioned rows come first

        def unet(embeds, latents=latents, timestep=timestep):
            with torch.inference_mode():
                hidden = embeds.expand(images, -1, -1)
                return pipe.unet(latents, timestep, encoder_hidden_states=hidden, return_dict=False)[0]

        uncond = unet(encoded(pipe, "blurry"))
        red, other = unet(encoded(pipe, "a red circle")), unet(encoded(pipe, text))
        expected = uncond + cfg * (1.5 * (red - uncond) + 0.5 * (other - uncond))
        assert torch.allclose(prediction, expected, atol=1e-4), text


def test_sdxl_swaps_hidden_states_and_pooled_embeds_per_step(backend, tiny_sdxl_dir):
    request = request_for(tiny_sdxl_dir, "[a red circle|a blue square]", negative_prompt="", steps=3)
    calls: list = []
    run(backend, request, calls)
    pipe = backend._pipe
    texts = ["a red circle", "a red circle", "a blue square"]
    for (_, _, hidden, added, _), text in zip(calls, texts, strict=True):
        with torch.inference_mode():
            embeds, _, pooled, _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
        assert torch.allclose(hidden[1:], embeds, atol=1e-5) and not hidden[:1].any()  # empty negative: zeros
        assert torch.allclose(added["text_embeds"][1:], pooled, atol=1e-5) and not added["text_embeds"][:1].any()


def test_image_to_image_schedules_over_the_steps_it_runs(backend, tiny_sd15_dir, tmp_path):
    """Strength 0.5 of 6 steps runs 3: `[cat:dog:0.5]` changes after int(0.5 * 3) = step 1."""
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    request = request_for(tiny_sd15_dir, "[cat:dog:0.5]", steps=6, strength=0.5, init_image=str(source))
    calls: list = []
    run(backend, request, calls)
    pipe = backend._pipe
    assert len(calls) == 3
    for (_, _, hidden, _, _), text in zip(calls, ["cat", "cat", "dog"], strict=True):
        assert torch.allclose(hidden[1:], encoded(pipe, text), atol=1e-5), text
