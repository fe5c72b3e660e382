"""The real diffusers backend on tiny real models: loading paths, determinism, previews, cancel."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from PIL import Image

from desktop.engine.backends import diffusers_backend
from desktop.engine.backends.base import StepInfo
from desktop.engine.backends.diffusers_backend import DiffusersBackend, PreviewCopies
from desktop.engine.backends.schedulers import SAMPLERS
from desktop.engine.errors import Cancelled, DeviceError, ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def make_backend(paths: AppPaths, preview_every: int = 1) -> DiffusersBackend:
    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every)


def request_for(model, **changes) -> GenerationRequest:
    values = dict(
        prompt="a red circle on a blue background",
        negative_prompt="blurry",
        model=str(model),
        steps=4,
        cfg_scale=7.0,
        seed=42,
        width=64,
        height=64,
        device="cpu",
    )
    return GenerationRequest(**(values | changes)).validate()


def run(backend: DiffusersBackend, request: GenerationRequest, cancel: CancelToken | None = None):
    steps: list[StepInfo] = []
    backend.load(request)
    batch = backend.generate(request, 0, steps.append, cancel or CancelToken())
    return batch, steps


def cancel_at_step_two(backend: DiffusersBackend, request: GenerationRequest) -> None:
    """Loads `request`'s model, cancels its job when step 2 is reported, and checks it stopped there: Cancelled, and
    no step after the second."""
    backend.load(request)
    token = CancelToken()
    seen: list[int] = []

    def on_step(info: StepInfo) -> None:
        seen.append(info.step)
        if info.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        backend.generate(request, 0, on_step, token)
    assert seen == [1, 2]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_default_sampler_matches_plain_diffusers_pixel_for_pixel(paths, tiny_sd15_dir):
    request = request_for(tiny_sd15_dir)
    batch, _ = run(make_backend(paths), request)

    plain = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        height=request.height,
        width=request.width,
    ).images[0]
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    assert batch.seeds == (42,)
    assert batch.sampler_used == "PLMS"  # the tiny model ships SD 1.5's PNDM scheduler


def test_previews_every_step_do_not_change_a_pixel(paths, tiny_sd15_dir):
    request = request_for(tiny_sd15_dir, sampler="Euler a")
    with_preview, steps = run(make_backend(paths, preview_every=1), request)
    without_preview, quiet_steps = run(make_backend(paths, preview_every=0), request)
    assert np.array_equal(pixels(with_preview.images[0]), pixels(without_preview.images[0]))
    previews = [s.preview for s in steps if s.preview is not None]
    assert [s.step for s in steps] == [1, 2, 3, 4] and len(previews) == 4
    factor = 64 // previews[0].shape[0]
    assert previews[0].shape == (64 // factor, 64 // factor, 3) and previews[0].dtype == np.uint8
    assert all(s.preview is None for s in quiet_steps)
    assert not np.array_equal(previews[0], previews[-1])  # previews follow the denoising


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_previews_lag_but_the_last_is_its_own_and_no_pixel_changes(paths, tiny_sd15_dir, monkeypatch):
    # On CUDA previews come through PreviewCopies' pinned, asynchronous copies (the seam's own tests
    # run on the CPU with a stand-in); this runs the real wiring end to end against synchronous copies.
    request = request_for(tiny_sd15_dir, sampler="Euler a", device="cuda", steps=8)
    with_preview, steps = run(make_backend(paths, preview_every=1), request)
    without_preview, _ = run(make_backend(paths, preview_every=0), request)
    monkeypatch.setattr(diffusers_backend, "PreviewCopies", lambda device: PreviewCopies("cpu"))
    _, synchronous = run(make_backend(paths, preview_every=1), request)

    assert np.array_equal(pixels(with_preview.images[0]), pixels(without_preview.images[0]))
    assert [s.step for s in steps] == list(range(1, 9))
    assert steps[0].preview is None  # its copy is still on the GPU's queue
    assert np.array_equal(steps[-1].preview, synchronous[-1].preview)
    own = [s.preview for s in synchronous]
    for index, step in enumerate(steps[:-1]):
        if step.preview is not None:  # a copy started at an earlier step
            assert any(np.array_equal(step.preview, earlier) for earlier in own[:index])


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "LCMScheduler"])
def test_preview_uses_the_schedulers_own_clean_estimate(name):
    import diffusers

    from desktop.engine.backends.diffusers_backend import _X0Watcher

    def fresh():
        scheduler = getattr(diffusers, name)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        scheduler.set_timesteps(5)
        return scheduler

    watched, twin = fresh(), fresh()
    watcher = _X0Watcher(watched)
    generator = torch.Generator().manual_seed(0)
    sample, noise = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    t = watched.timesteps[0]
    # LCM adds fresh noise at each step: give both runs the same generator.
    prev = watched.step(noise, t, sample, return_dict=False, generator=torch.Generator().manual_seed(5))[0]
    output = twin.step(noise, t, sample, generator=torch.Generator().manual_seed(5))
    assert torch.equal(prev, output.prev_sample)  # the wrapper hands back exactly what step made
    reference = getattr(output, "pred_original_sample", None)
    if reference is None:
        reference = getattr(output, "denoised", None)
    if reference is None:
        reference = twin.model_outputs[-1]
    assert torch.equal(watcher.predicted_x0(prev), reference)
    watcher.detach()
    assert "step" not in vars(watched)


def test_preview_for_plms_matches_ddims_clean_estimate():
    """PNDM reports no x0; the watcher derives it as DDIM does, from the noise prediction."""
    from diffusers import DDIMScheduler, PNDMScheduler

    from desktop.engine.backends.diffusers_backend import _X0Watcher

    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False)
    pndm, ddim = PNDMScheduler(skip_prk_steps=True, **config), DDIMScheduler(clip_sample=False, **config)
    pndm.set_timesteps(10)
    ddim.set_timesteps(10)
    generator = torch.Generator().manual_seed(1)
    sample, noise = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    t = pndm.timesteps[0]
    watcher = _X0Watcher(pndm)
    prev = pndm.step(noise, t, sample, return_dict=False)[0]
    reference = ddim.step(noise, t, sample).pred_original_sample
    assert torch.allclose(watcher.predicted_x0(prev), reference, atol=1e-5)


@pytest.mark.parametrize("sampler", ["default", "Euler a", "DPM++ 2M SDE Karras"])
def test_same_seed_same_pixels_other_seed_other_pixels(paths, tiny_sd15_dir, sampler):
    backend = make_backend(paths)
    a, _ = run(backend, request_for(tiny_sd15_dir, seed=7, sampler=sampler))
    torch.manual_seed(999)  # the global generator must play no part
    b, _ = run(backend, request_for(tiny_sd15_dir, seed=7, sampler=sampler))
    c, _ = run(backend, request_for(tiny_sd15_dir, seed=8, sampler=sampler))
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert not np.array_equal(pixels(a.images[0]), pixels(c.images[0]))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_with_a_preview_per_step(paths, tiny_sd15_dir, sampler):
    request = request_for(tiny_sd15_dir, sampler=sampler, steps=3)
    batch, steps = run(make_backend(paths), request)
    image = pixels(batch.images[0])
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert steps and steps[-1].step == steps[-1].total >= 3
    assert all(s.preview is not None for s in steps)
    assert batch.sampler_used == sampler


def test_plms_is_compvis_plms_on_a_model_whose_scheduler_is_not_pndm(paths, tiny_sd15_dir, tmp_path):
    # A1111's PLMS steps Adams-Bashforth from the first step (diffusers' skip_prk_steps, which SD 1.x's PNDM config
    # sets). Made from a DDIM config that lacks it (the demo model's), PNDM warmed up with Runge-Kutta steps: another
    # sampler, 10 calls for 3 steps instead of 4, and a crash below 4 steps with linspace spacing (PixArt's).
    folder = shutil.copytree(tiny_sd15_dir, tmp_path / "ddim")
    demo = json.loads((Resources.default().demo_model / "scheduler" / "scheduler_config.json").read_text())
    assert "skip_prk_steps" not in demo
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(demo | {"prediction_type": "epsilon"}))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"scheduler": ["diffusers", "DDIMScheduler"]}))
    request = request_for(folder, sampler="PLMS", steps=3)
    batch, steps = run(make_backend(paths), request)
    assert [s.step for s in steps] == [1, 2, 3, 4]  # PLMS's warm-up step, then one call a step
    bare = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    bare.set_progress_bar_config(disable=True)
    bare.scheduler = PNDMScheduler.from_config(bare.scheduler.config, skip_prk_steps=True)
    expected = bare(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=3, guidance_scale=7.0,
        height=64, width=64, generator=torch.Generator("cpu").manual_seed(42),
    ).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


def test_cancel_stops_within_one_step(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    cancel_at_step_two(backend, request_for(tiny_sd15_dir, steps=10))
    # The backend is ready for the next job after a cancel.
    batch, _ = run(backend, request_for(tiny_sd15_dir, steps=2))
    assert len(batch.images) == 1


def test_pipeline_is_reused_for_the_same_model(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    first = backend.load(request_for(tiny_sd15_dir))
    second = backend.load(request_for(tiny_sd15_dir, prompt="another prompt", sampler="DDIM"))
    assert not first.reused and second.reused
    assert first.model.architecture == "sd15" and first.model.hash is None


def test_single_file_converts_once_and_matches_the_folder(paths, tiny_sd15_dir, tiny_sd15_single):
    single, config = tiny_sd15_single
    folder_result, _ = run(make_backend(paths), request_for(tiny_sd15_dir))
    request = request_for(single, model_config=str(config))
    first = make_backend(paths)
    first_result, _ = run(first, request)
    converted = list(paths.converted_models.iterdir())
    assert len(converted) == 1 and (converted[0] / "model_index.json").is_file()
    stamp = (converted[0] / "model_index.json").stat().st_mtime_ns
    again, _ = run(make_backend(paths), request)
    assert (converted[0] / "model_index.json").stat().st_mtime_ns == stamp  # loaded from the cache
    assert np.array_equal(pixels(first_result.images[0]), pixels(folder_result.images[0]))
    assert np.array_equal(pixels(again.images[0]), pixels(folder_result.images[0]))
    model = first.model_info
    assert model is not None and model.hash is not None and len(model.hash) == 10


def test_sdxl_folder_and_single_file(paths, tiny_sdxl_dir, tiny_sdxl_single):
    single, config = tiny_sdxl_single
    from_folder, steps = run(make_backend(paths), request_for(tiny_sdxl_dir, sampler="Euler"))
    from_file, _ = run(make_backend(paths), request_for(single, model_config=str(config), sampler="Euler"))
    assert pixels(from_folder.images[0]).shape == (64, 64, 3)
    assert np.array_equal(pixels(from_folder.images[0]), pixels(from_file.images[0]))
    assert len(steps) == 4 and steps[-1].preview is not None


def test_batch_size_and_seed_per_image(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    request = request_for(tiny_sd15_dir, batch_size=2, batch_count=2, seed=100)
    backend.load(request)
    second_batch = backend.generate(request, 1, lambda _: None, CancelToken())
    assert second_batch.seeds == (102, 103) and len(second_batch.images) == 2
    alone = backend.generate(request_for(tiny_sd15_dir, seed=102), 0, lambda _: None, CancelToken())
    # Batched convolutions may round differently; the image must still be the same picture.
    difference = np.abs(pixels(second_batch.images[0]).astype(int) - pixels(alone.images[0]).astype(int))
    assert difference.max() <= 2


def test_clip_skip_changes_the_image(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    plain, _ = run(backend, request_for(tiny_sd15_dir))
    skipped, _ = run(backend, request_for(tiny_sd15_dir, clip_skip=2))
    assert not np.array_equal(pixels(plain.images[0]), pixels(skipped.images[0]))


def test_missing_model(paths):
    with pytest.raises(ModelError, match="No model named 'no-such-model'"):
        make_backend(paths).load(request_for("no-such-model"))


def test_pickle_named_safetensors_is_refused_and_never_unpickled(paths, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    fake = paths.models / "evil.safetensors"
    fake.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ModelError, match="pickled PyTorch checkpoint"):
        make_backend(paths).load(request_for("evil"))
    assert not marker.exists()


def test_truncated_safetensors(paths, tiny_sd15_single):
    single, config = tiny_sd15_single
    cut = paths.models / "cut.safetensors"
    data = single.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        make_backend(paths).load(request_for("cut", model_config=str(config)))


def test_unknown_architecture(paths):
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)},
              str(paths.models / "lora.safetensors"))
    with pytest.raises(ModelError, match="unknown architecture"):
        make_backend(paths).load(request_for("lora"))


def test_inpainting_model_is_refused_for_text_to_image(paths, tiny_sd15_inpaint_dir):
    with pytest.raises(ModelError, match="inpainting model"):
        make_backend(paths).load(request_for(tiny_sd15_inpaint_dir))


def test_missing_device_and_unsupported_precision(paths, tiny_sd15_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA GPU is available"):
        make_backend(paths).load(request_for(tiny_sd15_dir, device="cuda"))
    with pytest.raises(DeviceError, match="fp16 is not supported on the CPU"):
        make_backend(paths).load(request_for(tiny_sd15_dir, precision="fp16"))
