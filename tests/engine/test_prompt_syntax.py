"""A1111's prompt syntax, parsed and packed without a tokenizer (the encoding is tested with real models
in test_prompt_encoding.py)."""

from __future__ import annotations

import pytest

from desktop.engine.prompt_syntax import (
    MAX_NESTING,
    Chunk,
    PromptPiece,
    embedding_words,
    needs_chunked_encoding,
    pack_chunks,
    pack_prompt,
    parse_prompt,
    prompt_pieces,
)


def pairs(text: str) -> list[tuple[str, float]]:
    return [("BREAK" if piece.is_break else piece.text, round(piece.weight, 4)) for piece in parse_prompt(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red ball", [("a red ball", 1.0)]),
        ("a (red) ball", [("a ", 1.0), ("red", 1.1), (" ball", 1.0)]),
        ("((red))", [("red", 1.21)]),
        ("[red] ball", [("red", 0.9091), (" ball", 1.0)]),
        ("[[red]]", [("red", 0.8264)]),
        ("(red:1.5), ball", [("red", 1.5), (", ball", 1.0)]),
        ("(red: 0.25 )", [("red", 0.25)]),
        ("(red:.5)", [("red", 0.5)]),
        ("(a (b) c:2)", [("a ", 2.0), ("b", 2.2), (" c", 2.0)]),
        ("(a [b]:1.5)", [("a ", 1.5), ("b", 1.3636)]),
        # Separate stacks for round and square brackets, as A1111 keeps them.
        ("(a [b) c]", [("a ", 1.1), ("b", 1.0), (" c", 0.9091)]),
    ],
)
def test_emphasis_weights_follow_a1111(text: str, expected: list[tuple[str, float]]) -> None:
    assert pairs(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\(red\) \[ball\] a\\b", [(r"(red) [ball] a\b", 1.0)]),
        ("a (red ball", [("a ", 1.0), ("red ball", 1.1)]),  # left open: to the end
        ("a [red ball", [("a ", 1.0), ("red ball", 0.9091)]),
        ("a red) ball]", [("a red) ball]", 1.0)]),  # nothing to close: text
        ("time: 12:30", [("time: 12:30", 1.0)]),
        ("a:1.5) b", [("a:1.5) b", 1.0)]),  # a weight with no open bracket is text
        ("[red:1.5]", [("red:1.5", 0.9091)]),  # numbers only work in round brackets
        ("(red:1.2.3)", [("red:1.2.3", 1.1)]),  # not a number: text, and the bracket closes plainly
        ("", [("", 1.0)]),
    ],
)
def test_literals_and_unbalanced_brackets(text: str, expected: list[tuple[str, float]]) -> None:
    assert pairs(text) == expected


def test_break_ends_a_chunk_only_as_a_word_of_its_own_in_capitals() -> None:
    assert pairs("a cat BREAK a (dog)") == [("a cat", 1.0), ("BREAK", 1.0), ("a ", 1.0), ("dog", 1.1)]
    assert pairs("(a cat BREAK a dog:1.3)") == [("a cat", 1.3), ("BREAK", 1.0), ("a dog", 1.3)]
    assert pairs("BREAKFAST, break, Break") == [("BREAKFAST, break, Break", 1.0)]


def test_only_weights_and_breaks_need_chunked_encoding() -> None:
    assert not needs_chunked_encoding(parse_prompt(r"a red ball, \(plain\)"))
    assert not needs_chunked_encoding(parse_prompt("(red:1.0)"))
    assert needs_chunked_encoding(parse_prompt("a (red) ball"))
    assert needs_chunked_encoding(parse_prompt("a BREAK b"))


def ids_of(chunks: tuple[Chunk, ...]) -> list[list[int]]:
    return [list(chunk.ids) for chunk in chunks]


def test_long_prompts_are_packed_into_chunks_and_keep_their_weights() -> None:
    chunks = pack_chunks([(range(0, 50), 1.0), (range(100, 130), 1.5)], size=75, comma_id=None)
    assert ids_of(chunks) == [[*range(0, 50), *range(100, 125)], list(range(125, 130))]
    assert chunks[0].weights == (1.0,) * 50 + (1.5,) * 25
    assert chunks[1].weights == (1.5,) * 5


def test_a_full_chunk_is_cut_after_a_late_comma_and_not_after_an_early_one() -> None:
    comma = 267
    late = [*range(60), comma, *range(1000, 1020)]  # comma at index 60: 14 tokens from the end
    chunks = pack_chunks([(late, 1.0)], size=75, comma_id=comma)
    assert ids_of(chunks) == [[*range(60), comma], list(range(1000, 1020))]
    early = [*range(40), comma, *range(1000, 1040)]  # comma at index 40: 34 from the end
    chunks = pack_chunks([(early, 1.0)], size=75, comma_id=comma)
    assert [len(chunk.ids) for chunk in chunks] == [75, 6]


def test_break_closes_the_chunk_and_an_empty_prompt_is_one_empty_chunk() -> None:
    chunks = pack_chunks([([1, 2], 1.0), None, ([3], 1.2)], size=75, comma_id=None)
    assert chunks == (Chunk((1, 2), (1.0, 1.0)), Chunk((3,), (1.2,)))
    assert pack_chunks([([], 1.0)], size=75, comma_id=None) == (Chunk((), ()),)
    assert ids_of(pack_chunks([None, ([5], 1.0)], size=75, comma_id=None)) == [[], [5]]
    assert ids_of(pack_chunks([([5], 1.0), None], size=75, comma_id=None)) == [[5]]


def test_an_embedding_that_does_not_fit_starts_the_next_chunk_whole() -> None:
    vectors = (900, 901, 902)  # one embedding's three vectors
    chunks = pack_chunks([([*range(73), vectors, 5], 1.2)], size=75, comma_id=None)
    assert ids_of(chunks) == [list(range(73)), [900, 901, 902, 5]]  # not 900, 901 | 902
    assert chunks[1].weights == (1.2,) * 4
    # One that fits stays; one ending exactly at the end of the chunk stays too.
    assert ids_of(pack_chunks([([*range(70), vectors], 1.0)], size=75, comma_id=None)) == [[*range(70), *vectors]]
    assert ids_of(pack_chunks([([*range(72), vectors], 1.0)], size=75, comma_id=None)) == [[*range(72), *vectors]]
    # A full chunk still ends at a late comma first.
    comma = 267
    chunks = pack_chunks([([*range(70), comma, *range(1000, 1004), vectors], 1.0)], size=75, comma_id=comma)
    assert ids_of(chunks) == [[*range(70), comma], [*range(1000, 1004), *vectors]]
    # Longer than a chunk, it has to spill over, after whatever came before it.
    long = tuple(range(2000, 2080))
    chunks = pack_chunks([([1, 2], 1.0), ([long], 1.0)], size=75, comma_id=None)
    assert ids_of(chunks) == [[1, 2], list(long[:75]), list(long[75:])]


def test_embedding_names_are_found_as_whole_words_the_longest_first() -> None:
    pattern = embedding_words(["ink", "ink-wash", "glow.v2"])
    found = pattern.findall("ink, ink-wash inks glow.v2 xglow.v2 ink_ (ink:1.2)")
    assert found == ["ink", "ink-wash", "glow.v2", "ink"]
    assert embedding_words([]) is None


def test_pieces_are_frozen() -> None:
    with pytest.raises(AttributeError):
        PromptPiece("a").weight = 2.0  # type: ignore[misc]


# The tests below were written to kill mutants that survived `mutmut run` (docs/mutation.md).


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\\", [("a\\", 1.0)]),  # a backslash at the very end is text, not an escape
        ("a\\(", [("a(", 1.0)]),  # an escaped bracket as the last character is still literal
        # Equal-weight neighbours are one piece, as many as there are.
        ("(b)(c)(d)", [("bcd", 1.1)]),
        ("x (a:1) y", [("x a y", 1.0)]),
        # Letters outside "([)]" are never brackets, capitals included.
        ("(X) X [X]", [("X", 1.1), (" X ", 1.0), ("X", 0.9091)]),
    ],
)
def test_trailing_escapes_and_merged_neighbours(text: str, expected: list[tuple[str, float]]) -> None:
    assert pairs(text) == expected


def test_brackets_past_the_nesting_limit_are_text_and_close_as_text() -> None:
    deep = MAX_NESTING + 1
    # The 65th bracket and its partner are text; the 64 around them still weigh.
    assert pairs("(" * deep + "x" + ")" * deep + " y") == [("(x)", round(1.1**MAX_NESTING, 4)), (" y", 1.0)]
    assert pairs("[" * deep + "X" + "]" * deep + " y") == [("[X]", round(1.1**-MAX_NESTING, 4)), (" y", 1.0)]
    # Two ignored brackets need two closings before the real ones close again.
    assert pairs("(" * (deep + 1) + "x" + ")" * (deep + 1)) == [("((x))", round(1.1**MAX_NESTING, 4))]
    # Inside an ignored round bracket, ":2)" is text and does not set a weight.
    assert pairs("(" * deep + "x:2)" + ")" * MAX_NESTING) == [("(x:2)", round(1.1**MAX_NESTING, 4))]
    # Ignored round brackets do not make a square bracket text, nor the other way round.
    up, down = round(1.1**MAX_NESTING, 4), round(1.1**-MAX_NESTING, 4)
    inner_up, inner_down = round(1.1 ** (MAX_NESTING - 1), 4), round(1.1 ** (1 - MAX_NESTING), 4)
    assert pairs("(" * deep + "[x]" + ")" * deep) == [("(", up), ("x", inner_up), (")", up)]
    assert pairs("[" * deep + "(x)" + "]" * deep) == [("[", down), ("x", inner_down), ("]", down)]


def test_a_break_piece_is_empty_text_of_weight_one() -> None:
    assert parse_prompt("(a BREAK b:2)")[1] == PromptPiece("", 1.0, is_break=True)


def test_emphasis_none_reads_the_prompt_as_plain_text() -> None:
    text = "a (red:1.5) BREAK ball"
    assert prompt_pieces(text, "None") == (PromptPiece(text),)
    assert prompt_pieces(text) == parse_prompt(text) == prompt_pieces(text, "No norm")


def test_pack_prompt_tokenizes_each_piece_and_turns_breaks_into_chunk_ends() -> None:
    vocabulary = {"a ": [1], "red": [2, 3], " ball": [4], "b": [5]}
    chunks = pack_prompt(parse_prompt("a (red) ball BREAK b"), vocabulary.__getitem__, size=75, comma_id=None)
    assert chunks == (Chunk((1, 2, 3, 4), (1.0, 1.1, 1.1, 1.0)), Chunk((5,), (1.0,)))
    # The size and the comma id reach the packer.
    assert ids_of(pack_prompt((PromptPiece("a "),) * 3, vocabulary.__getitem__, 2, None)) == [[1, 1], [1]]
    cut = pack_prompt((PromptPiece("x"),), lambda _: [1, 9, 2, 3], size=3, comma_id=9)
    assert ids_of(cut) == [[1, 9], [2, 3]]


def test_the_comma_cut_starts_exactly_20_tokens_from_the_end_and_keeps_weights() -> None:
    comma = 267
    # Comma at index 55: 19 tokens after it in a full chunk of 75, so the chunk ends at the comma.
    chunks = pack_chunks([([*range(55), comma], 1.0), (range(1000, 1030), 1.5)], size=75, comma_id=comma)
    assert ids_of(chunks) == [[*range(55), comma], list(range(1000, 1030))]
    assert chunks[0].weights == (1.0,) * 56
    assert chunks[1].weights == (1.5,) * 30
    # Comma at index 54: 20 tokens after it, too far back: the chunk is simply full.
    chunks = pack_chunks([([*range(54), comma], 1.0), (range(1000, 1030), 1.5)], size=75, comma_id=comma)
    assert [len(chunk.ids) for chunk in chunks] == [75, 10]


def test_a_two_vector_embedding_is_not_split_either() -> None:
    chunks = pack_chunks([([*range(74), (900, 901)], 1.0)], size=75, comma_id=None)
    assert ids_of(chunks) == [list(range(74)), [900, 901]]


def test_a_longer_embedding_name_wins_over_its_prefix() -> None:
    assert embedding_words(["glow", "glow.v2"]).findall("glow.v2 glow") == ["glow.v2", "glow"]
