from dataclasses import replace

from desktop.engine.edit_inputs import inputs_folder, request_size, step_words
from desktop.engine.paths import AppPaths
from desktop.engine.request import MAX_SIDE, MIN_SIDE, GenerationRequest


def test_a_source_works_at_its_size_made_a_multiple_of_8():
    assert request_size((120, 90), "resize") == (120, 88)
    assert request_size((120, 90), "pad") == (120, 96)


def test_a_source_outside_the_request_limits_is_held_inside_them():
    assert request_size((10, 9000), "resize") == (MIN_SIDE, MAX_SIDE)
    assert request_size((5000, 33), "pad") == (MAX_SIDE, MIN_SIDE)


def test_inputs_are_saved_in_the_cache(tmp_path):
    paths = AppPaths.for_root(tmp_path)
    assert inputs_folder(paths) == paths.cache / "inputs"


def test_an_edit_counts_the_steps_it_runs_and_says_why_they_are_fewer():
    edit = GenerationRequest(prompt="p", model="m", steps=30, strength=0.75, init_image="/tmp/a.png")
    assert step_words(22, 22, edit) == "22 of 22 steps: 30 at strength 0.75"
    # At strength 1 an edit runs every step, and text to image always does: the plain count.
    assert step_words(3, 30, replace(edit, strength=1.0)) == "step 3/30"
    assert step_words(3, 30, replace(edit, init_image=None)) == "step 3/30"
