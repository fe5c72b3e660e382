"""The hires fix for the DiT families (it was silently ignored): the first pass at the job's size, its picture
upscaled in pixels, then the family's image-to-image pipeline at the hires denoising strength, seeded with the
job's seed -- pixel-identical to doing the same by hand with bare diffusers (tiny Flux.1 dev). A family without a
plain image-to-image pipeline (Chroma) says the hires fix was ignored instead of leaving it unsaid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline
from PIL import Image

from desktop.engine.backends.base import StepInfo
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_dit_prompt_cache import encoder_calls
from tests.engine.test_model_families import bare_flux
from tests.support.tiny_chroma import build_tiny_chroma
from tests.support.tiny_dit import build_tiny_flux, build_tiny_sd3, save_pipeline
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, build_tiny_z_image

VALUES = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=4, seed=7, hires_fix=True, hires_scale=2.0,
              hires_denoise=0.5, hires_steps=6, hires_upscaler="Lanczos")  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dit-hires")
    folders = {"flux": save_pipeline(build_tiny_flux(), tmp / "flux"),
               "sd3": save_pipeline(build_tiny_sd3(), tmp / "sd3")}  # fmt: skip
    for name, build in (("chroma", build_tiny_chroma), ("qwen-image", build_tiny_qwen_image),
                        ("z-image", build_tiny_z_image)):  # fmt: skip
        build().save_pretrained(str(tmp / name), safe_serialization=True)
        folders[name] = tmp / name
    return folders


def test_flux_hires_fix_is_the_two_passes_by_hand(folders, tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(folders["flux"], **VALUES)
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (128, 128)
    assert not [note for note in batch.notes if "hires" in note.lower()]

    bare = bare_flux(folders["flux"])
    first = bare(prompt=request.prompt, num_inference_steps=4, width=64, height=64, guidance_scale=3.5,
                 generator=torch.Generator("cpu").manual_seed(7)).images[0]  # fmt: skip
    second = FluxImg2ImgPipeline(**bare.components)
    second.set_progress_bar_config(disable=True)
    expected = second(prompt=request.prompt, image=first.resize((128, 128), Image.Resampling.LANCZOS), strength=0.5,
                      num_inference_steps=6, width=128, height=128, guidance_scale=3.5,
                      generator=[torch.Generator("cpu").manual_seed(7)]).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    # One job's progress through both passes: 4 steps, then the last 3 of 6.
    assert [(s.step, s.total) for s in steps] == [(1, 7), (2, 7), (3, 7), (4, 7), (5, 7), (6, 7), (7, 7)]
    # The same job again: neither pass runs the text encoders (dit_prompt_cache.py), the same picture.
    backend = make_backend(paths)
    run(backend, request)
    calls = encoder_calls(backend)
    again, _ = run(backend, request)
    assert calls == [] and np.array_equal(pixels(again.images[0]), pixels(expected))
    # Without the hires fix, the first pass alone.
    plain, _ = run(make_backend(paths), request_for(folders["flux"], **(VALUES | {"hires_fix": False})))
    assert plain.images[0].size == (64, 64) and np.array_equal(pixels(plain.images[0]), pixels(first))


def test_a_family_without_image_to_image_says_the_hires_fix_was_ignored(folders, tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    batch, steps = run(make_backend(paths), request_for(folders["chroma"], **(VALUES | {"cfg_scale": 4.0})))
    assert batch.images[0].size == (64, 64)
    assert any("hires fix" in note and "Chroma" in note and "ignored" in note for note in batch.notes), batch.notes
    assert all(isinstance(s, StepInfo) and s.total == 4 for s in steps)


@pytest.mark.parametrize("family", ["sd3", "qwen-image", "z-image"])
def test_the_other_families_with_image_to_image_run_the_second_pass_too(folders, tmp_path, family):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(folders[family], **(VALUES | {"negative_prompt": "blurry", "cfg_scale": 4.0}))
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (128, 128) and not [n for n in batch.notes if "hires" in n.lower()]
    assert steps[-1].step == steps[-1].total > 4  # both passes counted as one job
    plain, _ = run(make_backend(paths), request_for(folders[family], **(VALUES | {"hires_fix": False})))
    assert plain.images[0].size == (64, 64)
