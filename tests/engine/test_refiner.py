"""A1111's SDXL refiner as a second pass (backends/refiner.py): the base model's latents handed over at
`refiner_switch_at`, pixel-identical to the two passes run by hand through diffusers."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

from desktop.engine.backends.base import RefinerHash
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import Cancelled, InvalidRequest, ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import model_family
from desktop.engine.metadata import format_parameters, parse_parameters, read_image_metadata, request_from_parameters
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.e2e.test_cli import in_process
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support import tiny_models
from tests.support.offload_check import assert_mode_matches_full


@pytest.fixture(scope="module")
def refiner_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refiner") / "tiny-refiner"
    return tiny_models.save_diffusers(tiny_models.build_tiny_sdxl_refiner(), folder)


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def by_hand(base_dir, refiner_dir, request):
    base = StableDiffusionXLPipeline.from_pretrained(str(base_dir), local_files_only=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(refiner_dir), local_files_only=True)
    for pipe in (base, refiner):
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
    common = dict(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                  guidance_scale=request.cfg_scale)  # fmt: skip
    latents = base(**common, height=64, width=64, denoising_end=request.refiner_switch_at, output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(request.seed)).images  # fmt: skip
    return refiner(**common, image=latents, denoising_start=request.refiner_switch_at,
                   generator=torch.Generator("cpu").manual_seed(request.seed)).images[0]  # fmt: skip


def test_refiner_is_detected_as_such_and_refused_as_a_main_model(paths, refiner_dir):
    arch = detect_model(refiner_dir)
    assert arch.refiner and arch.label == "SDXL refiner" and model_family(refiner_dir) == "sdxl-refiner"
    with pytest.raises(ModelError, match="refiner"):
        run(make_backend(paths), request_for(refiner_dir))


def test_refiner_pass_matches_the_two_passes_by_hand(paths, tiny_sdxl_dir, refiner_dir):
    request = request_for(tiny_sdxl_dir, sampler="Euler", steps=5, refiner=str(refiner_dir), refiner_switch_at=0.6)
    batch, steps = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), pixels(by_hand(tiny_sdxl_dir, refiner_dir, request)))
    # One count through both passes: 3 base steps (t >= 400) and 2 refiner steps, a preview each.
    assert [(s.step, s.total) for s in steps] == [(k, 5) for k in range(1, 6)]
    assert all(s.preview is not None for s in steps)
    assert batch.refiner == RefinerHash("tiny-refiner", None)
    plain, _ = run(make_backend(paths), request_for(tiny_sdxl_dir, sampler="Euler", steps=5))
    assert not np.array_equal(pixels(batch.images[0]), pixels(plain.images[0]))


def test_cancel_in_the_refiner_pass(paths, tiny_sdxl_dir, refiner_dir):
    request = request_for(tiny_sdxl_dir, sampler="Euler", steps=5, refiner=str(refiner_dir), refiner_switch_at=0.6)
    backend, cancel, seen = make_backend(paths), CancelToken(), []

    def on_step(info):
        seen.append(info.step)
        if info.step == 4:  # the refiner's first step
            cancel.cancel()

    backend.load(request)
    with pytest.raises(Cancelled):
        backend.generate(request, 0, on_step, cancel)
    assert seen == [1, 2, 3, 4]


def test_refiner_needs_an_sdxl_model_and_valid_fields(paths, tiny_sd15_dir, refiner_dir):
    with pytest.raises(InvalidRequest, match="SDXL"):
        run(make_backend(paths), request_for(tiny_sd15_dir, refiner=str(refiner_dir)))
    with pytest.raises(InvalidRequest, match="Refiner switch at"):
        request_for(tiny_sd15_dir, refiner="x", refiner_switch_at=1.0)


def test_refiner_metadata_is_written_as_a1111_does_and_read_back():
    request = request_for("base", refiner="xl-refiner", refiner_switch_at=0.75)
    text = format_parameters(request, 42, None, "0", refiner=RefinerHash("xl-refiner", "7440042bbd"))
    assert "Refiner: xl-refiner [7440042bbd], Refiner switch at: 0.75" in text
    back = request_from_parameters(parse_parameters(text), "base")
    assert (back.refiner, back.refiner_switch_at) == ("xl-refiner", 0.75)


def test_cli_refiner_options(tmp_path, tiny_sdxl_dir, refiner_dir):
    out = tmp_path / "r.png"
    code, _, err = in_process(
        ["generate", "--model", str(tiny_sdxl_dir), "--prompt", "a fox", "--seed", "3", "--width", "64",
         "--height", "64", "--steps", "4", "--device", "cpu", "--out", str(out), "--no-preview",
         "--home", str(tmp_path / "home"), "--refiner", str(refiner_dir), "--refiner-switch-at", "0.5"]
    )  # fmt: skip
    assert code == 0, err
    metadata = read_image_metadata(out)
    assert "Refiner: tiny-refiner, Refiner switch at: 0.5" in metadata.raw["parameters"]
    assert metadata.request.refiner == str(refiner_dir) and metadata.request.refiner_switch_at == 0.5


def test_single_file_refiner_loads_through_the_shipped_layout(paths, tmp_path, tiny_sdxl_dir, refiner_dir):
    pipe = tiny_models.build_tiny_sdxl_refiner()
    file = tiny_models.save_single_file(pipe, tmp_path / "xl-refiner.safetensors")
    assert detect_model(file).refiner
    # Resources whose sdxl-refiner config has the tiny dimensions, as the shipped one has the real ones.
    root = tmp_path / "resources"
    tiny_models.save_config_folder(pipe, root / "configs" / "sdxl-refiner")
    (root / "tokenizers").symlink_to(Resources.default().tokenizers)
    backend = DiffusersBackend(paths, Resources(root), ModelCatalog(paths.models))
    request = request_for(tiny_sdxl_dir, sampler="Euler", steps=5, refiner=str(file), refiner_switch_at=0.6)
    batch, _ = run(backend, request)
    expected = pixels(by_hand(tiny_sdxl_dir, refiner_dir, request))
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert batch.refiner.name == "xl-refiner" and len(batch.refiner.autov2) == 10
    # Converted once: its key map is in the converted-model cache, and the next start (a fresh backend) builds
    # the refiner from it over the file's bytes, without converting again, to the same pixels.
    entries = [keymap.parent.name for keymap in paths.converted_models.glob("*/keymap.json")]
    assert any(name.startswith("xl-refiner-") for name in entries), entries
    again = DiffusersBackend(paths, Resources(root), ModelCatalog(paths.models))
    with mock.patch.object(StableDiffusionXLImg2ImgPipeline, "from_single_file", side_effect=AssertionError):
        second, _ = run(again, request)
    assert np.array_equal(pixels(second.images[0]), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
def test_the_refiner_follows_the_base_into_model_offload_on_cuda(paths, tiny_sdxl_dir, refiner_dir):
    # A card that holds neither model whole beside the other: the refiner is offloaded module by module too, and
    # comes back whole when the base does.
    backend = make_backend(paths)
    values = dict(sampler="Euler", steps=5, refiner=str(refiner_dir), refiner_switch_at=0.6)
    assert_mode_matches_full(backend, tiny_sdxl_dir, "offload", **values)
    refiner = backend._refiners._pipe  # the one the jobs ran
    assert getattr(refiner.unet, "_hf_hook", None) is not None
    run(backend, request_for(tiny_sdxl_dir, memory_mode="full", device="cuda", **values))
    assert getattr(refiner.unet, "_hf_hook", None) is None and refiner.unet.device.type == "cuda"


def test_the_refiner_is_tiled_as_the_base_is(paths, tiny_sdxl_dir, refiner_dir):
    # The memory ladder's "tiled" step (chosen for large pictures, or after running out of memory) tiles the
    # refiner's VAE decode too: the refiner decodes the picture, not the base.
    backend = make_backend(paths)
    values = dict(sampler="Euler", steps=5, refiner=str(refiner_dir), refiner_switch_at=0.6)
    run(backend, request_for(tiny_sdxl_dir, memory_mode="tiled", **values))
    refiner = backend._refiners._pipe  # the one the job ran
    assert backend.memory_mode == "tiled" and refiner.vae.use_tiling
    run(backend, request_for(tiny_sdxl_dir, memory_mode="full", **values))
    assert not refiner.vae.use_tiling
