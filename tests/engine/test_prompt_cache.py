"""Prompt encodings reused between jobs (issue 29): a job with the same prompt, negative prompt, clip
skip, emphasis, LoRAs and model as a recent one does not run the text encoder again, and makes the same
pixels; changing any of those encodes again. Through the real backend on the tiny SD 1.5 model."""

from __future__ import annotations

import numpy as np
import pytest

from desktop.engine.backends.base import AdapterHash
from desktop.engine.backends.prompt_cache import PromptCache, PromptKey
from desktop.engine.jobs import CancelToken
from desktop.engine.paths import AppPaths
from desktop.engine.request import LoraRef
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for
from tests.support import tiny_loras, tiny_models


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> AppPaths:
    paths = AppPaths.for_root(tmp_path_factory.mktemp("prompt-cache-home")).ensure()
    # A LoRA with text-encoder layers: its weight changes the prompt's encoding.
    tiny_loras.save_lora(
        tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=1), paths.loras / "detail.safetensors"
    )
    return paths


def key(prompt: str = "a cat", **changes) -> PromptKey:
    values = dict(load=1, encoders=(1,), prompt=prompt, negative_prompt="", clip_skip=1, emphasis="Original",
                  loras=(), lora_files=(), embeddings=())
    return PromptKey(**(values | changes))


def test_the_cache_keeps_the_most_recently_used_entries():
    cache = PromptCache(entries=2)
    cache.put(key("a"), {"prompt_embeds": "A"})
    cache.put(key("b"), {"prompt_embeds": "B"})
    assert cache.get(key("a")) == {"prompt_embeds": "A"}  # "a" is now the most recent
    cache.put(key("c"), {"prompt_embeds": "C"})
    assert cache.get(key("b")) is None and cache.get(key("a")) is not None and len(cache) == 2
    # Everything that changes an encoding is part of the key.
    assert cache.get(key("a", clip_skip=2)) is None
    assert cache.get(key("a", loras=(LoraRef("detail", 0.5),))) is None
    assert cache.get(key("a", embeddings=(AdapterHash("ink", "0123456789ab"),))) is None
    assert cache.get(key("a", load=2)) is None
    cache.clear()
    assert len(cache) == 0


class EncoderCalls:
    def __init__(self, backend) -> None:
        self.count = 0
        self._backend = backend
        self._handle = None

    def __enter__(self) -> EncoderCalls:
        def count(*_) -> None:
            self.count += 1

        self._handle = self._backend._pipe.text_encoder.register_forward_hook(count)
        return self

    def __exit__(self, *_) -> None:
        self._handle.remove()


def job(backend, request):
    backend.load(request)
    return pixels(backend.generate(request, 0, lambda step: None, CancelToken()).images[0])


@pytest.mark.parametrize("prompt", ["a red circle", "a (red:1.3) circle BREAK on blue"])  # plain and chunked
def test_the_same_prompt_again_skips_the_text_encoder_and_gives_the_same_pixels(home, tiny_sd15_dir, prompt):
    backend = make_backend(home, preview_every=0)
    request = request_for(tiny_sd15_dir, prompt=prompt, steps=2)
    first = job(backend, request)
    with EncoderCalls(backend) as calls:
        again = job(backend, request)
    assert calls.count == 0
    assert np.array_equal(again, first)
    # A fresh backend (nothing cached) makes exactly these pixels too.
    assert np.array_equal(job(make_backend(home, preview_every=0), request), first)
    # Another seed with the same prompt still reuses the encoding.
    with EncoderCalls(backend) as calls:
        job(backend, request_for(tiny_sd15_dir, prompt=prompt, steps=2, seed=43))
    assert calls.count == 0


def test_a_changed_lora_weight_clip_skip_or_model_load_encodes_again(home, tiny_sd15_dir):
    backend = make_backend(home, preview_every=0)
    base = dict(prompt="a red circle", steps=2)
    job(backend, request_for(tiny_sd15_dir, **base, loras=(LoraRef("detail", 0.5),)))
    for changed in (
        dict(loras=(LoraRef("detail", 0.8),)),  # a text-encoder LoRA's weight
        dict(loras=()),  # the LoRA taken off
        dict(clip_skip=2),
        dict(negative_prompt="blurry, dark"),
    ):
        with EncoderCalls(backend) as calls:
            job(backend, request_for(tiny_sd15_dir, **(base | changed)))
        assert calls.count > 0, changed
    backend.unload()
    backend.load(request_for(tiny_sd15_dir, **base))
    with EncoderCalls(backend) as calls:
        job(backend, request_for(tiny_sd15_dir, **base))
    assert calls.count > 0  # a new load: its encoders never saw this prompt
