"""A1111's prompt syntax through the real diffusers backend and the tiny real models: weights, BREAK,
and prompts longer than 75 tokens (the parser itself is tested in test_prompt_syntax.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from desktop.engine.backends.diffusers_backend import DiffusersBackend, _expose_text_model, _prompt_arguments
from desktop.engine.errors import InvalidRequest
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources

LONG = ", ".join(f"{colour} {thing}" for colour in ("red", "blue", "green", "gold") for thing in
                 ("circle", "square", "star", "moon", "tree", "house", "boat", "cloud", "bird", "fish"))  # fmt: skip


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> DiffusersBackend:
    paths = AppPaths.for_root(tmp_path_factory.mktemp("prompt-home")).ensure()
    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), 0)


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), local_files_only=True)
    _expose_text_model(pipe)  # diffusers' own clip skip, the reference, needs it under transformers 5
    return pipe


def request_for(model, prompt: str, **changes) -> GenerationRequest:
    values = dict(prompt=prompt, negative_prompt="blurry", model=str(model), steps=3, cfg_scale=7.0, seed=5,
                  width=64, height=64, device="cpu", sampler="Euler")  # fmt: skip
    return GenerationRequest(**(values | changes)).validate()


def pixels(backend: DiffusersBackend, request: GenerationRequest) -> np.ndarray:
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    assert not batch.notes
    return np.asarray(batch.images[0].convert("RGB"))


def _load(backend: DiffusersBackend, request: GenerationRequest):
    backend.load(request)
    return backend._pipe


def token_count(pipe, text: str) -> int:
    return len(pipe.tokenizer(text, add_special_tokens=False).input_ids)


def test_no_norm_emphasis_scales_without_restoring_the_mean_and_none_reads_brackets_as_text(sd15):
    plain, _ = sd15.encode_prompt("a red circle", "cpu", 1, False)
    request = GenerationRequest(prompt="a (red:1.5) circle", model="x", emphasis="No norm")
    weighted = _prompt_arguments(sd15, request)["prompt_embeds"]
    scale = torch.ones(77)
    scale[2] = 1.5
    assert torch.allclose(weighted, plain * scale[None, :, None], atol=1e-6)
    original = _prompt_arguments(sd15, replace(request, emphasis="Original"))["prompt_embeds"]
    assert not torch.allclose(weighted, original, atol=1e-4)  # the mean is not restored
    # "None": the pipeline gets the text as it is, brackets, weight and BREAK included.
    literal = replace(request, prompt="a (red:1.5) circle BREAK sky", emphasis="None")
    assert _prompt_arguments(sd15, literal)["prompt"] == "a (red:1.5) circle BREAK sky"


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_one_chunk_encoded_by_chunks_is_the_pipelines_own_encoding(backend, tiny_sd15_dir, negative):
    """A trailing BREAK sends the same one-chunk prompt down the chunked path: same pixels as the
    pipeline's own encoding of the plain text."""
    plain = pixels(backend, request_for(tiny_sd15_dir, "a red circle", negative_prompt=negative))
    chunked = request_for(tiny_sd15_dir, "a red circle BREAK", negative_prompt=negative)
    assert "prompt_embeds" in _prompt_arguments(backend._pipe, chunked)
    assert np.array_equal(pixels(backend, chunked), plain)


def test_clip_skip_applies_to_the_negative_prompt_too(sd15, tiny_sd15_dir):
    """As in A1111, whose "Clip skip: 2" we read and write (diffusers skips in the prompt only)."""
    arguments = _prompt_arguments(sd15, request_for(tiny_sd15_dir, "a red circle", clip_skip=2))
    for key, text in (("prompt_embeds", "a red circle"), ("negative_prompt_embeds", "blurry")):
        skipped, _ = sd15.encode_prompt(text, "cpu", 1, False, clip_skip=1)
        unskipped, _ = sd15.encode_prompt(text, "cpu", 1, False)
        assert torch.allclose(arguments[key], skipped, atol=1e-6), key
        assert not torch.allclose(arguments[key], unskipped, atol=1e-3), key


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_sdxl_one_chunk_encoded_by_chunks_is_the_pipelines_own_encoding(backend, tiny_sdxl_dir, negative):
    plain = pixels(backend, request_for(tiny_sdxl_dir, "a red circle", negative_prompt=negative))
    chunked = request_for(tiny_sdxl_dir, "a red circle BREAK", negative_prompt=negative)
    arguments = _prompt_arguments(backend._pipe, chunked)
    assert arguments["pooled_prompt_embeds"].shape == (1, 64)
    if not negative:  # SDXL's empty negative prompt is zeros, as the pipeline makes it
        assert not arguments["negative_prompt_embeds"].any() and not arguments["negative_pooled_prompt_embeds"].any()
    assert np.array_equal(pixels(backend, chunked), plain)


def test_a_weight_scales_its_tokens_and_keeps_the_chunks_mean(sd15):
    """A1111's emphasis, checked against the pipeline's own encoding of the unweighted prompt."""
    plain, _ = sd15.encode_prompt("a red circle", "cpu", 1, False)
    request = GenerationRequest(prompt="a (red:1.5) circle", model="x")
    weighted = _prompt_arguments(sd15, request)["prompt_embeds"]
    scale = torch.ones(77)
    scale[2] = 1.5  # start, "a", "red": the second word
    expected = plain * scale[None, :, None]
    expected = expected * (plain.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert not torch.allclose(weighted, plain, atol=1e-3)


def test_weights_change_the_picture(backend, tiny_sd15_dir):
    plain = pixels(backend, request_for(tiny_sd15_dir, "a red circle"))
    assert np.array_equal(pixels(backend, request_for(tiny_sd15_dir, "a (red:1.0) circle")), plain)
    for prompt in ("a (red:1.6) circle", "a [red] circle", "a ((red)) circle"):
        assert not np.array_equal(pixels(backend, request_for(tiny_sd15_dir, prompt)), plain), prompt


def test_escaped_brackets_reach_the_encoder_as_brackets(backend, tiny_sd15_dir, sd15):
    escaped = request_for(tiny_sd15_dir, r"a \(red\) circle")
    assert _prompt_arguments(sd15, escaped)["prompt"] == "a (red) circle"
    literal = pixels(backend, request_for(tiny_sd15_dir, "a (red) circle"))
    assert not np.array_equal(pixels(backend, escaped), literal)  # that one is emphasis, not brackets


def test_words_past_the_75th_token_count(backend, tiny_sd15_dir, sd15):
    assert 75 < token_count(sd15, LONG) <= 150
    first_chunk = sd15.tokenizer.decode(sd15.tokenizer(LONG, add_special_tokens=False).input_ids[:75])
    arguments = _prompt_arguments(sd15, request_for(tiny_sd15_dir, LONG))
    assert arguments["prompt_embeds"].shape == (1, 154, 32)
    assert arguments["negative_prompt_embeds"].shape == (1, 154, 32)  # padded with empty chunks
    long_image = pixels(backend, request_for(tiny_sd15_dir, LONG))
    assert not np.array_equal(long_image, pixels(backend, request_for(tiny_sd15_dir, first_chunk)))


def test_a_long_negative_prompt_pads_the_prompt(sd15, tiny_sd15_dir):
    arguments = _prompt_arguments(sd15, request_for(tiny_sd15_dir, "a cat", negative_prompt=LONG))
    assert arguments["prompt_embeds"].shape == arguments["negative_prompt_embeds"].shape == (1, 154, 32)
    empty, _ = sd15.encode_prompt("", "cpu", 1, False)
    assert torch.equal(arguments["prompt_embeds"][:, 77:], empty)  # the padding is the empty prompt's


def test_sdxl_long_weighted_prompt(backend, tiny_sdxl_dir):
    request = request_for(tiny_sdxl_dir, f"(a gold star:1.3), {LONG}")
    arguments = _prompt_arguments(_load(backend, request), request)
    assert arguments["prompt_embeds"].shape == (1, 154, 96)
    assert arguments["pooled_prompt_embeds"].shape == (1, 64)
    image = pixels(backend, request)
    assert not np.array_equal(image, pixels(backend, request_for(tiny_sdxl_dir, LONG)))


def test_a_5000_token_prompt_is_encoded_whole(backend, tiny_sd15_dir, sd15):
    prompt = " ".join(["a red circle"] * 1700)
    assert token_count(sd15, prompt) == 5100
    image = pixels(backend, request_for(tiny_sd15_dir, prompt))
    assert image.shape == (64, 64, 3)
    assert not np.array_equal(image, pixels(backend, request_for(tiny_sd15_dir, " ".join(["a red circle"] * 25))))


def test_break_moves_the_rest_into_a_new_chunk(sd15, tiny_sd15_dir):
    arguments = _prompt_arguments(sd15, request_for(tiny_sd15_dir, "a red circle BREAK a blue square"))
    assert arguments["prompt_embeds"].shape == (1, 154, 32)
    second, _ = sd15.encode_prompt("a blue square", "cpu", 1, False)
    assert torch.allclose(arguments["prompt_embeds"][:, 77:], second, atol=1e-6)



def test_clip_skip_past_the_text_encoders_layers_is_a_clear_error(sd15, tiny_sd15_dir, tiny_sdxl_dir, backend):
    layers = sd15.text_encoder.config.num_hidden_layers
    assert layers < 12  # the tiny model: the panel offers up to 12, as A1111 does for SD's CLIP
    # The deepest allowed skip reads the first layer: not the last one (a weight keeps both chunked).
    deepest, last = (
        _prompt_arguments(sd15, request_for(tiny_sd15_dir, "a (red:1.1) circle", clip_skip=skip))["prompt_embeds"]
        for skip in (layers, 1)
    )
    assert deepest.shape == last.shape and not torch.equal(deepest, last)
    with pytest.raises(InvalidRequest, match=f"Clip skip {layers + 1} .* has {layers} layers, so use 1 to {layers}"):
        _prompt_arguments(sd15, request_for(tiny_sd15_dir, "a red circle", clip_skip=layers + 1))
    # Through the backend too, for SDXL's two encoders (the shallower one sets the limit).
    xl = _load(backend, request_for(tiny_sdxl_dir, "a dog"))
    shallow = min(xl.text_encoder.config.num_hidden_layers, xl.text_encoder_2.config.num_hidden_layers)
    with pytest.raises(InvalidRequest, match="Clip skip"):
        backend.generate(request_for(tiny_sdxl_dir, "a dog", clip_skip=shallow + 1), 0, lambda _: None, CancelToken())
    assert pixels(backend, request_for(tiny_sdxl_dir, "a dog", clip_skip=shallow)).std() > 0
