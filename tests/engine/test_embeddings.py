"""Textual-inversion embeddings: imported into the library, used by name in prompts, hashed in metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from desktop.engine.backends.base import AdapterHash
from desktop.engine.backends.diffusers_backend import DiffusersBackend, _pack, _prompt_arguments
from desktop.engine.errors import ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import autov3_hash
from desktop.engine.library.embedding_vectors import vector_counts
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.paths import AppPaths
from desktop.engine.prompt_syntax import parse_prompt
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import TOKENIZER_FOLDER, Resources
from desktop.engine.token_count import TokenCounter


def _vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 2.0


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> AppPaths:
    paths = AppPaths.for_root(tmp_path_factory.mktemp("ti-home")).ensure()
    sources = tmp_path_factory.mktemp("ti-src")
    save_file({"emb_params": _vectors(2, 32, 1)}, str(sources / "inkstyle.safetensors"))  # A1111, 2 vectors
    save_file({"clip_l": _vectors(1, 32, 2), "clip_g": _vectors(1, 64, 3)}, str(sources / "xlneg.safetensors"))
    library = Library(paths)
    for name in ("inkstyle", "xlneg"):
        assert guess_kind(sources / f"{name}.safetensors") == "embedding"
        record = library.import_path(sources / f"{name}.safetensors", "embedding")
        assert record.kind == "embedding" and record.autov3
    return paths


def image(backend: DiffusersBackend, model, prompt: str, negative: str = ""):
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        model=str(model),
        steps=3,
        seed=3,
        width=64,
        height=64,
        device="cpu",
        sampler="Euler",
    ).validate()
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    return np.asarray(batch.images[0].convert("RGB")).astype(np.int16), batch


def test_embedding_by_name_changes_the_image_and_nothing_else(home, tiny_sd15_dir):
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), 0)
    plain, _ = image(backend, tiny_sd15_dir, "a cat")
    with_word, batch = image(backend, tiny_sd15_dir, "a cat, inkstyle")
    assert batch.embeddings == (AdapterHash("inkstyle", autov3_hash(home.embeddings / "inkstyle.safetensors")),)
    fresh = DiffusersBackend(
        AppPaths.for_root(home.models.parent / "empty").ensure(), Resources.default(), ModelCatalog(home.models), 0
    )
    without_embedding, _ = image(fresh, tiny_sd15_dir, "a cat, inkstyle")
    assert np.abs(with_word - without_embedding).mean() > 1.0
    # Prompts that do not use it are untouched by its token being loaded; negative prompts use it too.
    assert np.array_equal(image(backend, tiny_sd15_dir, "a cat")[0], plain)
    negative, batch = image(backend, tiny_sd15_dir, "a cat", "inkstyle")
    assert not np.array_equal(negative, plain) and [e.name for e in batch.embeddings] == ["inkstyle"]
    # Part of a longer word is not the embedding.
    assert image(backend, tiny_sd15_dir, "a cat, inkstyles")[1].embeddings == ()
    # Through A1111's prompt syntax (weights, BREAK: the chunked encoding) the embedding expands the same.
    assert np.array_equal(image(backend, tiny_sd15_dir, "a cat, inkstyle BREAK")[0], with_word)
    assert not np.array_equal(image(backend, tiny_sd15_dir, "a cat, (inkstyle:1.3)")[0], with_word)


def test_sdxl_embedding_and_a_mismatch(home, tiny_sdxl_dir, tiny_sd15_dir):
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), 0)
    plain, _ = image(backend, tiny_sdxl_dir, "a dog")
    used, _ = image(backend, tiny_sdxl_dir, "a dog", "xlneg")
    assert not np.array_equal(plain, used)
    sd15 = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), 0)
    with pytest.raises(ModelError, match="no vectors for SDXL's second|does not fit"):
        image(sd15, tiny_sdxl_dir, "a dog inkstyle")
    with pytest.raises(ModelError, match="does not fit"):
        image(sd15, tiny_sd15_dir, "a dog xlneg")


def test_a_multi_vector_embedding_is_never_split_across_chunks(home, tiny_sd15_dir):
    # A1111 moves an embedding that does not fit into the next chunk whole; split, its vectors would be
    # read in two separate encodings.
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), 0)
    prompt = "cat " * 74 + "inkstyle, a dog"
    with_embedding, batch = image(backend, tiny_sd15_dir, prompt)
    assert [e.name for e in batch.embeddings] == ["inkstyle"]
    pipe = backend._pipe
    vectors = pipe.tokenizer.convert_tokens_to_ids(["inkstyle", "inkstyle_1"])
    chunks = _pack(pipe.tokenizer, parse_prompt(prompt))
    assert [len(chunk.ids) for chunk in chunks] == [74, 5]
    assert list(chunks[1].ids[:2]) == vectors
    assert set(chunks[0].ids) == {pipe.tokenizer.convert_tokens_to_ids("cat</w>")}
    # Where it fits, it stays in its chunk.
    assert [len(chunk.ids) for chunk in _pack(pipe.tokenizer, parse_prompt("cat " * 73 + "inkstyle"))] == [75]
    # And the picture is the one of that packing: the same prompt with a BREAK before the embedding.
    assert np.array_equal(with_embedding, image(backend, tiny_sd15_dir, "cat " * 74 + "BREAK inkstyle, a dog")[0])


def test_the_prompt_fields_count_an_embedding_as_the_backend_packs_it(tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    save_file({"emb_params": _vectors(6, 32, 4)}, str(tmp_path / "glowstyle.safetensors"))
    Library(paths).import_path(tmp_path / "glowstyle.safetensors", "embedding")
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), 0)
    image(backend, tiny_sd15_dir, "a cat, glowstyle")  # loads the embedding into the real tokenizer
    pipe = backend._pipe
    counter = TokenCounter.from_merges_file(Resources.default().tokenizers / TOKENIZER_FOLDER / "merges.txt")
    assert counter.measure("glowstyle").tokens != 6  # as words, the name is fewer tokens than its vectors
    counter.set_embeddings(vector_counts(paths.embeddings))
    prompts = [
        "a cat, glowstyle",
        "cat " * 72 + "glowstyle, a dog",  # it moves to the second chunk whole
        "cat " * 69 + "glowstyle",
        "(glowstyle:1.2) BREAK a dog, glowstyle",
        "glow style, glowstyle_, glowstyles, theglowstyle",  # not the name as a word
    ]
    for prompt in prompts:
        chunks = _pack(pipe.tokenizer, parse_prompt(prompt))
        length = counter.measure(prompt)
        assert (length.tokens, length.chunks) == (sum(len(chunk.ids) for chunk in chunks), len(chunks)), prompt
    straddling = counter.measure("cat " * 72 + "glowstyle")
    assert (straddling.tokens, straddling.chunks) == (78, 2)
    # Loaded, the embedding's tokens still match only the whole word: a longer word is only words.
    without = DiffusersBackend(AppPaths.for_root(tmp_path / "bare").ensure(), Resources.default(),
                               ModelCatalog(paths.models), 0)  # fmt: skip
    assert np.array_equal(image(backend, tiny_sd15_dir, "a cat, glowstyles")[0],
                          image(without, tiny_sd15_dir, "a cat, glowstyles")[0])  # fmt: skip


def test_a_multi_vector_embedding_expands_as_diffusers_does_but_only_where_its_name_is_a_word(home, tiny_sd15_dir):
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), 0)
    image(backend, tiny_sd15_dir, "a cat, inkstyle")  # loads the embedding into the real tokenizer
    pipe = backend._pipe
    tokenizer = pipe.tokenizer
    request = GenerationRequest(prompt="a cat, inkstyle", model="m", negative_prompt="blurry").validate()
    ours = _prompt_arguments(pipe, request)
    theirs, negative = pipe.encode_prompt("a cat, inkstyle", "cpu", 1, True, "blurry")
    assert torch.equal(ours["prompt_embeds"], theirs) and torch.equal(ours["negative_prompt_embeds"], negative)
    # diffusers replaces the name in the text, so "inkstyles" beside it would become the embedding plus
    # "s"; expanded by token, the longer word stays the words it is.
    vectors = tokenizer.convert_tokens_to_ids(["inkstyle", "inkstyle_1"])
    words = tokenizer("inkstyles", add_special_tokens=False).input_ids
    assert vectors[0] not in words
    (chunk,) = _pack(tokenizer, parse_prompt("inkstyle, inkstyles"))
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    assert list(chunk.ids) == [*vectors, comma, *words]
