"""A prompt longer than a DiT family's encoder reads (Flux.1 dev's T5: 512 tokens; Z-Image's Qwen3: 512) is cut
by the pipeline without a word: the job now says so, once, with the count its encoder's own tokenizer gives, and
the picture is the one the first 512 tokens make (the real pipelines, tiny models, the shipped tokenizers)."""

from __future__ import annotations

import numpy as np
import pytest

from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import build_tiny_flux, save_pipeline
from tests.support.tiny_qwen_zimage import build_tiny_z_image

# About 1,200 T5 tokens: varied words, so no tokenizer folds them into a few.
LONG = " ".join(f"a {colour} marble statue number {n} under soft light," for n, colour in
                enumerate(["red", "blue", "green", "amber", "violet"] * 24))  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long-prompts")
    z_image = build_tiny_z_image(shipped=True)
    z_image.save_pretrained(str(tmp / "zimage"), safe_serialization=True)
    return {"flux": save_pipeline(build_tiny_flux(), tmp / "flux"), "zimage": tmp / "zimage", "t5": build_tiny_flux()}


def test_a_flux_prompt_past_t5s_512_tokens_is_named_with_its_exact_count(folders, tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    backend = make_backend(paths)
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=2)
    count = len(folders["t5"].tokenizer_2(LONG).input_ids)
    assert count > 1000
    batch, _ = run(backend, request_for(folders["flux"], prompt=LONG, **values))
    (note,) = [note for note in batch.notes if "tokens long" in note]
    assert note.startswith(f"The prompt is {count:,} tokens long for Flux.1 dev's T5 encoder, which reads the first "
                           "512")  # fmt: skip
    # The picture is what the first 512 tokens make: cutting the prompt there by hand changes nothing.
    ids = folders["t5"].tokenizer_2(LONG, max_length=512, truncation=True).input_ids
    cut = folders["t5"].tokenizer_2.decode(ids, skip_special_tokens=True)
    same, _ = run(backend, request_for(folders["flux"], prompt=cut, **values))
    assert not [note for note in same.notes if "tokens long" in note]
    assert np.array_equal(pixels(same.images[0]), pixels(batch.images[0]))
    # Only the first batch of a job says it.
    later = backend.generate(request_for(folders["flux"], prompt=LONG, **values), 1, lambda _: None, _token())
    assert not [note for note in later.notes if "tokens long" in note]


def test_a_z_image_negative_prompt_past_its_limit_is_named_too(folders, tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    batch, _ = run(make_backend(paths), request_for(folders["zimage"], prompt="a cat", negative_prompt=LONG,
                                                     steps=2, cfg_scale=4.0))  # fmt: skip
    notes = [note for note in batch.notes if "tokens long" in note]
    assert len(notes) == 1 and notes[0].startswith("The negative prompt is ")
    assert "Z-Image's text encoder, which reads the first 512" in notes[0]


def _token():
    from desktop.engine.jobs import CancelToken

    return CancelToken()
