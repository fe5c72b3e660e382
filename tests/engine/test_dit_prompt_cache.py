"""The DiT families' prompt encodings are reused between jobs (backends/dit_prompt_cache.py): a job with the
same prompt as one before (another seed, the next batch) does not run the text encoders again, and its picture
is the one a fresh backend makes; another prompt, LoRA or memory mode encodes again. Tiny real pipelines of each
kind of encoder output: Flux (CLIP + T5 tuples, true CFG's negative too), SD3 (three encoders), Z-Image (lists),
Flux.2 dev (its negative encoded by Marble outside the pipeline call), Flux.2 Klein, Qwen-Image (embeddings and
masks), Chroma (T5 with its attention mask)."""

from __future__ import annotations

import numpy as np
import pytest

from desktop.engine.backends.dit_prompt_cache import call_key, copied
from desktop.engine.jobs import CancelToken
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_dit_oom import flux, paths  # noqa: F401 - fixtures (a Flux folder, a home with a LoRA)
from tests.support.tiny_chroma import build_tiny_chroma
from tests.support.tiny_dit import build_tiny_flux, build_tiny_sd3, save_pipeline
from tests.support.tiny_ernie import build_tiny_ernie
from tests.support.tiny_flux2 import build_tiny_flux2_dev, build_tiny_flux2_klein
from tests.support.tiny_flux3 import build_tiny_flux3
from tests.support.tiny_flux3 import save_folder as save_flux3_folder
from tests.support.tiny_krea2 import build_tiny_krea2
from tests.support.tiny_longcat import build_tiny_longcat
from tests.support.tiny_lumina2 import build_tiny_lumina2
from tests.support.tiny_ovis import build_tiny_ovis
from tests.support.tiny_qwen21 import build_tiny_qwen21, save_folder
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, build_tiny_z_image

ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
# Per family: the folder's pipeline and the request fields its jobs take (negative prompts where CFG reads one).
CASES = {
    "flux": (build_tiny_flux, dict(negative_prompt="blurry", distilled_cfg_scale=3.5, cfg_scale=2.0)),
    "sd3": (build_tiny_sd3, dict(negative_prompt="blurry", cfg_scale=5.0)),
    "zimage": (build_tiny_z_image, dict(negative_prompt="blurry", cfg_scale=4.0)),
    "flux2-dev": (build_tiny_flux2_dev, dict(negative_prompt="", distilled_cfg_scale=4.0)),
    "flux2-klein": (lambda: build_tiny_flux2_klein(is_distilled=False), dict(negative_prompt="blurry", cfg_scale=4.0)),
    "qwen-image": (build_tiny_qwen_image, dict(negative_prompt="blurry", cfg_scale=4.0)),
    "chroma": (build_tiny_chroma, dict(negative_prompt="blurry", cfg_scale=4.0)),
    "lumina2": (build_tiny_lumina2, dict(negative_prompt="blurry", cfg_scale=4.0)),
    "qwen21": (build_tiny_qwen21, dict(negative_prompt="blurry", cfg_scale=4.0)),
    "krea2": (build_tiny_krea2, dict(negative_prompt="blurry", cfg_scale=4.5)),
    "ernie": (build_tiny_ernie, dict(negative_prompt="blurry", cfg_scale=4.0)),
    "longcat": (build_tiny_longcat, dict(negative_prompt="blurry", cfg_scale=4.5)),
    "ovis": (build_tiny_ovis, dict(negative_prompt="blurry", cfg_scale=5.0)),
    "flux3": (build_tiny_flux3, dict(negative_prompt="blurry", cfg_scale=4.0)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    build, values = CASES[request.param]
    pipe = build()
    folder = tmp_path_factory.mktemp(f"dit-prompts-{request.param}") / request.param
    if request.param in ("flux", "sd3"):
        save_pipeline(pipe, folder)  # CLIP and T5 tokenizers: Marble's shipped ones
    elif request.param == "qwen21":
        save_folder(pipe, folder)  # processor/ as Qwen's folder has it
    elif request.param == "flux3":
        save_flux3_folder(pipe, folder)  # Qwen3-VL's processor in tokenizer/
    else:
        pipe.save_pretrained(str(folder), safe_serialization=True)
    return request.param, folder, values | {"steps": 2}


def encoder_calls(backend) -> list[str]:
    """A list that grows by the encoder's name each time one of the loaded pipeline's text encoders runs."""
    calls: list[str] = []
    for name in ENCODERS:
        module = getattr(backend._pipe, name, None)
        if module is not None:
            module.register_forward_pre_hook(lambda *_, name=name: calls.append(name))
    return calls


def test_the_same_prompt_is_not_encoded_again_and_draws_the_same_picture(case, tmp_path):
    family, folder, values = case
    home = AppPaths.for_root(tmp_path / "home").ensure()
    backend = make_backend(home)
    run(backend, request_for(folder, seed=1, **values))
    calls = encoder_calls(backend)
    again = backend.generate(request_for(folder, seed=2, **values), 0, lambda _: None, CancelToken())
    assert calls == [], f"{family}: {calls}"
    fresh, _ = run(make_backend(home), request_for(folder, seed=2, **values))
    assert np.array_equal(pixels(again.images[0]), pixels(fresh.images[0]))
    # Another prompt runs the encoders, and its picture is a fresh backend's too.
    other = backend.generate(request_for(folder, seed=2, prompt="a blue square", **values), 0, lambda _: None,
                             CancelToken())  # fmt: skip
    assert calls
    fresh_other, _ = run(make_backend(home), request_for(folder, seed=2, prompt="a blue square", **values))
    assert np.array_equal(pixels(other.images[0]), pixels(fresh_other.images[0]))


def test_another_memory_mode_encodes_again(case, tmp_path):
    _, folder, values = case
    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    run(backend, request_for(folder, **values))
    calls = encoder_calls(backend)
    backend.generate(request_for(folder, memory_mode="fp8", **values), 0, lambda _: None, CancelToken())
    assert calls  # fp8 layer-wise casting could change what an encoder computes: not taken from the cache


def test_only_plain_arguments_make_a_key_and_answers_are_copies():
    import torch

    assert call_key(("a cat",), {"device": torch.device("cpu"), "num_images_per_prompt": 2}) is not None
    assert call_key(("a cat",), {"prompt_embeds": torch.zeros(1)}) is None  # precomputed: passed through
    assert call_key((["a cat", "a dog"],), {}) != call_key(("a cat",), {})
    stored = (torch.ones(2), [torch.zeros(1)], None)
    answer = copied(stored)
    answer[0].add_(1)
    answer[1].append(torch.ones(1))
    assert torch.equal(stored[0], torch.ones(2)) and len(stored[1]) == 1 and answer[2] is None


def test_a_lora_added_encodes_again(flux, paths):  # noqa: F811 - fixtures
    """A LoRA can change the text encoders (Flux kohya files carry CLIP layers): the same prompt with a LoRA
    is encoded again, and its picture is a fresh backend's."""
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=2)
    backend = make_backend(paths)
    run(backend, request_for(flux["folder"], prompt="a red circle", **values))
    calls = encoder_calls(backend)
    request = request_for(flux["folder"], prompt="a red circle <lora:style:1>", **values)
    styled = backend.generate(request, 0, lambda _: None, CancelToken())
    assert calls
    fresh, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(styled.images[0]), pixels(fresh.images[0]))
