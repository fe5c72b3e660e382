"""A1111's variation seed, seed resize and tiling: noise mixing, pipeline results, PNG text round trip.

The slerp reference is written here from the formula, not taken from the code under test.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from desktop.engine.backends.variation import initial_noise, slerp
from desktop.engine.errors import InvalidRequest
from desktop.engine.metadata import (
    format_parameters,
    interpret_chunks,
    png_text_chunks,
    read_image_metadata,
)
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_metadata import SD15, VERSION, save_png

SHAPE = (4, 8, 8)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def plain(seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed))[0]


def reference_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element by element: for each (channel, column) vector along H, the great-circle blend."""
    out = torch.empty_like(a)
    for c in range(a.shape[0]):
        for x in range(a.shape[2]):
            u, v = a[c, :, x].double(), b[c, :, x].double()
            cos = float((u / u.norm()) @ (v / v.norm()))
            omega = math.acos(cos)
            out[c, :, x] = (math.sin((1 - t) * omega) * u + math.sin(t * omega) * v) / math.sin(omega)
    return out


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_matches_the_formula(t):
    a, b = plain(1), plain(2)
    assert torch.allclose(slerp(t, a, b), reference_slerp(t, a, b), atol=1e-5)


def test_slerp_of_nearly_equal_noise_is_a1111s_linear_mix():
    a = plain(1)
    b = a + 1e-4 * plain(2)
    assert torch.allclose(slerp(0.3, a, b), 0.3 * a + 0.7 * b)


def test_strength_zero_is_the_seed_and_one_is_the_subseed():
    assert torch.equal(initial_noise([5], [9], 0.0, SHAPE)[0], plain(5))
    assert torch.allclose(initial_noise([5], [9], 1.0, SHAPE)[0], plain(9), atol=1e-6)
    halfway = initial_noise([5, 6], [9, 10], 0.5, SHAPE)
    assert torch.allclose(halfway[1], reference_slerp(0.5, plain(6), plain(10)), atol=1e-5)


def test_seed_resize_pastes_the_smaller_draw_centred():
    noise = initial_noise([5], [9], 0.0, SHAPE, resize_from=(4, 6))[0]
    small, full = plain(5, (4, 4, 6)), plain(5)
    assert torch.equal(noise[:, 2:6, 1:7], small)
    assert torch.equal(noise[:, 0, :], full[:, 0, :]) and torch.equal(noise[:, :, 0], full[:, :, 0])


def test_seed_resize_from_a_larger_size_crops_its_centre():
    noise = initial_noise([5], [9], 0.0, SHAPE, resize_from=(12, 8))[0]
    assert torch.equal(noise, plain(5, (4, 12, 8))[:, 2:10, :])


def test_variation_through_the_real_pipeline(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    seed_only, _ = run(backend, request_for(tiny_sd15_dir, seed=5))
    subseed_only, _ = run(backend, request_for(tiny_sd15_dir, seed=9))
    full, _ = run(backend, request_for(tiny_sd15_dir, seed=5, subseed=9, subseed_strength=1.0))
    tiny, _ = run(backend, request_for(tiny_sd15_dir, seed=5, subseed=9, subseed_strength=1e-7))
    half, _ = run(backend, request_for(tiny_sd15_dir, seed=5, subseed=9, subseed_strength=0.5))
    half_again, _ = run(backend, request_for(tiny_sd15_dir, seed=5, subseed=9, subseed_strength=0.5))
    assert np.abs(pixels(full.images[0]).astype(int) - pixels(subseed_only.images[0]).astype(int)).max() <= 1
    assert np.abs(pixels(tiny.images[0]).astype(int) - pixels(seed_only.images[0]).astype(int)).max() <= 1
    assert np.array_equal(pixels(half.images[0]), pixels(half_again.images[0]))
    assert not np.array_equal(pixels(half.images[0]), pixels(seed_only.images[0]))
    assert not np.array_equal(pixels(half.images[0]), pixels(subseed_only.images[0]))


def test_random_subseed_is_drawn_once_when_variation_is_on():
    made = GenerationRequest(prompt="p", model="m", seed=3, subseed_strength=0.2).with_seed()
    assert made.subseed >= 0
    off = GenerationRequest(prompt="p", model="m", seed=3).with_seed()
    assert off.subseed == -1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"subseed_strength": 1.5}, "variation strength"),
        ({"subseed": -5}, "variation seed"),
        ({"seed_resize_from_w": 512}, "both a width and a height"),
        ({"seed_resize_from_w": 500, "seed_resize_from_h": 512}, "multiple of 8"),
        ({"tiling": "yes"}, "tiling"),
    ],
)
def test_bad_variation_values_get_one_line_errors(change, message):
    with pytest.raises(InvalidRequest, match=message):
        GenerationRequest(prompt="p", model="m", **change).validate()


VARIED = GenerationRequest(
    prompt="a cat", model="v1-5-pruned-emaonly", seed=99, subseed=123, subseed_strength=0.35,
    seed_resize_from_w=768, seed_resize_from_h=512, tiling=True,
)


def test_parameters_text_has_a1111s_keys_for_each_image():
    text = format_parameters(replace(VARIED, batch_size=2), 100, SD15, VERSION, batch_pos=1)
    assert ("Variation seed: 124, Variation seed strength: 0.35, Seed resize from: 768x512, "
            "Batch size: 2, Batch pos: 1, Tiling: True") in text


def test_png_round_trip_keeps_variation_and_tiling(tmp_path: Path):
    path = save_png(tmp_path / "image.png", png_text_chunks(VARIED, 99, SD15, VERSION, batch_pos=0))
    assert read_image_metadata(path).request == replace(VARIED, model=SD15.name)
    a1111 = interpret_chunks({"parameters": format_parameters(VARIED, 99, SD15, VERSION)})
    assert a1111.format == "a1111" and a1111.request == replace(VARIED, model=SD15.name)


def test_a1111_text_without_variation_keeps_it_off():
    found = interpret_chunks({"parameters": "a cat\nSteps: 20, Seed: 5, Size: 512x512, Variation seed: 7"})
    assert (found.request.subseed_strength, found.request.tiling) == (0.0, False)
