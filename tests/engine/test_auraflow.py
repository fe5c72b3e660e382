"""AuraFlow (fal's AuraFlow and the models trained from it, Pony V7 first): a tiny random model as a diffusers folder,
as a transformer-only file in its makers' names (bare and under ComfyUI's prefix) and in diffusers', and as a GGUF;
detected from its tensors and run offline through Marble, pixel-identical to bare diffusers with the same seed, with
its text encoder, tokenizer and VAE from a folder or from the libraries."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, GGUFQuantizationConfig

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.dit_lora_checks import NAMINGS, check_lora_as_bare_diffusers
from tests.support.flow_edit_checks import (
    check_edits_through_marble,
    check_inpainting_keeps_the_source,
    check_schedule_tail,
)
from tests.support.tiny_auraflow import build_tiny_auraflow, library_files, original_names
from tests.support.tiny_dit import save_gguf
from tests.support.tiny_qwen_zimage import save_transformer_file

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def aura(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auraflow")
    pipe = build_tiny_auraflow()
    folder = tmp / "pony-v7-base"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    original = original_names(dict(state))
    return {
        "pipe": pipe,
        "folder": folder,
        "state": state,
        # ComfyUI's file (its makers' names under ComfyUI's prefix), under a name that says nothing true.
        "comfy": save_transformer_file(original, tmp / "sdxl-base.safetensors", prefix=PREFIX),
        "original": save_transformer_file(original, tmp / "pony-v7-base.safetensors"),
        "diffusers": save_transformer_file(state, tmp / "auraflow-diffusers.safetensors"),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipeline(folder, transformer=None):
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = AuraFlowPipeline.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(folder, request, transformer=None):
    pipe = bare_pipeline(folder, transformer)
    guided = request.cfg_scale > 1
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt if guided else None,
        num_inference_steps=request.steps, width=request.width, height=request.height,
        guidance_scale=request.cfg_scale, generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0])  # fmt: skip


def test_an_auraflow_folder_is_detected_and_matches_bare_diffusers(paths, aura):
    arch = detect_model(aura["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.label) == ("auraflow", "diffusers", "auraflow",
                                                                            "AuraFlow")  # fmt: skip
    assert model_family(aura["folder"]) == "auraflow"
    request = request_for(aura["folder"], steps=3, cfg_scale=3.5)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(aura["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == 3 and all(step.preview is not None for step in steps)
    assert not batch.notes
    # Its CFG runs against the negative prompt: another negative, another image.
    other, _ = run(make_backend(paths), replace(request, negative_prompt="dark"))
    assert not np.array_equal(pixels(other.images[0]), expected)
    # At CFG 1 there is no CFG, so no negative prompt, and Marble says so.
    plain, _ = run(make_backend(paths), replace(request, cfg_scale=1.0))
    assert plain.notes == ("AuraFlow uses a negative prompt only with CFG above 1; the negative prompt was ignored.",)
    assert np.array_equal(pixels(plain.images[0]), bare_image(aura["folder"], replace(request, cfg_scale=1.0)))


def test_its_makers_defaults_and_sdxls_preview_colours():
    from desktop.engine.backends.preview import latents_to_rgb

    assert family_defaults("auraflow") == {"steps": 50, "cfg_scale": 3.5}
    latents = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)
    assert np.array_equal(latents_to_rgb(latents, "auraflow"), latents_to_rgb(latents, "sdxl"))
    assert not np.array_equal(latents_to_rgb(latents, "auraflow"), latents_to_rgb(latents, "sd1"))


def test_a_prompt_longer_than_pile_t5_reads_is_said(paths, aura):
    request = request_for(aura["folder"], prompt="a red fox in the snow, " * 60, steps=1, cfg_scale=3.5)
    batch, _ = run(make_backend(paths), request)
    assert len(batch.notes) == 1 and "AuraFlow's T5 encoder, which reads the first 256" in batch.notes[0]


@pytest.mark.parametrize(("layout", "naming"), [("comfy", "original"), ("original", "original"),
                                                ("diffusers", "diffusers")])  # fmt: skip
def test_transformer_files_match_with_the_folders_encoders(paths, aura, layout, naming):
    arch = detect_model(aura[layout])
    assert (arch.family, arch.dit.layout, arch.dit.blocks, arch.label) == ("auraflow", naming, (2, 2), "AuraFlow")
    assert arch.dit.needs_components
    # The shipped config places 9216 patches (96x96); the tiny file's table 256: the file's is built.
    request = request_for(aura[layout], steps=3, cfg_scale=3.5, text_encoders=str(aura["folder"]),
                          model_config=str(_configs_with(aura, positions=9216)))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(aura["folder"], request))


def _configs_with(aura, positions):
    """The tiny model's folder as a config folder whose transformer config says `positions` patches."""
    folder = aura["folder"].parent / f"configs-{positions}"
    if not folder.is_dir():
        shutil.copytree(aura["folder"], folder, ignore=shutil.ignore_patterns("*.safetensors"))
        config = folder / "transformer" / "config.json"
        text = config.read_text(encoding="utf-8")
        text = text.replace('"pos_embed_max_size": 256', f'"pos_embed_max_size": {positions}')
        config.write_text(text, encoding="utf-8")
    return folder


def test_an_auraflow_gguf_matches_diffusers_gguf_loading(paths, aura, tmp_path):
    path = save_gguf(original_names(dict(aura["state"])), tmp_path / "pony-v7-base-Q8_0.gguf", arch="auraflow")
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.quantization) == ("auraflow", "original", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=3.5, model_config=str(aura["folder"]),
                          text_encoders=str(aura["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    transformer = AuraFlowTransformer2DModel.from_single_file(
        str(path), config=str(aura["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    expected = bare_image(aura["folder"], request, transformer)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(aura["folder"], request))  # the quantisation shows


def test_damaged_files_and_missing_components_are_refused_by_name(paths, aura, tmp_path):
    original = original_names(dict(aura["state"]))
    middle = save_transformer_file(original, tmp_path / "my-pony.safetensors", prefix=PREFIX, drop="double_layers.0")
    with pytest.raises(ModelError, match=r"my-pony\.safetensors looks like AuraFlow but double_layers\.0 is missing"):
        detect_model(middle)
    cut = {key: value for key, value in original.items() if key != "positional_encoding"}
    with pytest.raises(ModelError, match=r"cut\.safetensors looks like AuraFlow but positional_encoding is missing"):
        detect_model(save_transformer_file(cut, tmp_path / "cut.safetensors"))
    bare = {key: value for key, value in original.items() if key != "register_tokens"}
    with pytest.raises(ModelError, match=r"bare\.safetensors looks like AuraFlow but register_tokens is missing"):
        detect_model(save_transformer_file(bare, tmp_path / "bare.safetensors"))
    last = save_transformer_file(original, tmp_path / "short.safetensors", drop="single_layers.1")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 single blocks but the AuraFlow configuration"):
        run(make_backend(paths), request_for(last, model_config=str(aura["folder"]),
                                             text_encoders=str(aura["folder"])))  # fmt: skip
    joint = save_transformer_file(original, tmp_path / "joint.safetensors", drop="double_layers.1")
    with pytest.raises(ModelError, match=r"joint\.safetensors has 1 joint blocks but the AuraFlow configuration has 2"):
        run(make_backend(paths), request_for(joint, model_config=str(aura["folder"]),
                                             text_encoders=str(aura["folder"])))  # fmt: skip
    with pytest.raises(ModelError, match=r"needs its text encoder \(Pile-T5-XL\), its tokenizer and SDXL's VAE"):
        run(make_backend(paths), request_for(aura["original"], model_config=str(aura["folder"])))


def test_a_folder_that_cannot_serve_it_is_refused_before_the_load(paths, aura, tmp_path):
    folder = tmp_path / "not-aura"
    shutil.copytree(aura["folder"], folder)
    shutil.rmtree(folder / "tokenizer")
    vae = folder / "vae" / "config.json"
    vae.write_text(vae.read_text(encoding="utf-8").replace('"latent_channels": 4', '"latent_channels": 16'),
                   encoding="utf-8")  # fmt: skip
    with pytest.raises(ModelError, match=r"not-aura cannot serve .*: it has no tokenizer/; a VAE of 16 latent "
                                         r"channels, not SDXL's 4"):
        run(make_backend(paths), request_for(aura["original"], model_config=str(aura["folder"]),
                                             text_encoders=str(folder)))  # fmt: skip
    index = folder / "model_index.json"
    index.write_text(index.read_text(encoding="utf-8").replace("UMT5EncoderModel", "T5EncoderModel"), encoding="utf-8")
    with pytest.raises(ModelError, match=r"no Pile-T5-XL text encoder"):
        run(make_backend(paths), request_for(aura["original"], model_config=str(aura["folder"]),
                                             text_encoders=str(folder)))  # fmt: skip


def test_the_shipped_config_is_the_published_model():
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.resources import Resources

    cls = transformer_class("auraflow")
    config = cls.load_config(str(Resources.default().config_folder("auraflow")), subfolder="transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    # fal's "6.8B" (AuraFlow v0.3's model card: 6,858,605,568 counted), a 96x96-patch table (1536 pixels a side).
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 6.86
    assert config["pos_embed_max_size"] == 96 * 96


def aura_edit(folder):
    from desktop.engine.backends.families import own_edit_pipeline

    pipe = bare_pipeline(folder)
    return pipe, own_edit_pipeline(pipe, "auraflow")


def test_image_to_image_runs_the_tail_of_the_text_to_image_schedule(aura):
    check_schedule_tail(*aura_edit(aura["folder"]), guidance=3.5)


def test_inpainting_leaves_the_sources_latents_outside_the_mask(aura):
    check_inpainting_keeps_the_source(aura_edit(aura["folder"])[1], guidance_scale=1.0)


def test_edits_and_the_hires_fix_run_through_marble(paths, aura, tmp_path):
    check_edits_through_marble(paths, aura["folder"], aura_edit(aura["folder"])[1], 3.5, tmp_path)


_LORA_LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "ff.linear_1",
                "ff.out_projection", "ff_context.linear_2")  # fmt: skip


@pytest.mark.parametrize("naming", NAMINGS)
def test_an_auraflow_lora_is_detected_and_applied_as_bare_diffusers_applies_it(paths, aura, naming, tmp_path):
    check_lora_as_bare_diffusers(paths, tmp_path, aura["folder"], bare_pipeline, transformer=aura["pipe"].transformer,
                                 blocks=("joint_transformer_blocks.", "single_transformer_blocks."),
                                 layers=_LORA_LAYERS, naming=naming, cfg=3.5, family="auraflow", label="AuraFlow")


@pytest.mark.parametrize("kohya", [False, True])
def test_a_lora_in_its_makers_names_applies_as_in_diffusers_names(paths, aura, kohya, tmp_path):
    # Made on ComfyUI's model: `diffusion_model.double_layers.0.attn.w2q.lora_A.weight`, or kohya's flattened names of
    # them with alphas. Its final modulation (`modF.1`) holds (shift, scale), diffusers' norm_out (scale, shift).
    from safetensors.torch import save_file

    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.lora import inspect_lora
    from tests.support.tiny_auraflow import makers_lora
    from tests.support.tiny_dit_loras import lora_on, trainer_form

    transformer = aura["pipe"].transformer
    norms = ("norm1.linear", "norm1_context.linear")
    tensors = (lora_on(transformer, "joint_transformer_blocks.", (*_LORA_LAYERS, *norms))
               | lora_on(transformer, "single_transformer_blocks.", (*_LORA_LAYERS, *norms), seed=4)
               | lora_on(transformer, "norm_out.", ("linear",), seed=5))  # fmt: skip
    makers = makers_lora(tensors)
    save_file(trainer_form(makers, kohya=True) if kohya else makers, str(paths.loras / "style.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "style.safetensors"), "style")
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    assert (info.family, info.format, info.transformer_width) == ("auraflow", "kohya" if kohya else "peft", width)
    request = request_for(aura["folder"], prompt="a red circle <lora:style:0.8>", steps=3, cfg_scale=3.5)
    batch, _ = run(make_backend(paths), request)
    save_file(tensors, str(tmp_path / "reference.safetensors"))
    pipe = bare_pipeline(aura["folder"])
    pipe.load_lora_weights(str(tmp_path / "reference.safetensors"), adapter_name="style")
    pipe.set_adapters(["style"], [0.8])
    call = dict(prompt="a red circle", negative_prompt=request.negative_prompt, num_inference_steps=3, width=64,
                height=64, guidance_scale=3.5)  # fmt: skip
    def picture(pipe):
        return pixels(pipe(**call, generator=torch.Generator("cpu").manual_seed(request.seed)).images[0])

    expected = picture(pipe)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, picture(bare_pipeline(aura["folder"])))


def test_a_makers_name_lora_naming_a_layer_it_lacks_is_refused_by_name(paths, aura):
    from safetensors.torch import save_file

    from tests.support.tiny_auraflow import makers_lora
    from tests.support.tiny_dit_loras import lora_on

    tensors = makers_lora(lora_on(aura["pipe"].transformer, "joint_transformer_blocks.", ("attn.to_q",)))
    tensors["diffusion_model.double_layers.0.attn.w3q.lora_A.weight"] = torch.zeros(4, 8)
    save_file(tensors, str(paths.loras / "odd.safetensors"))
    request = request_for(aura["folder"], prompt="a red circle <lora:odd:0.8>", steps=2, cfg_scale=3.5)
    with pytest.raises(ModelError, match=r"'odd' names a layer AuraFlow does not have \(.*double_layers\.0\.attn\.w3q"):
        run(make_backend(paths), request)


def test_a_flux_lora_is_not_taken_for_an_auraflow_one(tmp_path):
    from safetensors.torch import save_file

    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.lora import inspect_lora
    from tests.support.tiny_dit import build_tiny_flux
    from tests.support.tiny_dit_loras import lora_on

    flux = lora_on(build_tiny_flux().transformer, "single_transformer_blocks.", ("attn.to_q", "proj_mlp", "proj_out"))
    save_file(flux, str(tmp_path / "flux.safetensors"))
    assert inspect_lora(read_safetensors_header(tmp_path / "flux.safetensors"), "flux").family == "flux"


@pytest.fixture(scope="module")
def split_files(aura, tmp_path_factory):
    """Its encoder and VAE as the split files ComfyUI users keep, and configs without a tokenizer (Marble's shipped
    ones hold none)."""
    tmp = tmp_path_factory.mktemp("auraflow_library")
    configs = tmp / "configs"
    shutil.copytree(aura["folder"], configs, ignore=shutil.ignore_patterns("tokenizer*", "*.safetensors"))
    return {"configs": configs, "files": library_files(aura["pipe"], tmp / "split")}


def test_the_encoder_and_vae_files_run_from_the_libraries(paths, aura, split_files):
    from desktop.engine.library.index import Library

    library = Library(paths)
    for name, path in split_files["files"].items():
        library.import_path(path, "vae" if name == "sdxl_vae" else "encoder")
    request = request_for(aura["comfy"], steps=3, cfg_scale=3.5, model_config=str(split_files["configs"]),
                          text_encoders="pile_t5xl", vae="sdxl_vae",
                          tokenizer_folder=str(aura["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(aura["folder"], request))
    # The tokenizer cannot ship: without a folder holding it, the job says where to point.
    with pytest.raises(ModelError, match=r"whose tokenizer Marble cannot ship \(none was given\): point "):
        run(make_backend(paths), replace(request, tokenizer_folder=None))


def test_an_all_in_one_file_runs_its_own_encoder_and_vae(paths, aura, split_files, tmp_path):
    # fal's aura_flow_0.3.safetensors and Pony V7's single file as ComfyUI's checkpoints keep them: the transformer in
    # its makers' names under ComfyUI's prefix, Pile-T5-XL under `text_encoders.pile_t5xl.transformer.`, the VAE in
    # LDM names under `vae.`. Only the tokenizer comes from elsewhere.
    from safetensors.torch import save_file

    from tests.support.tiny_models import vae_to_ldm

    pipe = aura["pipe"]
    tensors = {PREFIX + key: value for key, value in original_names(dict(aura["state"])).items()}
    tensors |= {f"text_encoders.pile_t5xl.transformer.{key}": value for key, value in
                pipe.text_encoder.state_dict().items() if key != "encoder.embed_tokens.weight"}  # fmt: skip
    ldm = vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    tensors |= {"vae." + key.removeprefix("first_stage_model."): value for key, value in ldm.items()}
    path = tmp_path / "aura_flow_0.3.safetensors"
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    arch = detect_model(path)
    assert arch.dit.components == ("transformer", "pile_t5xl", "vae") and not arch.dit.needs_components
    request = request_for(path, steps=3, cfg_scale=3.5, model_config=str(split_files["configs"]),
                          tokenizer_folder=str(aura["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(aura["folder"], request))
    with pytest.raises(ModelError, match=r"aura_flow_0\.3\.safetensors runs with its Pile-T5-XL .* cannot ship"):
        run(make_backend(paths), replace(request, tokenizer_folder=None))
    # Its encoder cut short: said by name, not run with missing weights.
    cut = {key: value for key, value in tensors.items() if ".block.1." not in key or not key.startswith("text_")}
    save_file({key: value.contiguous() for key, value in cut.items()}, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ModelError, match=r"text encoder 'cut\.safetensors' .* does not fit .*\(10 tensor\(s\) missing"):
        run(make_backend(paths), replace(request, model=str(tmp_path / "cut.safetensors")))


def test_a_published_size_pile_t5_is_named_and_offered_to_auraflow_only():
    from desktop.engine.library.encoder import EncoderInfo, fits_model

    info = EncoderInfo("t5", 2048, 24, "transformers", "", "F16", 2_950_000_000)
    assert (info.label, info.family) == ("Pile-T5-XL text encoder", "pile-t5-xl")
    assert fits_model(info.family, "auraflow") and not fits_model(info.family, "flux-dev")
    assert not fits_model("t5-xxl", "auraflow")


def test_the_memory_estimate_counts_its_blocks(paths, aura):
    from desktop.engine.backends.families import memory_sizes

    backend = make_backend(paths)
    backend.load(request_for(aura["folder"]))
    # Group offload moves one block at a time: its 2 joint and 2 single blocks, not the whole transformer.
    assert memory_sizes(backend._pipe, backend._dit).transformer_blocks == 4


def test_control_units_and_reference_images_are_refused_before_the_model_loads(paths, aura, tmp_path):
    from PIL import Image

    from desktop.engine.errors import InvalidRequest
    from desktop.engine.library.native_size import takes_controls
    from desktop.engine.request import ControlUnit

    assert not takes_controls("auraflow")  # the window offers none
    Image.new("RGB", (64, 64), (90, 30, 200)).save(tmp_path / "source.png")
    with pytest.raises((InvalidRequest, ModelError), match="AuraFlow"):
        run(make_backend(paths), request_for(aura["folder"],
                                             controls=(ControlUnit("edges", str(tmp_path / "source.png")),)))
    with pytest.raises(ModelError, match=r"is an AuraFlow model: it reads no reference images"):
        run(make_backend(paths), request_for(aura["folder"], reference_images=(str(tmp_path / "source.png"),)))
