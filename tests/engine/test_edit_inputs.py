from desktop.engine.edit_inputs import inputs_folder, request_size
from desktop.engine.paths import AppPaths
from desktop.engine.request import MAX_SIDE, MIN_SIDE


def test_a_source_works_at_its_size_made_a_multiple_of_8():
    assert request_size((120, 90), "resize") == (120, 88)
    assert request_size((120, 90), "pad") == (120, 96)


def test_a_source_outside_the_request_limits_is_held_inside_them():
    assert request_size((10, 9000), "resize") == (MIN_SIDE, MAX_SIDE)
    assert request_size((5000, 33), "pad") == (MAX_SIDE, MIN_SIDE)


def test_inputs_are_saved_in_the_cache(tmp_path):
    paths = AppPaths.for_root(tmp_path)
    assert inputs_folder(paths) == paths.cache / "inputs"
