"""The demo model's world and its judge: the checker must read every ground-truth picture right, or the
quality gate's figures would measure the checker instead of the model."""

from __future__ import annotations

import itertools
import random
import warnings

import numpy as np
import pytest
from PIL import Image

from installer.demo_model import scenes
from installer.demo_model.checker import measure


def test_the_checker_reads_every_colour_shape_size_and_position_of_rendered_scenes():
    rng = random.Random(3)
    combos = list(itertools.product(scenes.COLOURS, scenes.SHAPES, scenes.SIZES, scenes.POSITIONS))
    wrong = []
    for colour, kind, size, position in combos:
        background = rng.choice([c for c in scenes.COLOURS if c != colour])
        scene = scenes.Scene((scenes.Shape(kind, colour, size, position),), (background,))
        got = measure(scenes.render(scene, rng))
        if (got.colour, got.kind, got.size, got.position, got.background) != (colour, kind, size, position, background):
            wrong.append((scene, got))
    assert len(combos) == 8 * 3 * 2 * 9
    assert wrong == []


def test_the_checker_finds_no_shape_on_a_plain_picture_and_ignores_specks():
    plain = Image.new("RGB", (128, 128), scenes.COLOURS["blue"])
    assert measure(plain).colour == "" and measure(plain).background == "blue"
    speckled = np.array(plain)
    speckled[60:62, 60:62] = scenes.COLOURS["yellow"]
    assert measure(speckled).kind == ""


def test_a_one_pixel_wide_shape_at_the_edge_is_measured_without_empty_corner_boxes():
    picture = np.array(Image.new("RGB", (128, 128), scenes.COLOURS["blue"]))
    picture[20:100, 0] = scenes.COLOURS["yellow"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns about the mean of an empty corner box
        got = measure(picture)
    assert (got.colour, got.position, got.kind) == ("yellow", "left", "square")


def test_training_never_draws_a_held_out_scene_and_the_held_out_list_is_stable():
    held_out = scenes.held_out_scenes()
    assert len(held_out) == 100 and len(scenes.HELD_OUT_KEYS) == 100
    assert [scenes.prompt_for(s) for s in held_out] == [scenes.prompt_for(s) for s in scenes.held_out_scenes()]
    rng = random.Random(0)
    drawn = [scenes.random_scene(rng) for _ in range(20000)]
    assert not {scenes.single_key(s) for s in drawn} & scenes.HELD_OUT_KEYS
    counts = {n: sum(len(s.shapes) == n for s in drawn) for n in (1, 2, 3)}
    assert counts[1] > counts[2] > counts[3] > 0
    assert any(s.split for s in drawn)


def test_scenes_pictures_and_captions_are_reproducible_from_the_seed():
    def draw(seed: int):
        rng = random.Random(seed)
        scene = scenes.random_scene(rng)
        return scene, scenes.caption(scene, rng), np.asarray(scenes.render(scene, rng))

    first, second = draw(5), draw(5)
    assert first[0] == second[0] and first[1] == second[1]
    assert np.array_equal(first[2], second[2])
    assert draw(6)[1] != first[1]


@pytest.mark.parametrize("seed", range(5))
def test_captions_name_what_is_in_the_picture(seed):
    rng = random.Random(seed)
    for _ in range(200):
        scene = scenes.random_scene(rng)
        text = scenes.caption(scene, rng)
        for shape in scene.shapes:
            assert shape.colour in text and shape.kind in text
        for colour in scene.background:
            assert colour in text
        assert " a orange" not in text and " a a" not in text and not text.startswith("a a")


def test_the_held_out_prompt_reads_as_plain_english():
    scene = scenes.Scene((scenes.Shape("circle", "red", "large", "top left"),), ("orange",))
    assert scenes.prompt_for(scene) == "a large red circle in the top left corner on an orange background"
