"""A1111's "Extra" settings with the DiT families. Variation seeds and seed resize (they were silently ignored
while the PNG said they were used): each pipeline's starting noise is drawn in the shape it draws it itself
and mixed as A1111 mixes it (variation.py), so strength 1 makes exactly the variation seed's picture, and
"seed resize from" the job's own size the plain seed's. Seamless tiling and fast mode, which the DiTs do not
have, are said to be ignored."""

from __future__ import annotations

import numpy as np
from PIL import Image

from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_dit_oom import flux, paths  # noqa: F401 - fixtures (a Flux folder, a home)
from tests.engine.test_dit_prompt_cache import case  # noqa: F401 - the fixture: each family's tiny folder


def close(a, b) -> bool:
    """Pixel-equal but for batched float maths rounding a handful of values one level apart."""
    difference = np.abs(pixels(a).astype(int) - pixels(b).astype(int))
    return difference.max() <= 1 and difference.mean() < 0.01


def test_strength_one_is_the_variation_seeds_picture(case, tmp_path):  # noqa: F811 - the fixture
    _, folder, values = case
    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    # Not square, so rows and columns cannot be swapped unseen.
    wide, _ = run(backend, request_for(folder, seed=5, subseed=9, subseed_strength=1.0, width=96, **values))
    plain_wide, _ = run(backend, request_for(folder, seed=9, width=96, **values))
    assert np.array_equal(pixels(wide.images[0]), pixels(plain_wide.images[0]))
    plain, _ = run(backend, request_for(folder, seed=9, **values))
    # A batch: image k mixes seed 5 + k with variation seed 9 + k.
    batch, _ = run(backend, request_for(folder, seed=5, subseed=9, subseed_strength=1.0, batch_size=2, **values))
    second, _ = run(backend, request_for(folder, seed=10, **values))
    assert close(batch.images[0], plain.images[0]) and close(batch.images[1], second.images[0])
    # Between the two: neither seed's picture.
    half, _ = run(backend, request_for(folder, seed=5, subseed=9, subseed_strength=0.5, **values))
    own, _ = run(backend, request_for(folder, seed=5, **values))
    assert not close(half.images[0], own.images[0]) and not close(half.images[0], plain.images[0])


def test_seed_resize_from_the_jobs_own_size_is_the_plain_seed(case, tmp_path):  # noqa: F811 - the fixture
    _, folder, values = case
    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    own, _ = run(backend, request_for(folder, seed=5, **values))
    same, _ = run(backend, request_for(folder, seed=5, seed_resize_from_w=64, seed_resize_from_h=64, **values))
    assert np.array_equal(pixels(same.images[0]), pixels(own.images[0]))
    smaller, _ = run(backend, request_for(folder, seed=5, seed_resize_from_w=128, seed_resize_from_h=128, **values))
    assert not close(smaller.images[0], own.images[0])


def test_an_edit_says_the_variation_seed_was_ignored(flux, paths, tmp_path):  # noqa: F811 - fixtures
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=2, init_image=str(source), strength=0.6, seed=5)
    varied, _ = run(make_backend(paths), request_for(flux["folder"], subseed=9, subseed_strength=0.5, **values))
    assert any("Variation seed" in note and "ignored" in note for note in varied.notes), varied.notes
    plain, _ = run(make_backend(paths), request_for(flux["folder"], **values))
    assert np.array_equal(pixels(varied.images[0]), pixels(plain.images[0]))


def test_seamless_tiling_and_fast_mode_say_a_dit_ignored_them(flux, paths):  # noqa: F811 - fixtures
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=2, seed=5)
    backend = make_backend(paths)
    asked, _ = run(backend, request_for(flux["folder"], tiling=True, fast_mode=True, **values))
    assert any("Seamless tiling" in note and "Flux.1 dev ignored it" in note for note in asked.notes), asked.notes
    assert any("Fast mode" in note and "without it" in note for note in asked.notes), asked.notes
    plain, _ = run(backend, request_for(flux["folder"], **values))
    assert not plain.notes and np.array_equal(pixels(asked.images[0]), pixels(plain.images[0]))
