"""Image k of an edit batch is exactly the image a lone job with its seed gives (request.seed_for)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources

BATCH = 3


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    home = AppPaths.for_root(tmp_path_factory.mktemp("batch-seed-home")).ensure()
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch-seed-inputs")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "source.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    Image.fromarray(mask, "L").save(folder / "mask.png")
    return folder


def images(backend: DiffusersBackend, request: GenerationRequest) -> list[np.ndarray]:
    backend.load(request)
    batch = backend.generate(request, 0, lambda step: None, CancelToken())
    return [np.asarray(image.convert("RGB")) for image in batch.images]


CASES = [
    ("tiny_sd15_dir", "img2img", {}),
    ("tiny_sd15_dir", "inpaint", {"inpaint_fill": "original"}),
    ("tiny_sd15_dir", "inpaint", {"inpaint_fill": "latent noise", "sampler": "Euler a"}),
    ("tiny_sd15_inpaint_dir", "img2img", {}),
    ("tiny_sd15_inpaint_dir", "inpaint", {}),
    ("tiny_sdxl_dir", "img2img", {}),
    ("tiny_sdxl_dir", "inpaint", {}),
]


@pytest.mark.parametrize(("model_fixture", "mode", "extra"), CASES)
def test_each_image_of_an_edit_batch_is_the_lone_job_with_its_seed(backend, inputs, request, model_fixture, mode,
                                                                   extra):  # fmt: skip
    mask = {"mask": str(inputs / "mask.png")} if mode == "inpaint" else {}
    batch_request = GenerationRequest(
        prompt="a red circle", model=str(request.getfixturevalue(model_fixture)), steps=3, cfg_scale=7.0, seed=42,
        width=64, height=64, device="cpu", init_image=str(inputs / "source.png"), strength=0.75,
        batch_size=BATCH, **mask, **extra,
    ).validate()  # fmt: skip
    together = images(backend, batch_request)
    assert len(together) == BATCH
    for k in range(BATCH):
        alone = dataclasses.replace(batch_request, seed=batch_request.seed_for(0, k), batch_size=1)
        (lone,) = images(backend, alone)
        difference = np.abs(together[k].astype(int) - lone.astype(int))
        # Batched float maths on the CPU may round a handful of values one level apart; the seed bug this
        # guards moved whole images (tens of levels on average, 255 at worst).
        assert difference.max() <= 1 and difference.mean() < 0.01, (
            f"image {k} of the batch differs from its lone job: mean {difference.mean():.3f}, max {difference.max()}"
        )
