"""Ovis-Image (AIDC-AI's 7B model: Flux.1's blocks with SwiGLU feed-forwards, reading Ovis 2.5's Qwen3; Flux's VAE):
a tiny random model as a diffusers folder, detected from its tensors and run offline through Marble, pixel-identical
to bare diffusers with the same seed; its damaged files, components and library encoder. Its transformer files (its
release's names and Comfy-Org's: Flux's BFL names with gate/up/down projections and `txt_norm`), GGUF and image to
image: test_flux_like_families.py, with LongCat-Image's."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import OvisImagePipeline

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_ovis import build_tiny_ovis, save_transformer

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def ovis(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ovis")
    pipe = build_tiny_ovis()
    folder = tmp / "Ovis-Image-7B"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return {
        "pipe": pipe,
        "folder": folder,
        "tmp": tmp,
        "diffusers": save_transformer(pipe, tmp / "ovis-image-diffusers.safetensors"),
        "comfy": save_transformer(pipe, tmp / "ovis_image_bf16.safetensors", comfy=True, prefix=PREFIX),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipe(folder, transformer=None) -> OvisImagePipeline:
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = OvisImagePipeline.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(pipe, request, **extra) -> np.ndarray:
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        width=request.width, height=request.height, guidance_scale=request.cfg_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
    ).images[0])  # fmt: skip


def test_an_ovis_folder_is_detected_and_matches_bare_diffusers(paths, ovis):
    arch = detect_model(ovis["folder"])
    found = (arch.family, arch.dit.layout, arch.config_name, arch.label)
    assert found == ("ovis-image", "diffusers", "ovis-image", "Ovis-Image")
    request = request_for(ovis["folder"], steps=3, cfg_scale=5.0, width=96)  # not square: rows and columns apart
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(bare_pipe(ovis["folder"]), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert [(step.step, step.total) for step in steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(step.preview is not None for step in steps) and steps[-1].preview.shape[:2] == (64 // 4, 96 // 4)
    assert batch.notes == ()
    # CFG 1 runs without guidance: the negative prompt unused, and the job says so.
    plain_request = request_for(ovis["folder"], steps=3, cfg_scale=1.0, width=96)
    plain, _ = run(make_backend(paths), plain_request)
    assert np.array_equal(pixels(plain.images[0]), bare_image(bare_pipe(ovis["folder"]), plain_request))
    assert not np.array_equal(pixels(plain.images[0]), expected)
    assert plain.notes == ("Ovis-Image uses a negative prompt only with CFG above 1; the negative prompt was "
                           "ignored.",)  # fmt: skip


def test_damaged_files_and_wrong_components_are_refused_by_name(paths, ovis, tmp_path):
    pipe = ovis["pipe"]
    middle = save_transformer(pipe, tmp_path / "my-ovis.safetensors", comfy=True, prefix=PREFIX,
                              drop="single_blocks.0.")  # fmt: skip
    with pytest.raises(ModelError, match=r"my-ovis\.safetensors looks like Ovis-Image but single_blocks\.0 is missing"):
        detect_model(middle)
    normless = save_transformer(pipe, tmp_path / "normless.safetensors", comfy=True, drop="txt_norm.")
    with pytest.raises(ModelError, match=r"normless\.safetensors looks like Ovis-Image but txt_norm\.weight is "
                                         r"missing"):  # fmt: skip
        detect_model(normless)
    headless = save_transformer(pipe, tmp_path / "headless.safetensors", drop="x_embedder.")
    with pytest.raises(ModelError, match=r"headless\.safetensors looks like Ovis-Image but x_embedder\.weight"):
        detect_model(headless)
    last = save_transformer(pipe, tmp_path / "short.safetensors", drop="single_transformer_blocks.1.")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 single blocks but the Ovis-Image config"):
        run(make_backend(paths), request_for(last, model_config=str(ovis["folder"]),
                                             text_encoders=str(ovis["folder"])))  # fmt: skip
    with pytest.raises(ModelError, match=r"Ovis 2\.5 text encoder \(a Qwen3 1\.7B\), its tokenizer and its VAE"):
        run(make_backend(paths), request_for(ovis["diffusers"], model_config=str(ovis["folder"])))
    # Z-Image's folder holds a Qwen3 and Flux's kind of VAE too: its encoder's width refuses it (Z-Image's Qwen3 4B is
    # 2560 wide, Ovis 2.5's 2048), before the transformer loads; and the other way round.
    zimage = tmp_path / "z-image"
    shutil.copytree(ovis["folder"], zimage)
    config = json.loads((zimage / "text_encoder" / "config.json").read_text())
    (zimage / "text_encoder" / "config.json").write_text(json.dumps(config | {"hidden_size": 2560}))
    with pytest.raises(ModelError, match=r"its text encoder is 2560 wide, but the Ovis-Image transformer reads 16"):
        run(make_backend(paths), request_for(ovis["diffusers"], model_config=str(ovis["folder"]),
                                             text_encoders=str(zimage)))  # fmt: skip
    from tests.support.tiny_qwen_zimage import build_tiny_z_image, save_transformer_file

    z = build_tiny_z_image()
    z_folder = tmp_path / "z-real"
    z.save_pretrained(str(z_folder), safe_serialization=True)
    z_file = save_transformer_file(dict(z.transformer.state_dict()), tmp_path / "z.safetensors")
    other = tmp_path / "ovis-wide"
    shutil.copytree(ovis["folder"], other)
    (other / "text_encoder" / "config.json").write_text(json.dumps(config | {"hidden_size": 2048}))
    with pytest.raises(ModelError, match=r"its text encoder is 2048 wide, but the Z-Image transformer reads 16"):
        run(make_backend(paths), request_for(z_file, model_config=str(z_folder), text_encoders=str(other)))


def test_library_family_defaults_and_the_shipped_config(ovis):
    from accelerate import init_empty_weights
    from transformers import Qwen3Config, Qwen3Model

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.library.encoder import fits_model
    from desktop.engine.resources import Resources

    assert model_family(ovis["folder"]) == "ovis-image" and model_family(ovis["comfy"]) == "ovis-image"
    assert family_defaults("ovis-image") == {"steps": 50, "cfg_scale": 5.0}
    folder = Resources.default().config_folder("ovis-image")
    cls = transformer_class("ovis-image")
    with init_empty_weights():
        model = cls.from_config(cls.load_config(str(folder), subfolder="transformer"))
        encoder = Qwen3Model(Qwen3Config(**json.loads((folder / "text_encoder" / "config.json").read_text())))
    assert sum(p.numel() for p in model.parameters()) == 7_370_449_728  # 6 + 27 blocks 3072 wide: AIDC-AI's "7B"
    assert sum(p.numel() for p in encoder.parameters()) == 1_720_574_976  # Qwen3 1.7B, Ovis 2.5 2B's language model
    assert fits_model("qwen3", "ovis-image") and not fits_model("qwen2.5-vl", "ovis-image")


def test_an_ovis_file_runs_with_a_qwen3_file_the_flux_vae_and_the_shipped_tokenizer(tmp_path):
    """Ovis 2.5's language model as a Qwen3 file and Flux's ae.safetensors from the library, Marble's own Qwen tokenizer
    (Qwen3's chat template): bare diffusers' picture with the same model."""
    from desktop.engine.library.index import Library
    from tests.support.tiny_components import save_ae
    from tests.support.tiny_dit import config_folder
    from tests.support.tiny_qwen_encoders import save_comfy_qwen

    pipe = build_tiny_ovis(shipped=True)
    pipe.set_progress_bar_config(disable=True)
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(save_comfy_qwen(pipe.text_encoder, tmp_path / "ovis_2.5.safetensors"), "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "ae.safetensors"), "vae")
    model = save_transformer(pipe, tmp_path / "ovis_image_bf16.safetensors", comfy=True, prefix=PREFIX)
    request = request_for(model, steps=2, cfg_scale=5.0, prompt="a red cat on a blue chair",
                          model_config=str(config_folder(pipe, tmp_path / "config")), text_encoders="ovis_2.5",
                          vae="ae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    want = bare_image(pipe, request)
    assert np.array_equal(pixels(batch.images[0]), want)
    other, _ = run(make_backend(paths), replace(request, prompt="a blue cat on a red chair"))
    assert not np.array_equal(pixels(other.images[0]), want)


def test_a_long_prompt_is_said_to_be_cut(paths, ovis):
    request = request_for(ovis["folder"], steps=1, cfg_scale=1.0, negative_prompt="", prompt="x" * 300)
    batch, _ = run(make_backend(paths), request)
    assert batch.notes == ("The prompt is 300 tokens long for Ovis-Image's text encoder, which reads the first 256: "
                           "the rest had no effect. Shorten it, or put what matters first.",)  # fmt: skip


