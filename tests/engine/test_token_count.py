"""The prompt editor's token counter against the real CLIP tokenizer and the backend's own packing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from desktop.engine.backends.diffusers_backend import _pack
from desktop.engine.prompt_syntax import parse_prompt
from desktop.engine.resources import TOKENIZER_FOLDER, Resources
from desktop.engine.token_count import CHUNK_TOKENS, PromptLength, TokenCounter

FOLDER = Resources.default().tokenizers / TOKENIZER_FOLDER

AWKWARD = [
    "masterpiece, best quality, (a cat:1.2) on a mat",
    "Café crème brûlée, naïve façade, ŻÓŁĆ, Ωmega, straße",
    "日本語のテスト 漢字 한국어 текст",
    "emoji 😀 👍🏽 👨‍👩‍👧 🇫🇷 and ✨sparkles✨",
    "don't you're I'LL we've she'd it's 'quoted' rock'n'roll",
    "x² + y³ = z⁴, ½ cup, Ⅻ o'clock, ①②③, 3.14159, 1girl, 2boys",
    "a...b!!!c??? #tag @user $100 50% ~tilde~ `code` under_score __dunder__ a-b/c\\d",
    "tabs\tand\nnew\n\nlines   and    spaces  ",
    "UPPER lower MiXeD CamelCaseWord",
    "<lora:detail_tweaker:0.8> <|endoftext|> BREAK [[weak]] {curly}",
    "",
]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.from_merges_file(FOLDER / "merges.txt")


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(FOLDER))


def reference_tokens(tokenizer: CLIPTokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False).input_ids)


def random_prompts(tokenizer: CLIPTokenizer, count: int, seed: int) -> list[str]:
    """Prompts made of real vocabulary entries, numbers and punctuation, in varied case."""
    rng = random.Random(seed)
    vocabulary = sorted(word.replace("</w>", "") for word in tokenizer.get_vocab())
    extras = [",", ".", "!", "(", ")", ":", "1.2", "42", "-", "'s", "_"]
    prompts = []
    for _ in range(count):
        words = [rng.choice(vocabulary if rng.random() < 0.8 else extras) for _ in range(rng.randint(1, 60))]
        text = " ".join(words) if rng.random() < 0.7 else "".join(words)
        prompts.append(text.upper() if rng.random() < 0.1 else text)
    return prompts


@pytest.mark.parametrize("text", AWKWARD)
def test_tokens_are_the_real_tokenizers_on_awkward_text(counter: TokenCounter, tokenizer, text: str) -> None:
    assert counter.tokens(text) == reference_tokens(tokenizer, text)


def test_tokens_are_the_real_tokenizers_on_500_random_prompts(counter: TokenCounter, tokenizer) -> None:
    prompts = random_prompts(tokenizer, 500, seed=3)
    differing = [text for text in prompts if counter.tokens(text) != reference_tokens(tokenizer, text)]
    assert differing == []


def test_counts_and_chunks_are_the_backends_own_packing(counter: TokenCounter, tokenizer) -> None:
    """Long prompts with weights, commas and BREAK: the counter's chunks are the chunks the backend
    encodes (its `_pack`, with the real tokenizer)."""
    rng = random.Random(9)
    for text in random_prompts(tokenizer, 60, seed=4):
        words = text.split(" ")
        for _ in range(rng.randint(0, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(["BREAK", "(sharp:1.3)", "[soft]", ","]))
        prompt = " ".join(words * rng.randint(1, 4))
        chunks = _pack(tokenizer, parse_prompt(prompt))
        assert counter.measure(prompt) == PromptLength(sum(len(chunk.ids) for chunk in chunks), len(chunks)), prompt


def test_the_count_crosses_into_a_second_chunk_after_75_tokens(counter: TokenCounter) -> None:
    assert counter.measure("") == PromptLength(0, 1)
    assert counter.measure("cat " * CHUNK_TOKENS) == PromptLength(75, 1)
    assert counter.measure("cat " * (CHUNK_TOKENS + 1)) == PromptLength(76, 2)
    assert counter.measure("cat " * (CHUNK_TOKENS + 1)).capacity == 150
    # Weights are syntax, not tokens; BREAK starts a chunk of its own.
    assert counter.measure("(red cat:1.3), [dog]") == counter.measure("red cat, dog")
    assert counter.measure("red cat BREAK dog") == PromptLength(3, 2)


def test_a_5000_token_prompt_is_counted_whole(counter: TokenCounter) -> None:
    length = counter.measure("red cat, " * 1700)
    assert length.tokens == 5100
    assert length.chunks == 68  # "red cat," is 3 tokens: 25 of them fill a chunk exactly


def test_a_file_without_merges_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "merges.txt"
    empty.write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no byte-pair merges"):
        TokenCounter.from_merges_file(empty)
