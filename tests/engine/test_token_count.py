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


def a1111_chunks(pieces: list, comma: int, start: int, end: int) -> list[tuple[list[int], list[float]]]:
    """An independent reference of AUTOMATIC1111's packing (its `tokenize_line`), written from its rule:
    chunks of 75 tokens; when a token that is not a comma arrives at a full chunk whose last comma is
    among its last 20 tokens, the chunk ends after that comma and the tokens after it move on; BREAK
    (None here) ends the chunk; each chunk is padded with the end token to 75, then framed by start and
    end. `pieces`: (ids, weight) or None."""
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def finish(kept: list[int], kept_weights: list[float]) -> None:
        nonlocal last_comma
        padding = CHUNK_TOKENS - len(kept)
        chunks.append(([start, *kept, *[end] * padding, end], [1.0, *kept_weights, *[1.0] * padding, 1.0]))
        last_comma = -1

    for piece in pieces:
        if piece is None:
            finish(tokens, weights)
            tokens, weights = [], []
            continue
        ids, weight = piece
        for token in ids:
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_TOKENS and last_comma != -1 and CHUNK_TOKENS - last_comma <= 20:
                cut = last_comma + 1
                finish(tokens[:cut], weights[:cut])
                tokens, weights = tokens[cut:], weights[cut:]
            if len(tokens) == CHUNK_TOKENS:
                finish(tokens, weights)
                tokens, weights = [], []
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        finish(tokens, weights)
    return chunks


def framed(chunk, start: int, end: int) -> tuple[list[int], list[float]]:
    padding = CHUNK_TOKENS - len(chunk.ids)
    return [start, *chunk.ids, *[end] * padding, end], [1.0, *chunk.weights, *[1.0] * padding, 1.0]


def comma_heavy_prompts(tokenizer: CLIPTokenizer, count: int, seed: int) -> list[str]:
    """Long prompts of short phrases, so that chunk ends fall near commas, on commas and far from them."""
    rng = random.Random(seed)
    vocabulary = [word.replace("</w>", "") for word in sorted(tokenizer.get_vocab()) if word.endswith("</w>")]
    vocabulary = [word for word in vocabulary if word.isalpha()]
    prompts = []
    for _ in range(count):
        phrases = []
        for _ in range(rng.randint(10, 70)):
            words = " ".join(rng.choice(vocabulary) for _ in range(rng.choice([1, 1, 2, 3, 5, 8, 25])))
            phrases.append(rng.choice([words, words, f"({words}:1.3)", f"[{words}]", "BREAK " + words, ""]))
        prompts.append(rng.choice([", ", ",", " , ,", ","]).join(phrases))
    return prompts


def test_chunks_match_an_independent_a1111_packing(counter: TokenCounter, tokenizer) -> None:
    """Issue 23: the backend's chunks (and the counter's counts) against A1111's rule written above,
    on prompts of up to a few hundred tokens with commas at every distance from a chunk's end."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    cuts = 0
    for prompt in comma_heavy_prompts(tokenizer, 150, seed=23):
        pieces = parse_prompt(prompt)
        tokenized = [None if p.is_break else (tokenizer(p.text, add_special_tokens=False).input_ids, p.weight)
                     for p in pieces]  # fmt: skip
        expected = a1111_chunks(tokenized, comma, start, end)
        chunks = _pack(tokenizer, pieces)
        assert [framed(chunk, start, end) for chunk in chunks] == expected, prompt
        assert counter.measure(prompt) == PromptLength(sum(len(c.ids) for c in chunks), len(expected)), prompt
        cuts += sum(CHUNK_TOKENS - 20 <= len(c.ids) < CHUNK_TOKENS and c.ids[-1] == comma for c in chunks[:-1])
    assert cuts > 20  # the comma rule really ran, not only full chunks


def test_a_comma_arriving_at_a_full_chunk_starts_the_next_one(tokenizer) -> None:
    """A1111 cuts at the last comma only for a token that is not a comma: 74 words, a comma at 70,
    then `, x`: the first chunk keeps all 75 tokens and the comma opens the second."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    prompt = "cat " * 70 + ", dog dog dog dog , x"
    chunks = _pack(tokenizer, parse_prompt(prompt))
    assert [len(chunk.ids) for chunk in chunks] == [75, 2]
    assert chunks[1].ids[0] == comma
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pieces = [(tokenizer(prompt, add_special_tokens=False).input_ids, 1.0)]
    assert [framed(chunk, start, end) for chunk in chunks] == a1111_chunks(pieces, comma, start, end)
    # Another word instead of that comma: the chunk ends after the comma at 70.
    assert [len(c.ids) for c in _pack(tokenizer, parse_prompt("cat " * 70 + ", dog dog dog dog x"))] == [71, 5]


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


def test_scheduled_and_and_prompts_count_their_longest_variant(counter: TokenCounter) -> None:
    """As A1111's counter: each step's prompt and each AND part is encoded on its own, so the count is
    the longest of them, not the brackets and words of all of them."""
    assert counter.measure("[a red cat:dog:5]") == counter.measure("a red cat") == PromptLength(3, 1)
    assert counter.measure("[dog:a red cat:0.5]") == PromptLength(3, 1)
    assert counter.measure("a [cat|big red dog]") == PromptLength(4, 1)
    assert counter.measure("a [big red:5] cat") == PromptLength(4, 1)
    assert counter.measure("cat AND big red dog :1.2") == PromptLength(3, 1)  # the weight is no token
    long = "cat " * 60
    assert counter.measure(f"{long} AND {long}") == PromptLength(60, 1)
    # The negative prompt has no AND: the words count as typed; its schedules still count per step.
    assert counter.measure("cat AND dog", negative=True) == PromptLength(3, 1)
    assert counter.measure("[blurry|low quality]", negative=True) == PromptLength(2, 1)
