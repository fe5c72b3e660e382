"""FLUX.1 Kontext: a Flux.1 dev model with one reference image runs diffusers' FluxKontextPipeline on the loaded
modules -- the reference (the picture the prompt edits) read beside the noise -- pixel-identical to bare
diffusers. Kontext dev has Flux.1 dev's very tensors, so every Flux.1 dev model takes the reference (as ComfyUI
lets any Flux model read reference latents); schnell and Fill do not. What Kontext cannot run is refused."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import FluxKontextPipeline
from PIL import Image

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.dit import reference_image_limit
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_flux
from tests.support.tiny_dit import build_tiny_flux, save_pipeline

FLUX = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=3, seed=21, prompt="make the block green")


@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux-kontext")
    reference = tmp / "photo.png"
    canvas = np.zeros((48, 64, 3), dtype=np.uint8)  # 4:3, so Kontext picks its own 4:3-ish size for it
    canvas[8:30, 10:40] = (230, 40, 40)
    canvas[30:, :] = (30, 80, 160)
    Image.fromarray(canvas).save(reference)
    return {"folder": save_pipeline(build_tiny_flux(), tmp / "flux"),
            "schnell": save_pipeline(build_tiny_flux("schnell"), tmp / "schnell"), "reference": reference}  # fmt: skip


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def test_a_flux_dev_job_with_a_reference_image_is_kontext_by_hand(kontext, paths):
    assert reference_image_limit(detect_model(kontext["folder"]).dit) == 1
    assert reference_image_limit(detect_model(kontext["schnell"]).dit) == 0
    request = request_for(kontext["folder"], reference_images=(str(kontext["reference"]),), **FLUX)
    backend = make_backend(paths)
    batch, steps = run(backend, request)
    base = bare_flux(kontext["folder"])
    accepted = inspect.signature(FluxKontextPipeline.__init__).parameters
    pipe = FluxKontextPipeline(**{k: v for k, v in base.components.items() if k in accepted})
    pipe.set_progress_bar_config(disable=True)
    # Marble fits the reference to the job's size (crop and resize: 48x64 -> 64x64 keeps the middle 48 columns)
    # rather than to Kontext's trained ~1 MP sizes.
    photo = Image.open(kontext["reference"]).convert("RGB")
    fitted = photo.resize((85, 64), Image.Resampling.LANCZOS).crop((10, 0, 74, 64))
    expected = pipe(prompt="make the block green", image=fitted, _auto_resize=False, max_area=64 * 64,
                    num_inference_steps=3,
                    width=64, height=64, guidance_scale=3.5, max_sequence_length=512,
                    generator=torch.Generator("cpu").manual_seed(21)).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected)) and len(steps) == 3
    # The reference counts: without it, plain Flux.1's picture.
    plain, _ = run(backend, request_for(kontext["folder"], **FLUX))
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))


def test_what_kontext_cannot_run_is_refused(kontext, paths, tmp_path):
    reference = (str(kontext["reference"]),)
    backend = make_backend(paths)
    with pytest.raises(ModelError, match="2 reference images: Flux.1 dev takes at most 1"):
        run(backend, request_for(kontext["folder"], reference_images=reference * 2, **FLUX))
    with pytest.raises(ModelError, match="without a source image: the reference is the picture the prompt edits"):
        run(backend, request_for(kontext["folder"], reference_images=reference, init_image=str(kontext["reference"]),
                                 strength=0.5, **FLUX))  # fmt: skip
    unit = ControlUnit("edges", str(kontext["reference"]))
    with pytest.raises(ModelError, match="without ControlNet units"):
        run(backend, request_for(kontext["folder"], reference_images=reference, controls=(unit,), **FLUX))
    with pytest.raises(ModelError, match="reads no reference images. Flux.2 .* FLUX.1 Kontext"):
        run(backend, request_for(kontext["schnell"], reference_images=reference, **(FLUX | {"steps": 2})))


def test_a_kontext_job_keeps_its_own_size(kontext, paths):
    # FluxKontextPipeline rescales its output to a megapixel unless told the job's area.
    request = request_for(kontext["folder"], reference_images=(str(kontext["reference"]),), width=96, height=64,
                          **FLUX)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert batch.images[0].size == (96, 64)


def test_bfls_kontext_folder_is_a_flux_dev_model_that_reads_a_reference(kontext, paths, tmp_path):
    # BFL's FLUX.1-Kontext-dev folder says FluxKontextPipeline in its model_index.json: the same Flux.1 dev
    # tensors, so the same model for Marble (it was refused as an unknown folder).
    base = bare_flux(kontext["folder"])
    accepted = inspect.signature(FluxKontextPipeline.__init__).parameters
    folder = save_pipeline(FluxKontextPipeline(**{k: v for k, v in base.components.items() if k in accepted}),
                           tmp_path / "FLUX.1-Kontext-dev")  # fmt: skip
    arch = detect_model(folder)
    assert (arch.label, reference_image_limit(arch.dit)) == ("Flux.1 dev", 1)
    request = request_for(folder, reference_images=(str(kontext["reference"]),), **FLUX)
    batch, _ = run(make_backend(paths), request)
    same, _ = run(make_backend(paths), request_for(kontext["folder"], reference_images=request.reference_images,
                                                   **FLUX))  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(same.images[0]))
