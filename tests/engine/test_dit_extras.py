"""A1111's "Extra" settings with the DiT families. Variation seeds and seed resize (they were silently ignored
while the PNG said they were used): each pipeline's starting noise is drawn in the shape it draws it itself
and mixed as A1111 mixes it (variation.py), so strength 1 makes exactly the variation seed's picture, and
"seed resize from" the job's own size the plain seed's. Seamless tiling and fast mode, which the DiTs do not
have, a library VAE and a hires sampler they do not use, are said to be ignored; control units are refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from desktop.engine.errors import InvalidRequest
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_dit_oom import flux, paths  # noqa: F401 - fixtures (a Flux folder, a home)
from tests.engine.test_dit_prompt_cache import case  # noqa: F401 - the fixture: each family's tiny folder
from tests.support.tiny_chroma import build_tiny_chroma
from tests.support.tiny_dit import save_pipeline


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


def test_a_vae_and_a_hires_sampler_the_dit_does_not_use_are_named(flux, paths):  # noqa: F811 - fixtures
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=2, seed=5)
    asked, _ = run(make_backend(paths), request_for(flux["folder"], vae="crisp-vae", sampler="Euler a", hires_fix=True,
                                                    hires_sampler="DDIM", hires_scale=1.5, **values))  # fmt: skip
    assert any("'crisp-vae' was not used" in note for note in asked.notes), asked.notes
    assert any("Euler a and DDIM were ignored" in note for note in asked.notes), asked.notes


def test_control_units_are_refused_for_a_dit_without_controlnets_before_it_loads(paths, tmp_path):  # noqa: F811
    # Silently left out before: a canny unit with Chroma made a picture without the edges. (Flux.1, Qwen-Image,
    # Z-Image and SD3 take their own ControlNets: tests/engine/test_dit_controlnets.py and its siblings.)
    folder = save_pipeline(build_tiny_chroma(), tmp_path / "chroma")
    unit = ControlUnit("edges-cn", "/no/such/edges.png", 0.8, 0.0, 1.0, "balanced", "none")
    backend = make_backend(paths)
    request = request_for(folder, steps=2, cfg_scale=4.0, controls=(unit,))
    with pytest.raises(InvalidRequest, match=r"Control units .* Chroma has none yet. Remove the 1 control"):
        backend.load(request)
    assert backend._pipe is None  # refused before the load
    run(backend, replace(request, controls=()))  # loaded now: the loaded model refuses too
    with pytest.raises(InvalidRequest, match="Chroma has none yet"):
        run(backend, request)
