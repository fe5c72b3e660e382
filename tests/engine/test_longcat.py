"""LongCat-Image (Meituan's 6B model: Flux.1's blocks reading Qwen2.5-VL 7B, Flux's VAE): a tiny random model as a
diffusers folder, detected from its tensors and run offline through Marble, pixel-identical to bare diffusers with the
same seed; its damaged files, components, library encoder and LoRAs. diffusers' pipeline takes no step callback:
Marble's previews, progress and cancel come through the scheduler's step (backends/families_longcat.py). Its
transformer files (its release's names and Comfy-Org's Flux BFL names), GGUF and image to image:
test_flux_like_families.py, with Ovis-Image's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import LongCatImagePipeline

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import cancel_at_step_two, make_backend, pixels, request_for, run
from tests.support.tiny_longcat import build_tiny_longcat, save_transformer

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def longcat(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("longcat")
    pipe = build_tiny_longcat()
    folder = tmp / "LongCat-Image"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return {
        "pipe": pipe,
        "folder": folder,
        "tmp": tmp,
        "diffusers": save_transformer(pipe, tmp / "longcat-image-diffusers.safetensors"),
        "comfy": save_transformer(pipe, tmp / "longcat_image_bf16.safetensors", comfy=True, prefix=PREFIX),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipe(folder, transformer=None) -> LongCatImagePipeline:
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = LongCatImagePipeline.from_pretrained(str(folder), local_files_only=True, text_processor=None, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(pipe, request, **extra) -> np.ndarray:
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        width=request.width, height=request.height, guidance_scale=request.cfg_scale, enable_prompt_rewrite=False,
        generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
    ).images[0])  # fmt: skip


def test_a_longcat_folder_is_detected_and_matches_bare_diffusers(paths, longcat):
    arch = detect_model(longcat["folder"])
    found = (arch.family, arch.dit.layout, arch.config_name, arch.label)
    assert found == ("longcat-image", "diffusers", "longcat-image", "LongCat-Image")
    request = request_for(longcat["folder"], steps=3, cfg_scale=4.5, width=96)  # not square: rows and columns apart
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(bare_pipe(longcat["folder"]), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # Progress and previews through the scheduler's step (the pipeline has no callback of its own).
    assert [(step.step, step.total) for step in steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(step.preview is not None for step in steps)
    assert steps[-1].preview.shape[:2] == (64 // 4, 96 // 4)  # the tiny VAE's latents, a quarter of the sides
    assert batch.notes == ()
    # CFG 1 runs without guidance: the negative prompt unused, and the job says so.
    plain_request = request_for(longcat["folder"], steps=3, cfg_scale=1.0, width=96)
    plain, _ = run(make_backend(paths), plain_request)
    assert np.array_equal(pixels(plain.images[0]), bare_image(bare_pipe(longcat["folder"]), plain_request))
    assert not np.array_equal(pixels(plain.images[0]), expected)
    assert plain.notes == ("LongCat-Image uses a negative prompt only with CFG above 1; the negative prompt was "
                           "ignored.",)  # fmt: skip


def test_the_step_callback_sees_each_step_replaces_latents_and_leaves_the_scheduler_as_it_was(longcat):
    from desktop.engine.backends import families_longcat

    bare = bare_pipe(longcat["folder"])
    pipe = families_longcat.pipeline_class()(**bare.components)
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="a cat", num_inference_steps=3, width=64, height=64, guidance_scale=1.0,
                enable_prompt_rewrite=False, output_type="latent")  # fmt: skip
    seen = []

    def record(p, i, t, tensors):
        seen.append((i, float(t), tensors["latents"].clone()))
        return {}

    out = pipe(**call, generator=torch.Generator().manual_seed(3), callback_on_step_end=record).images
    want = bare(**call, generator=torch.Generator().manual_seed(3)).images
    assert torch.equal(out, want)  # a callback that changes nothing changes nothing
    assert [i for i, _, _ in seen] == [0, 1, 2]
    assert [t for _, t, _ in seen] == pytest.approx([float(t) for t in pipe.scheduler.timesteps])
    assert torch.equal(seen[-1][2], out)  # each step's new latents
    assert "step" not in vars(pipe.scheduler)  # the scheduler's own step again
    # What a callback returns replaces the step's latents (inpainting puts the source back this way).
    zeroed = pipe(**call, generator=torch.Generator().manual_seed(3),
                  callback_on_step_end=lambda p, i, t, tensors: {"latents": tensors["latents"] * 0}).images
    assert torch.count_nonzero(zeroed) == 0
    # A wrapper already on the step (the preview's x0 watcher) is put back, not dropped.
    watcher = pipe.scheduler.step
    pipe.scheduler.step = lambda *a, **k: watcher(*a, **k)
    wrapped = pipe.scheduler.step
    pipe(**call, generator=torch.Generator().manual_seed(3), callback_on_step_end=record)
    assert pipe.scheduler.step is wrapped


def test_a_job_is_cancelled_at_a_step(paths, longcat):
    backend = make_backend(paths)
    request = request_for(longcat["folder"], steps=4, cfg_scale=4.5)
    cancel_at_step_two(backend, request)
    # The pipeline's scheduler is left unwrapped: the next job runs as diffusers does.
    batch, _ = run(backend, request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_pipe(longcat["folder"]), request))


def test_damaged_files_and_wrong_components_are_refused_by_name(paths, longcat, tmp_path):
    pipe = longcat["pipe"]
    middle = save_transformer(pipe, tmp_path / "my-longcat.safetensors", comfy=True, prefix=PREFIX,
                              drop="single_blocks.0.")  # fmt: skip
    with pytest.raises(ModelError, match=r"my-longcat\.safetensors looks like LongCat-Image but single_blocks\.0 is "
                                         r"missing"):  # fmt: skip
        detect_model(middle)
    headless = save_transformer(pipe, tmp_path / "headless.safetensors", drop="x_embedder.")
    with pytest.raises(ModelError, match=r"headless\.safetensors looks like LongCat-Image but x_embedder\.weight"):
        detect_model(headless)
    # Without its time embedder nothing says LongCat-Image: a BFL file without vector_in is then a damaged Flux.1 one.
    timeless = save_transformer(pipe, tmp_path / "timeless.safetensors", comfy=True, drop="time_in.")
    with pytest.raises(ModelError, match=r"timeless\.safetensors looks like Flux\.1 but time_in\.in_layer\.weight is "
                                         r"missing"):  # fmt: skip
        detect_model(timeless)
    last = save_transformer(pipe, tmp_path / "short.safetensors", drop="single_transformer_blocks.1.")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 single blocks but the LongCat-Image config"):
        run(make_backend(paths), request_for(last, model_config=str(longcat["folder"]),
                                             text_encoders=str(longcat["folder"])))  # fmt: skip
    with pytest.raises(ModelError, match=r"Qwen2\.5-VL 7B text encoder, its tokenizer and its VAE"):
        run(make_backend(paths), request_for(longcat["diffusers"], model_config=str(longcat["folder"])))
    # Z-Image's folder: Flux's kind of VAE, but a Qwen3.
    from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, build_tiny_z_image

    zimage = tmp_path / "z-image"
    build_tiny_z_image().save_pretrained(str(zimage), safe_serialization=True)
    with pytest.raises(ModelError, match=r"are qwen3 and AutoencoderKL, but LongCat-Image needs"):
        run(make_backend(paths), request_for(longcat["diffusers"], model_config=str(longcat["folder"]),
                                             text_encoders=str(zimage)))  # fmt: skip
    # Qwen-Image's folder: the same Qwen2.5-VL, but Qwen-Image's own VAE.
    qwen = tmp_path / "qwen-image"
    build_tiny_qwen_image().save_pretrained(str(qwen), safe_serialization=True)
    with pytest.raises(ModelError, match=r"are qwen2_5_vl and AutoencoderKLQwenImage, but LongCat-Image needs"):
        run(make_backend(paths), request_for(longcat["diffusers"], model_config=str(longcat["folder"]),
                                             text_encoders=str(qwen)))  # fmt: skip


def test_an_encoder_of_another_width_is_refused_before_the_load(paths, longcat, tmp_path):
    """A folder whose Qwen2.5-VL is another size than the one the transformer reads (a 3B beside Flux's VAE) passes the
    kind check: its width refuses it, before the transformer loads."""
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(longcat["folder"], other)
    config = json.loads((other / "text_encoder" / "config.json").read_text())
    config["text_config"]["hidden_size"] = 2048
    (other / "text_encoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"its text encoder is 2048 wide, but the LongCat-Image transformer reads 16"):
        run(make_backend(paths), request_for(longcat["diffusers"], model_config=str(longcat["folder"]),
                                             text_encoders=str(other)))  # fmt: skip


def test_library_family_defaults_and_the_shipped_config(longcat):
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.library.encoder import fits_model
    from desktop.engine.resources import Resources

    assert model_family(longcat["folder"]) == "longcat-image" and model_family(longcat["comfy"]) == "longcat-image"
    assert family_defaults("longcat-image") == {"steps": 50, "cfg_scale": 4.5}
    cls = transformer_class("longcat-image")
    config = cls.load_config(str(Resources.default().config_folder("longcat-image")), subfolder="transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 6_270_668_864  # 10 + 20 blocks 3072 wide: Meituan's "6B"
    # Qwen-Image's Qwen2.5-VL 7B file serves it; Z-Image's Qwen3 does not.
    assert fits_model("qwen2.5-vl", "longcat-image") and not fits_model("qwen3", "longcat-image")
    # Flux.1 files in BFL names stay Flux.1 (they have the pooled text vector LongCat-Image lacks; schnell has no
    # guidance embedder either).
    from tests.support.tiny_dit import build_tiny_flux, save_bfl_file

    for variant in ("schnell", "dev"):
        flux = save_bfl_file(build_tiny_flux(variant), longcat["tmp"] / f"flux-{variant}-bfl.safetensors")
        assert (detect_model(flux).family, detect_model(flux).dit.variant) == ("flux", variant)


def test_a_longcat_file_runs_with_qwen_images_encoder_file_the_flux_vae_and_the_shipped_tokenizer(tmp_path):
    """ComfyUI's Qwen2.5-VL 7B file (Qwen-Image's) and Flux's ae.safetensors from the library, Marble's own Qwen
    tokenizer: bare diffusers' picture with the same model."""
    from desktop.engine.library.index import Library
    from tests.support.tiny_components import save_ae
    from tests.support.tiny_dit import config_folder
    from tests.support.tiny_qwen_encoders import save_comfy_qwen

    pipe = build_tiny_longcat(shipped=True)
    pipe.set_progress_bar_config(disable=True)
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(save_comfy_qwen(pipe.text_encoder, tmp_path / "qwen_2.5_vl_7b.safetensors"), "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "ae.safetensors"), "vae")
    model = save_transformer(pipe, tmp_path / "longcat_image_bf16.safetensors", comfy=True, prefix=PREFIX)
    request = request_for(model, steps=2, cfg_scale=4.5, prompt='a sign that says "OK", red',
                          model_config=str(config_folder(pipe, tmp_path / "config")), text_encoders="qwen_2.5_vl_7b",
                          vae="ae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    want = bare_image(pipe, request)
    assert np.array_equal(pixels(batch.images[0]), want)
    other, _ = run(make_backend(paths), replace(request, prompt='a sign that says "NO", red'))
    assert not np.array_equal(pixels(other.images[0]), want)
    with pytest.raises(ModelError, match=r"choose its VAE too .*the Flux VAE, ae\.safetensors"):
        run(make_backend(paths), replace(request, vae=""))


def test_a_long_prompt_is_said_to_be_cut(paths, longcat):
    request = request_for(longcat["folder"], steps=1, cfg_scale=1.0, negative_prompt="", prompt="x" * 600)
    batch, _ = run(make_backend(paths), request)
    assert batch.notes == ("The prompt is 600 tokens long for LongCat-Image's text encoder, which reads the first 512: "
                           "the rest had no effect. Shorten it, or put what matters first.",)  # fmt: skip
