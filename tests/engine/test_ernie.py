"""ERNIE-Image (Baidu's 8B model and its 8-step Turbo): a tiny random model as a diffusers folder, as a
transformer-only file (ComfyUI's, with and without its prefix) and as a GGUF; detected from its tensors and run
offline through Marble, pixel-identical to bare diffusers with the same seed."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import ErnieImagePipeline, ErnieImageTransformer2DModel, GGUFQuantizationConfig
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.flow_edit_checks import (
    check_the_tail_of_text_to_image,
    latent_hires_by_hand,
    normalised_vae_patches,
)
from tests.support.tiny_dit import save_gguf
from tests.support.tiny_dit_loras import lora_on, trainer_form
from tests.support.tiny_ernie import build_tiny_ernie
from tests.support.tiny_flux2 import build_tiny_flux2_dev
from tests.support.tiny_krea2 import build_tiny_krea2
from tests.support.tiny_longcat import build_tiny_longcat
from tests.support.tiny_qwen_zimage import save_transformer_file

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def ernie(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ernie")
    pipe = build_tiny_ernie()
    folder = tmp / "ERNIE-Image"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": folder,
        "comfy": save_transformer_file(state, tmp / "ernie-image.safetensors", prefix=PREFIX),
        "bare": save_transformer_file(state, tmp / "ernie-image-bare.safetensors"),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipe(folder, transformer=None) -> ErnieImagePipeline:
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = ErnieImagePipeline.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(pipe, request, **extra) -> np.ndarray:
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        width=request.width, height=request.height, guidance_scale=request.cfg_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
    ).images[0])  # fmt: skip


def test_an_ernie_folder_is_detected_and_matches_bare_diffusers(paths, ernie):
    arch = detect_model(ernie["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.label) == ("ernie-image", "diffusers", "ernie-image",
                                                                            "ERNIE-Image")  # fmt: skip
    # Not square (rows and columns apart), 104 wide: a multiple of the pipeline's factor (8 for the tiny model, 16 for
    # the real one) but not of twice it, which the other DiTs' sides are multiples of.
    request = request_for(ernie["folder"], steps=3, cfg_scale=4.0, width=104)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(bare_pipe(ernie["folder"]), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == 3 and all(step.preview is not None for step in steps)
    assert [(step.step, step.total) for step in steps] == [(1, 3), (2, 3), (3, 3)]  # its pipeline keeps no count
    # The VAE's own latent grid, unpatchified (the tiny VAE's is a quarter of the picture's sides, the real one's an
    # eighth).
    assert steps[-1].preview.shape[:2] == (64 // 4, 104 // 4)
    assert batch.notes == ()
    # CFG 1 (Turbo's) runs without guidance: the negative prompt unused, and the job says so.
    plain_request = request_for(ernie["folder"], steps=3, cfg_scale=1.0, width=104)
    plain, _ = run(make_backend(paths), plain_request)
    assert np.array_equal(pixels(plain.images[0]), bare_image(bare_pipe(ernie["folder"]), plain_request))
    assert not np.array_equal(pixels(plain.images[0]), expected)
    assert plain.notes == ("ERNIE-Image uses a negative prompt only with CFG above 1; the negative prompt was "
                           "ignored.",)  # fmt: skip


@pytest.mark.parametrize("layout", ["comfy", "bare"])
def test_transformer_files_match_with_the_folders_components(paths, ernie, layout):
    arch = detect_model(ernie[layout])
    assert (arch.family, arch.dit.layout, arch.dit.blocks, arch.config_name) == ("ernie-image", "diffusers", (2, 0),
                                                                                 "ernie-image")  # fmt: skip
    assert arch.dit.needs_components
    request = request_for(ernie[layout], steps=3, cfg_scale=4.0, model_config=str(ernie["folder"]),
                          text_encoders=str(ernie["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_pipe(ernie["folder"]), request))


def test_an_ernie_gguf_matches_diffusers_gguf_loading(paths, ernie, tmp_path):
    path = save_gguf(dict(ernie["pipe"].transformer.state_dict()), tmp_path / "ernie-image-Q8_0.gguf",
                     arch="ernie_image")  # fmt: skip
    arch = detect_model(path)
    assert (arch.family, arch.dit.quantization) == ("ernie-image", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=4.0, model_config=str(ernie["folder"]),
                          text_encoders=str(ernie["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    transformer = ErnieImageTransformer2DModel.from_single_file(
        str(path), config=str(ernie["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    expected = bare_image(bare_pipe(ernie["folder"], transformer), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(bare_pipe(ernie["folder"]), request))  # the quantisation shows


def test_damaged_files_and_wrong_components_are_refused_by_name(paths, ernie, tmp_path):
    state = dict(ernie["pipe"].transformer.state_dict())
    middle = save_transformer_file(state, tmp_path / "my-ernie.safetensors", prefix=PREFIX, drop="layers.0")
    with pytest.raises(ModelError, match=r"my-ernie\.safetensors looks like ERNIE-Image but layers\.0 is missing"):
        detect_model(middle)
    headless = save_transformer_file({k: v for k, v in state.items() if not k.startswith("x_embedder.")},
                                     tmp_path / "headless.safetensors")  # fmt: skip
    with pytest.raises(ModelError, match=r"headless\.safetensors looks like ERNIE-Image but x_embedder\.proj\.weight"):
        detect_model(headless)
    last = save_transformer_file(state, tmp_path / "short.safetensors", drop="layers.1")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 main blocks but the ERNIE-Image config"):
        run(make_backend(paths), request_for(last, model_config=str(ernie["folder"]),
                                             text_encoders=str(ernie["folder"])))  # fmt: skip
    with pytest.raises(ModelError, match=r"Ministral 3 3B text encoder, its tokenizer and its VAE"):
        run(make_backend(paths), request_for(ernie["bare"], model_config=str(ernie["folder"])))
    krea = tmp_path / "krea2"
    build_tiny_krea2().save_pretrained(str(krea), safe_serialization=True)
    with pytest.raises(ModelError, match=r"are qwen3_vl and AutoencoderKLQwenImage, but ERNIE-Image needs"):
        run(make_backend(paths), request_for(ernie["bare"], model_config=str(ernie["folder"]),
                                             text_encoders=str(krea)))  # fmt: skip
    # Flux.2 dev's folder holds a Mistral 3 and Flux.2's VAE too, but its encoder is another width (Mistral Small).
    dev = tmp_path / "flux2-dev"
    build_tiny_flux2_dev().save_pretrained(str(dev), safe_serialization=True)
    with pytest.raises(ModelError, match=r"its text encoder is 16 wide, but the ERNIE-Image transformer reads 24"):
        run(make_backend(paths), request_for(ernie["bare"], model_config=str(ernie["folder"]),
                                             text_encoders=str(dev)))  # fmt: skip


def test_library_family_defaults_and_the_shipped_config(ernie):
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.resources import Resources

    assert model_family(ernie["folder"]) == "ernie-image" and model_family(ernie["comfy"]) == "ernie-image"
    assert family_defaults("ernie-image") == {"steps": 50, "cfg_scale": 4.0}
    cls = transformer_class("ernie-image")
    config = cls.load_config(str(Resources.default().config_folder("ernie-image")), subfolder="transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 8_033_490_048  # 36 layers 4096 wide: Baidu's "8B"
    # The shipped Ministral 3 3B config's language model (what a library file is loaded as): its published 3.4B.
    from desktop.engine.backends import mistral_encoder

    text = mistral_encoder.settings(Resources.default().config_folder("ernie-image") / "text_encoder")
    with init_empty_weights():
        language = mistral_encoder.model_class(text)(text)
    assert type(language).__name__ == "Ministral3Model"
    assert sum(p.numel() for p in language.parameters()) == 3_429_006_336
    # Ministral 3 3B and Mistral Small are both Mistrals by their tensors: the window offers each to its own model.
    from desktop.engine.library.encoder import EncoderInfo, fits_model

    def family(width: int) -> str:
        return EncoderInfo("mistral3", width, 26, "transformers", "model.", "BF16", 0).family

    assert (family(3072), family(5120)) == ("ministral3", "mistral3")
    assert fits_model("ministral3", "ernie-image") and not fits_model("mistral3", "ernie-image")
    assert fits_model("mistral3", "flux2-dev") and not fits_model("ministral3", "flux2-dev")


def test_image_to_image_and_inpainting(paths, ernie, tmp_path):
    from diffusers.utils.torch_utils import randn_tensor

    from desktop.engine.backends.families import own_edit_pipeline

    pipe = bare_pipe(ernie["folder"])
    edit = own_edit_pipeline(pipe, "ernie-image")
    source = Image.new("RGB", (96, 64), (200, 40, 40))
    call = dict(prompt="a cat", num_inference_steps=4, width=96, height=64, output_type="np", guidance_scale=1.0)
    # Strength 1 is text to image's picture; 0.5 runs the last half of the steps at the very sigmas text to image
    # reaches them ...
    seen = check_the_tail_of_text_to_image(pipe, edit, call, source)
    # ... from the source noised to exactly the first of them, (1 - s) x0 + s noise: the bare pipeline run by hand
    # over that tail (its scheduler told the two unshifted sigmas) from those latents gives the same picture.
    clean = edit._edit_encode(source, 96, 64, None)
    noise = randn_tensor((1, 16, 8, 12), generator=torch.Generator().manual_seed(7))
    own = pipe.scheduler.set_timesteps
    pipe.scheduler.set_timesteps = lambda *a, device=None, **k: own(sigmas=[0.5, 0.25], device=device)
    by_hand = pipe(**call, latents=(1 - seen[2]) * clean + seen[2] * noise,
                   generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    del pipe.scheduler.set_timesteps
    edited = edit(**call, image=source, strength=0.5, generator=torch.Generator().manual_seed(7)).images
    assert np.allclose(edited, by_hand, atol=1e-6)
    # The source's latents by hand: the VAE's mode, in 2x2 patches, normalised by its batch-norm statistics (with
    # ERNIE's pipeline's own epsilon).
    assert torch.allclose(clean, normalised_vae_patches(edit, source, 96, 64, 1e-5), atol=1e-6)
    # Inpainting leaves the source's latents outside the mask: the left 20 columns repaint latent columns 0-2
    # (the transformer's grid is an eighth of the picture).
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 20, 64))
    latents = edit(**(call | {"output_type": "latent"}), image=source, mask_image=mask, strength=1.0,
                   generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    assert latents.shape == clean.shape == (1, 16, 8, 12)
    assert torch.allclose(latents[..., 3:], clean[..., 3:], atol=1e-6)
    assert not torch.allclose(latents[..., :3], clean[..., :3], atol=1e-3)
    # Through Marble: image to image, and the hires fix with a pixel upscaler and a latent one.
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "source.png")
    request = request_for(ernie["folder"], init_image=str(tmp_path / "source.png"), strength=0.6, steps=3,
                          cfg_scale=4.0, seed=43)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    expected = pixels(edit(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=3,
                           width=64, height=64, guidance_scale=4.0, image=Image.open(tmp_path / "source.png"),
                           strength=0.6, generator=torch.Generator().manual_seed(43)).images[0])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    for upscaler in ("Lanczos", "Latent"):
        hires_request = request_for(ernie["folder"], steps=2, cfg_scale=1.0, negative_prompt="", hires_fix=True,
                                    hires_scale=1.5, hires_steps=2, hires_upscaler=upscaler,
                                    width=96)  # not square: rows and columns apart
        hires, steps = run(make_backend(paths), hires_request)
        assert hires.images[0].size == (144, 96) and hires.notes == ()
        assert [(step.step, step.total) for step in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # both passes


def test_a_latent_hires_fix_interpolates_the_vaes_latents_not_the_normalised_patches(paths, ernie):
    """ERNIE-Image's latents are its VAE's in 2x2 patches as channels, each channel normalised on its own: a cell's
    neighbours sit in other channels on other scales. A latent upscaler interpolates the VAE's latents, as SD's
    are; the second pass is handed them patched and normalised again. By hand here, through the bare pipeline and
    Marble's image-to-image one (tested against bare diffusers above)."""
    from desktop.engine.backends.families import own_edit_pipeline

    # Half of 4 steps: the second pass starts from the upscaled latents noised halfway, so they count.
    request = request_for(ernie["folder"], steps=2, cfg_scale=1.0, negative_prompt="", hires_fix=True,
                          hires_scale=1.5, hires_steps=4, hires_denoise=0.5, hires_upscaler="Latent", width=96,
                          seed=5)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert batch.images[0].size == (144, 96) and batch.notes == ()

    pipe = bare_pipe(ernie["folder"])
    call = dict(prompt=request.prompt, num_inference_steps=2, guidance_scale=1.0)
    patches = pipe(**call, width=96, height=64, output_type="latent",
                   generator=torch.Generator().manual_seed(5)).images  # fmt: skip
    upscaled, naive = latent_hires_by_hand(pipe, patches, 1e-5)
    edit = own_edit_pipeline(pipe, "ernie-image")
    second = call | {"num_inference_steps": 4, "strength": 0.5, "width": 144, "height": 96}
    expected = edit(**second, image=upscaled, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    # The patches themselves interpolated would be another picture: the check above can fail.
    other = edit(**second, image=naive, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert not np.array_equal(pixels(other), pixels(expected))


# Every layer's attention projections and feed-forward.
_LORA_LAYERS = ("self_attention.to_q", "self_attention.to_k", "self_attention.to_v", "self_attention.to_out.0",
                "mlp.gate_proj", "mlp.up_proj", "mlp.linear_fc2")


def renamed_lora(tensors: dict[str, torch.Tensor], naming: str) -> dict[str, torch.Tensor]:
    """The same LoRA as other trainers write it: "ai-toolkit" (`diffusion_model.` + lora_A / lora_B); "musubi" and
    "kohya" (`lora_unet_layers_0_self_attention_to_out_0`) as tiny_dit_loras.trainer_form writes them."""
    native = {key.replace("transformer.", "diffusion_model.", 1): value for key, value in tensors.items()}
    return native if naming == "ai-toolkit" else trainer_form(native, kohya=naming == "kohya")


@pytest.mark.parametrize("naming", ["diffusers", "ai-toolkit", "musubi", "kohya"])
def test_an_ernie_lora_is_detected_and_applied_as_bare_diffusers_applies_it(paths, ernie, naming, tmp_path):

    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.lora import inspect_lora

    tensors = lora_on(ernie["pipe"].transformer, "layers.", _LORA_LAYERS)
    written = tensors if naming == "diffusers" else renamed_lora(tensors, naming)
    save_file(written, str(paths.loras / "style.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "style.safetensors"), "style")
    assert (info.family, info.label, info.transformer_width) == ("ernie-image", "ERNIE-Image", 32)
    request = request_for(ernie["folder"], prompt="a red circle <lora:style:0.8>", steps=3, cfg_scale=1.0)
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    # The reference: bare diffusers loading the LoRA in its own names.
    save_file(tensors, str(tmp_path / "reference.safetensors"))
    pipe = bare_pipe(ernie["folder"])
    pipe.load_lora_weights(str(tmp_path / "reference.safetensors"), adapter_name="style")
    pipe.set_adapters(["style"], [0.8])
    plain_request = request_for(ernie["folder"], prompt="a red circle", steps=3, cfg_scale=1.0)
    expected = bare_image(pipe, plain_request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(bare_pipe(ernie["folder"]), plain_request))


@pytest.fixture(scope="module")
def tekken(tmp_path_factory):
    """A tiny ERNIE-Image whose encoder is a Ministral 3 of the tiny tekken vocabulary, its configs as --config (a
    diffusers folder without its tokenizer/), and the encoder as the library's files: ComfyUI's form (the language
    model under `model.`, its tekken.json carried as `tekken_model`) and a Mistral3Model saved whole (its language
    model, vision tower and projector; no tokenizer)."""
    from tests.support.tiny_ernie import build_tiny_ernie_tekken, comfyui_ministral_state
    from tests.support.tiny_flux2 import flux2_vae_to_bfl, tiny_tekken

    tmp = tmp_path_factory.mktemp("ernie_library")
    pipe = build_tiny_ernie_tekken(tmp / "reference-tokenizer")
    folder = tmp / "configs"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    shutil.rmtree(folder / "tokenizer")
    comfy = comfyui_ministral_state(pipe.text_encoder)
    comfy["tekken_model"] = torch.frombuffer(bytearray(json.dumps(tiny_tekken(with_specials=True)).encode()),
                                             dtype=torch.uint8)  # fmt: skip
    # Beside it, the vision tower and projector at the top level, where ComfyUI's Mistral 3 files keep them.
    extra = {key: value.contiguous() for key, value in pipe.text_encoder.state_dict().items()
             if not key.startswith("language_model.")}  # fmt: skip
    save_file(comfy | extra, str(tmp / "ministral-3-3b.safetensors"))
    whole = {key: value.contiguous() for key, value in pipe.text_encoder.state_dict().items()}
    save_file(whole, str(tmp / "ministral-whole.safetensors"))
    # The language model and the vision tower under one `model.` level (the vision parts never read).
    nested = {**comfyui_ministral_state(pipe.text_encoder), **{f"model.{key}": value for key, value in extra.items()}}
    save_file(nested, str(tmp / "ministral-nested.safetensors"))
    # A tokenizer folder in Hugging Face's form (tokenizer.json), without a chat template: ERNIE-Image needs none.
    pipe.tokenizer.save_pretrained(str(tmp / "hf-tokenizer"))
    config = json.loads((tmp / "hf-tokenizer" / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp / "hf-tokenizer" / "tokenizer_config.json").write_text(json.dumps(config))
    for template in (tmp / "hf-tokenizer").glob("chat_template.*"):
        template.unlink()
    save_file(flux2_vae_to_bfl(pipe.vae), str(tmp / "flux2-vae.safetensors"))
    return {"pipe": pipe, "config": folder, "tmp": tmp,
            "transformer": save_transformer_file(dict(pipe.transformer.state_dict()), tmp / "ernie.safetensors",
                                                 prefix=PREFIX)}  # fmt: skip


def test_an_ernie_file_runs_with_library_ministral_and_flux2_vae_like_bare_diffusers(tekken, tmp_path):
    """ComfyUI's Ministral 3 file (its tekken.json carried) and a Mistral3Model saved whole (its tokenizer from the
    folder the user names) with the Flux.2 VAE give bare diffusers' picture around the whole Mistral3Model."""
    from desktop.engine.library.index import Library

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(tekken["tmp"] / "flux2-vae.safetensors", "vae")
    records = [library.import_path(tekken["tmp"] / f"ministral-{form}.safetensors", "encoder")
               for form in ("3-3b", "whole", "nested")]  # fmt: skip
    assert {record.family for record in records} == {"mistral3"}
    request = request_for(tekken["transformer"], steps=2, cfg_scale=4.0, prompt="the red cat in a circle, the cat",
                          model_config=str(tekken["config"]), vae="flux2-vae", text_encoders="ministral-3-3b")
    want = bare_image(tekken["pipe"], request)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), want)
    whole = replace(request, text_encoders="ministral-whole")
    with pytest.raises(ModelError, match=r"carries no tokenizer.*--tokenizer-folder.*baidu/ERNIE-Image"):
        run(make_backend(paths), whole)
    for folder in ("reference-tokenizer", "hf-tokenizer"):  # tekken.json; tokenizer.json without a chat template
        batch, _ = run(make_backend(paths), replace(whole, tokenizer_folder=str(tekken["tmp"] / folder)))
        assert np.array_equal(pixels(batch.images[0]), want)
    nested = replace(request, text_encoders="ministral-nested", tokenizer_folder=str(tekken["tmp"] / "hf-tokenizer"))
    batch, _ = run(make_backend(paths), nested)
    assert np.array_equal(pixels(batch.images[0]), want)
    other, _ = run(make_backend(paths), replace(request, prompt="a cat"))
    assert not np.array_equal(pixels(other.images[0]), want)
    # Without a VAE, the message names Flux.2's.
    with pytest.raises(ModelError, match=r"choose its VAE too .*ERNIE-Image: the Flux\.2 VAE"):
        run(make_backend(paths), replace(request, vae=""))


def test_a_ministral_gguf_in_llama_cpps_names_runs_like_bare_diffusers(tekken, tmp_path):
    """A Ministral 3 GGUF (llama.cpp's names, q and k rows permuted by its converter, F16 storage, its tokenizer in
    the metadata) with the Flux.2 VAE: bare diffusers' picture with the encoder's weights rounded to float16."""
    import copy

    from desktop.engine.library.index import Library
    from tests.support.tiny_ernie import comfyui_ministral_state
    from tests.support.tiny_qwen_encoders import save_llama_gguf

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(tekken["tmp"] / "flux2-vae.safetensors", "vae")
    pipe = tekken["pipe"]
    path = save_llama_gguf(comfyui_ministral_state(pipe.text_encoder), tmp_path / "Ministral-3-3B-F16.gguf", "llama",
                           heads=(3, 1), tokenizer=pipe.tokenizer)  # fmt: skip
    record = library.import_path(path, "encoder")
    assert (record.family, record.format) == ("mistral3", "gguf"), record
    request = request_for(tekken["transformer"], steps=2, cfg_scale=4.0, prompt="the red cat in a circle, the cat",
                          model_config=str(tekken["config"]), vae="flux2-vae", text_encoders=record.name)
    batch, _ = run(make_backend(paths), request)
    rounded = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            if parameter.ndim == 2 and name.startswith("language_model."):
                parameter.copy_(parameter.half().float())
    want = bare_image(ErnieImagePipeline(**(pipe.components | {"text_encoder": rounded})), request)
    assert np.array_equal(pixels(batch.images[0]), want)
    assert not np.array_equal(want, bare_image(pipe, request))  # the rounding shows


def test_a_file_or_folder_marked_turbo_takes_turbos_label_and_defaults(ernie, tmp_path):
    """ERNIE-Image-Turbo's transformer has the base's tensors and its folder the base's pipeline and configs: nothing
    in the files says which it is. The user marks the library's file or folder as Turbo (`marble models variant`, the
    Library window); it then shows as Turbo and a job that sets no steps or CFG runs Turbo's 8 steps without guidance,
    with the same pipeline and schedule as the base (no other setting differs)."""
    from desktop.engine.library.index import Library, record_variant_choices
    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    library = Library(paths)
    file = library.import_path(ernie["comfy"], "model", name="ernie-image-turbo")
    folder = library.import_path(ernie["folder"], "model", name="ERNIE-Image-Turbo-folder")
    for record in (file, folder):
        assert record_variant_choices(record) == {"": "ERNIE-Image (as the file says)", "turbo": "ERNIE-Image Turbo"}
        assert model_family(library.path_of(record)) == "ernie-image"
        chosen = library.choose_variant(record.name, "turbo")
        assert (chosen.architecture.split(",")[0], chosen.chosen_variant) == ("ERNIE-Image Turbo", "turbo")
        path = library.path_of(chosen)
        assert model_family(path, library.chosen_variant_of(path)) == "ernie-image-distilled"
    assert family_defaults("ernie-image-distilled") == {"steps": 8, "cfg_scale": 1.0}
    assert library.chosen_variants() == {file.name: "turbo", folder.name: "turbo"}
    code, listed, _ = in_process(["models", "variant", folder.name, "--home", str(home)])
    assert code == 0 and [line.split()[:2] for line in listed.splitlines()] == [["base", "ERNIE-Image"], ["*", "turbo"]]
    longcat = tmp_path / "longcat"
    build_tiny_longcat().save_pretrained(str(longcat), safe_serialization=True)
    library.import_path(longcat, "model")
    code, listed, err = in_process(["models", "variant", "longcat", "--home", str(home)])
    assert code == 0 and not listed and "which its folder says: it has no variants to choose" in err, err
    # A choice written into library.json by hand for a folder that says which model it is chooses nothing.
    index = next(home.rglob("library.json"))
    stored = json.loads(index.read_text(encoding="utf-8"))
    stored["entries"]["model"]["longcat"]["chosen_variant"] = "edit"
    index.write_text(json.dumps(stored), encoding="utf-8")
    assert library.chosen_variant_of(library.folder("model") / "longcat") == ""
    assert "longcat" not in library.chosen_variants()

    # `marble generate` without --steps or --cfg takes Turbo's, and the picture is the base pipeline's at those.
    out_file = tmp_path / "turbo.png"
    code, _, err = in_process(["generate", "--home", str(home), "--model", folder.name, "--prompt", "a red fox",
                               "--width", "64", "--height", "64", "--seed", "5", "--device", "cpu",
                               "--out", str(out_file)])  # fmt: skip
    assert code == 0, err
    recorded = read_image_metadata(out_file).request
    assert (recorded.steps, recorded.cfg_scale) == (8, 1.0)
    with Image.open(out_file) as image:
        assert np.array_equal(pixels(image), bare_image(bare_pipe(ernie["folder"]), recorded))
    # The file the user marked back runs as it says: the base's defaults again.
    library.choose_variant(folder.name, "")
    code, _, err = in_process(["generate", "--home", str(home), "--model", folder.name, "--prompt", "a red fox",
                               "--width", "64", "--height", "64", "--seed", "5", "--device", "cpu", "--steps", "2",
                               "--out", str(tmp_path / "base.png")])  # fmt: skip
    assert code == 0, err
    assert read_image_metadata(tmp_path / "base.png").request.cfg_scale == 4.0
