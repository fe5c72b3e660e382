"""fp8 safetensors transformers: detected ("fp8 e4m3fn" in the library row), loaded with their layers
stored in fp8 and computed at full precision (diffusers' layer-wise casting), never cast up whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_flux, bare_image
from tests.support.tiny_dit import build_tiny_flux, config_folder, flux_to_bfl, save_pipeline

# The fp8 image against the full-precision one: the mean difference per channel, in 0-255 levels.
# e4m3 keeps 3 mantissa bits (about 6% relative error a weight), e5m2 2; the tiny random model's
# images agree to 0.8 (e4m3fn) and 1.6 (e5m2) levels on average; another seed is 43 levels away.
MEAN_TOLERANCE = {"float8_e4m3fn": 2.0, "float8_e5m2": 4.0}


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp8")
    pipe = build_tiny_flux()
    return {"pipe": pipe, "folder": save_pipeline(pipe, tmp / "flux"), "config": config_folder(pipe, tmp / "config"),
            "tmp": tmp}  # fmt: skip


def fp8_file(state, path, storage):
    # 2-D weights in fp8, biases and norm scales at full precision, as shared fp8 checkpoints hold them.
    kind = getattr(torch, storage)
    save_file({k: (v.to(kind) if v.ndim == 2 else v).contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize(("storage", "shown"), [("float8_e4m3fn", "fp8 e4m3fn"), ("float8_e5m2", "fp8 e5m2")])
def test_fp8_file_stays_fp8_and_is_close_to_full_precision(flux, tmp_path, storage, shown):
    pipe = flux["pipe"]
    path = fp8_file(
        {"model.diffusion_model." + k: v for k, v in flux_to_bfl(pipe.transformer.state_dict()).items()},
        tmp_path / "flux-fp8.safetensors", storage,
    )  # fmt: skip
    arch = detect_model(path)
    assert arch.dit.fp8_storage == storage
    record = Library(AppPaths.for_root(tmp_path / "lib").ensure()).import_path(path, "model", name="f8")
    assert record.shown_architecture.endswith(f", {shown}")

    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    request = request_for(path, negative_prompt="", distilled_cfg_scale=3.5, model_config=str(flux["config"]),
                          text_encoders=str(flux["folder"]))  # fmt: skip
    batch, _ = run(backend, request)
    # Stored as fp8 while loaded and after the run; the layers computed in float32.
    stored = backend._pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert stored.dtype == getattr(torch, storage)
    got = pixels(batch.images[0])

    # Bare diffusers with the same fp8 weights and the same layer-wise casting: the same pixels.
    bare_path = fp8_file(dict(pipe.transformer.state_dict()), tmp_path / "diffusers-fp8.safetensors", storage)
    bare = FluxTransformer2DModel.from_single_file(
        str(bare_path), config=str(flux["config"]), subfolder="transformer", local_files_only=True,
        dtype=torch.float32,
    )  # fmt: skip
    bare.enable_layerwise_casting(storage_dtype=getattr(torch, storage), compute_dtype=torch.float32)
    extra = {"guidance_scale": 3.5, "max_sequence_length": 512}
    assert np.array_equal(got, bare_image(bare_flux(flux["folder"], bare), request, **extra))

    full = bare_image(bare_flux(flux["folder"]), request, **extra)
    difference = np.abs(got.astype(float) - full.astype(float)).mean()
    assert 0 < difference < MEAN_TOLERANCE[storage], difference
