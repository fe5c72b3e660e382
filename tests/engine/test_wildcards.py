"""Wildcards: `__name__` replaced by a line of wildcards/name.txt, chosen by the seed."""

from __future__ import annotations

import pytest

from desktop.engine.errors import InvalidRequest
from desktop.engine.wildcards import MAX_DEPTH, ResolvedPrompts, Wildcards


@pytest.fixture
def wildcards(tmp_path):
    folder = tmp_path / "wildcards"
    (folder / "animals").mkdir(parents=True)
    (folder / "colour.txt").write_text("# primary colours\nred\n\n green \nblue\n", encoding="utf-8")
    (folder / "animals" / "pet.txt").write_text("__colour__ cat\n__colour__ dog\n", encoding="utf-8")
    (folder / "many.txt").write_text("\n".join(f"word{i}" for i in range(50)), encoding="utf-8")
    (folder / "loop.txt").write_text("again __loop__\n", encoding="utf-8")
    (folder / "empty.txt").write_text("# only a comment\n\n", encoding="utf-8")
    return Wildcards(folder)


def test_the_same_seed_chooses_the_same_lines_and_other_seeds_vary(wildcards):
    first = wildcards.resolve("a __many__ and a __many__", "", 7)
    assert first == wildcards.resolve("a __many__ and a __many__", "", 7)
    assert "__" not in first.prompt
    chosen = {wildcards.resolve("__many__", "", seed).prompt for seed in range(20)}
    assert len(chosen) > 5 and chosen <= {f"word{i}" for i in range(50)}


def test_comments_blank_lines_and_spaces_are_not_choices(wildcards):
    chosen = {wildcards.resolve("__colour__", "", seed).prompt for seed in range(60)}
    assert chosen == {"red", "green", "blue"}


def test_nested_wildcards_in_subfolders_resolve_in_both_prompts(wildcards):
    result = wildcards.resolve("photo of a __animals/pet__", "__COLOUR__ background", 3)
    assert result.prompt.split()[-1] in {"cat", "dog"} and "__" not in result.prompt
    assert result.prompt.split()[-2] in {"red", "green", "blue"}
    assert result.negative_prompt.split()[0] in {"red", "green", "blue"}


def test_a_prompt_without_wildcards_is_returned_untouched(wildcards):
    assert wildcards.resolve("a_b __ c", "x", 1).prompt == "a_b __ c"


def test_a_missing_file_names_the_wildcard_and_the_folder(wildcards):
    with pytest.raises(InvalidRequest, match=r"__hat__.*no hat.txt in .*wildcards"):
        wildcards.resolve("a __hat__", "", 1)


def test_a_path_in_a_wildcard_name_is_never_followed(wildcards, tmp_path):
    (tmp_path / "secret.txt").write_text("leaked\n", encoding="utf-8")
    assert wildcards.resolve("__../secret__", "", 1).prompt == "__../secret__"


def test_a_file_that_names_itself_stops_at_the_depth_limit(wildcards):
    with pytest.raises(InvalidRequest, match=f"more than {MAX_DEPTH} levels"):
        wildcards.resolve("__loop__", "", 1)


def test_an_empty_file_is_an_error(wildcards):
    with pytest.raises(InvalidRequest, match="no lines"):
        wildcards.resolve("__empty__", "", 1)


def test_names_match_whatever_the_case_of_the_file_or_the_prompt(wildcards):
    (wildcards.folder / "Styles").mkdir()
    (wildcards.folder / "Styles" / "Film.txt").write_text("kodachrome\n", encoding="utf-8")
    assert wildcards.resolve("__styles/film__", "__STYLES/FILM__", 1) == ResolvedPrompts("kodachrome", "kodachrome")
    assert "styles/film" in wildcards.names()


def test_a_byte_order_mark_is_not_part_of_the_first_line(wildcards):
    (wildcards.folder / "notepad.txt").write_bytes("\ufefffirst\nsecond\n".encode())  # as Windows' Notepad saves
    chosen = {wildcards.resolve("__notepad__", "", seed).prompt for seed in range(40)}
    assert chosen == {"first", "second"}


def test_a_file_over_the_size_limit_is_refused_by_name(wildcards):
    from desktop.engine.wildcards import MAX_FILE_BYTES

    (wildcards.folder / "huge.txt").write_bytes(b"word\n" * (MAX_FILE_BYTES // 5 + 1))
    with pytest.raises(InvalidRequest, match=r"huge\.txt is larger than 4 MB"):
        wildcards.resolve("__huge__", "", 1)
