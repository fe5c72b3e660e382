"""Prompt styles: A1111's `{prompt}` rule, its styles.csv, and the saved styles."""

from __future__ import annotations

import pytest

from desktop.engine.errors import InvalidRequest
from desktop.engine.styles import Style, StyleStore, apply_styles, merge_prompt, parse_a1111_styles


def test_a_style_with_the_placeholder_takes_the_prompt_in_its_place():
    assert merge_prompt("cinematic photo of {prompt}, 35mm", "a cat") == "cinematic photo of a cat, 35mm"


def test_a_style_without_the_placeholder_is_appended_after_a_comma():
    assert merge_prompt("oil painting", "a cat ") == "a cat, oil painting"
    # Nothing on one side: no stray comma.
    assert merge_prompt("oil painting", "") == "oil painting"
    assert merge_prompt("", "a cat") == "a cat"


def test_styles_apply_in_order_to_prompt_and_negative():
    styles = [Style("frame", "photo of {prompt}", "blurry"), Style("tail", "sharp", "{prompt}, lowres")]
    assert apply_styles("a cat", "ugly", styles) == ("photo of a cat, sharp", "ugly, blurry, lowres")


def test_a1111_styles_csv_with_quoting_and_old_columns():
    text = (
        "name,prompt,negative_prompt\n"
        '"Cinematic","cinematic still of {prompt}, shallow depth of field","anime, ""cartoon"""\n'
        "None,,\n"
        ",orphan,\n"
        "Plain, watercolor, \n"
    )
    styles = parse_a1111_styles(text)
    assert styles == [
        Style("Cinematic", "cinematic still of {prompt}, shallow depth of field", 'anime, "cartoon"'),
        Style("None", "", ""),
        Style("Plain", "watercolor", ""),
    ]
    assert parse_a1111_styles("name,text\nold,ink drawing\n") == [Style("old", "ink drawing", "")]


def test_a_csv_without_a_name_column_is_refused():
    with pytest.raises(InvalidRequest, match="no `name` column"):
        parse_a1111_styles("title,prompt\nx,y\n")


def test_the_store_saves_merges_and_finds_styles_by_name(tmp_path):
    store = StyleStore(tmp_path / "data" / "styles.json")
    assert store.all() == []
    assert store.merge([Style("Cinematic", "a"), Style("Plain", "b")]) == (2, 0)
    assert store.merge([Style("cinematic", "c")]) == (0, 1)
    assert StyleStore(store.path).names() == ["cinematic", "Plain"]
    assert [s.prompt for s in store.get_many(["PLAIN", "Cinematic"])] == ["b", "c"]
    with pytest.raises(InvalidRequest, match="no style named 'Gothic'.*known: cinematic, Plain"):
        store.get_many(["Gothic"])


def test_a_damaged_styles_file_says_so(tmp_path):
    path = tmp_path / "styles.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidRequest, match="damaged"):
        StyleStore(path).all()


def test_names_are_matched_ignoring_case_and_surrounding_spaces_everywhere(tmp_path):
    store = StyleStore(tmp_path / "a" / "new" / "folder" / "styles.json")  # its folders are made on the first save
    assert store.merge([Style("Film Noir", "a")]) == (1, 0)
    assert store.merge([Style("FILM NOIR", "b")]) == (0, 1)  # the same style, replaced, whatever the case
    assert [s.prompt for s in store.get_many(["  film noir "])] == ["b"]
    (style,) = parse_a1111_styles('name,prompt\n"  Film Noir  ",dark\n')  # a name padded inside its quotes
    assert style.name == "Film Noir"
