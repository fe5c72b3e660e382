"""Sana (NVIDIA's 1.0 and 1.5): a tiny random model as a diffusers folder, as a transformer-only file in its makers'
names (bare and under ComfyUI's prefix; 1.0's and 1.5's, whose query-key norms diffusers' converter does not know) and
in diffusers', and as a GGUF; detected from its tensors and run offline through Marble, pixel-identical to bare
diffusers with the same seed, its text encoder, tokenizer and autoencoder from a folder."""

from __future__ import annotations

import shutil
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import GGUFQuantizationConfig, SanaPipeline, SanaTransformer2DModel
from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

from desktop.engine.backends.base import StepInfo, Waiting
from desktop.engine.backends.preview import latents_to_rgb
from desktop.engine.errors import Cancelled, ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.dit import variant_choices
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.dit_lora_checks import NAMINGS, check_lora_as_bare_diffusers
from tests.support.flow_edit_checks import (
    SOURCE_COLOUR,
    check_edits_through_marble,
    check_inpainting_keeps_the_source,
    check_schedule_tail,
    source_latents,
)
from tests.support.tiny_dit import config_folder, save_gguf
from tests.support.tiny_qwen_zimage import save_transformer_file
from tests.support.tiny_sana import build_tiny_sana, original_names

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def sana(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sana")
    pipe = build_tiny_sana()
    folder = tmp / "Sana_1600M_1024px_diffusers"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    newer = build_tiny_sana(seed=1, qk_norm=True)  # Sana 1.5: the same sizes, normalised queries and keys
    sana15 = tmp / "Sana_1600M_1024px_1.5_diffusers"
    newer.save_pretrained(str(sana15), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": folder,
        "sana15": sana15,
        "state": state,
        "comfy": save_transformer_file(original_names(dict(state)), tmp / "sana.safetensors", prefix=PREFIX),
        "original": save_transformer_file(original_names(dict(state)), tmp / "Sana_1600M_1024px.safetensors"),
        "diffusers": save_transformer_file(state, tmp / "sana-diffusers.safetensors"),
        # Sana 1.5's in its makers' names, without the unused tables NVlabs' 1.0 files carry.
        "original15": save_transformer_file(original_names(dict(newer.transformer.state_dict()), extras=False),
                                            tmp / "Sana_1.5_1600M.safetensors"),  # fmt: skip
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipeline(folder, transformer=None):
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = SanaPipeline.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(folder, request, transformer=None):
    pipe = bare_pipeline(folder, transformer)
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        width=request.width, height=request.height, guidance_scale=request.cfg_scale, use_resolution_binning=False,
        generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0])  # fmt: skip


def test_a_sana_folder_is_detected_and_matches_bare_diffusers(paths, sana):
    arch = detect_model(sana["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.label) == ("sana", "diffusers", "sana", "Sana")
    assert model_family(sana["folder"]) == "sana" and family_defaults("sana") == {"steps": 20, "cfg_scale": 4.5}
    request = request_for(sana["folder"], steps=3, cfg_scale=4.5)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(sana["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # The first job fits the preview colours (said first, as step 0), then three steps, each with its preview.
    assert [step.step for step in steps] == [0, 1, 2, 3] and steps[0].waiting is Waiting.FITTING_PREVIEWS
    assert all(step.preview is not None and step.waiting is None for step in steps[1:])
    assert not batch.notes
    other, _ = run(make_backend(paths), replace(request, negative_prompt="dark"))
    assert not np.array_equal(pixels(other.images[0]), expected)
    # The size asked is drawn (diffusers' pipeline would snap 96x64 to a trained aspect ratio and resize back).
    wide = replace(request, width=96, height=64)
    drawn, _ = run(make_backend(paths), wide)
    assert drawn.images[0].size == (96, 64)
    assert np.array_equal(pixels(drawn.images[0]), bare_image(sana["folder"], wide))


def test_a_sana_15_folder_runs_its_normalised_queries(paths, sana):
    request = request_for(sana["sana15"], steps=3, cfg_scale=4.5)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(sana["sana15"], request))


@pytest.mark.parametrize(("layout", "naming"), [("comfy", "original"), ("original", "original"),
                                                ("diffusers", "diffusers")])  # fmt: skip
def test_transformer_files_match_with_the_folders_encoders(paths, sana, layout, naming):
    arch = detect_model(sana[layout])
    assert (arch.family, arch.dit.layout, arch.dit.blocks, arch.label) == ("sana", naming, (2, 0), "Sana")
    assert arch.dit.needs_components
    request = request_for(sana[layout], steps=3, cfg_scale=4.5, model_config=str(sana["folder"]),
                          text_encoders=str(sana["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(sana["folder"], request))


def test_a_sana_15_file_in_its_makers_names_keeps_its_norms(paths, sana):
    # Sana 1.0's config (no query-key norm) as --config: the file says it normalises them, and its norms are read.
    request = request_for(sana["original15"], steps=3, cfg_scale=4.5, model_config=str(sana["folder"]),
                          text_encoders=str(sana["sana15"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(sana["sana15"], request))


def test_a_sana_15_file_in_diffusers_names_runs_with_the_10_config(paths, sana, tmp_path):
    # Sana 1.5's transformer as diffusers saves it, with the shipped config's kind (1.0's: no query-key norms): the file
    # says it normalises them. It was refused as holding tensors "Sana's has not" until 2026-12-06.
    from safetensors.torch import load_file

    state = load_file(str(sana["sana15"] / "transformer" / "diffusion_pytorch_model.safetensors"))
    path = save_transformer_file(state, tmp_path / "sana15-diffusers.safetensors")
    request = request_for(path, steps=3, cfg_scale=4.5, model_config=str(sana["folder"]),
                          text_encoders=str(sana["sana15"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(sana["sana15"], request))


def test_a_sana_gguf_matches_diffusers_gguf_loading(paths, sana, tmp_path):
    path = save_gguf(dict(sana["state"]), tmp_path / "sana-Q8_0.gguf", arch="sana")
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.quantization) == ("sana", "diffusers", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=4.5, model_config=str(sana["folder"]),
                          text_encoders=str(sana["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    transformer = SanaTransformer2DModel.from_single_file(
        str(path), config=str(sana["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    # Its modulation tables are bare parameters diffusers' GGUF layers leave quantised (they fail in the first step
    # otherwise): dequantised, as Marble does at load.
    for module in (transformer, *transformer.transformer_blocks):
        assert module.scale_shift_table.quant_type.name == "Q8_0"
        table = dequantize_gguf_tensor(module.scale_shift_table).float()
        module.scale_shift_table = torch.nn.Parameter(table, requires_grad=False)
    expected = bare_image(sana["folder"], request, transformer)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(sana["folder"], request))  # the quantisation shows


def test_damaged_files_and_missing_components_are_refused_by_name(paths, sana, tmp_path):
    original = original_names(dict(sana["state"]))
    middle = save_transformer_file(original, tmp_path / "my-sana.safetensors", prefix=PREFIX, drop="blocks.0")
    with pytest.raises(ModelError, match=r"my-sana\.safetensors looks like Sana but blocks\.0 is missing"):
        detect_model(middle)
    cut = {key: value for key, value in original.items() if key != "attention_y_norm.weight"}
    with pytest.raises(ModelError, match=r"cut\.safetensors looks like Sana but attention_y_norm\.weight is missing"):
        detect_model(save_transformer_file(cut, tmp_path / "cut.safetensors"))
    last = save_transformer_file(original, tmp_path / "short.safetensors", drop="blocks.1")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 blocks but the Sana configuration has 2"):
        run(make_backend(paths), request_for(last, model_config=str(sana["folder"]),
                                             text_encoders=str(sana["folder"])))  # fmt: skip
    odd = save_transformer_file(original | {"blocks.0.attn.extra.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(ModelError, match=r"odd\.safetensors: its Sana transformer does not load .*0\.attn\.extra"):
        run(make_backend(paths), request_for(odd, model_config=str(sana["folder"]), text_encoders=str(sana["folder"])))
    # In diffusers' names: tests/engine/test_dit_file_names.py, every family's.
    with pytest.raises(ModelError, match=r"needs its text encoder \(Gemma-2 2B\), Gemma's tokenizer and its DC-AE"):
        run(make_backend(paths), request_for(sana["original"], model_config=str(sana["folder"])))


def _original_dc_ae(state):
    """A tiny DC-AE's tensors (ResBlocks only) in MIT HAN Lab's names, which diffusers' converter reads."""
    ends = {"conv1.": "conv1.conv.", "conv2.": "conv2.conv.", "norm.": "conv2.norm.", "conv.": "conv.conv."}
    outer = {"encoder.conv_in.": "encoder.project_in.conv.", "encoder.conv_out.": "encoder.project_out.0.conv.",
             "decoder.conv_in.": "decoder.project_in.conv.", "decoder.norm_out.": "decoder.project_out.0.",
             "decoder.conv_out.": "decoder.project_out.2.conv."}  # fmt: skip
    out = {}
    for key, value in state.items():
        head = next((h for h in outer if key.startswith(h)), None)
        if head is not None:
            out[outer[head] + key.removeprefix(head)] = value
            continue
        part, blocks, stage, index, rest = key.split(".", 4)
        end = next(e for e in ends if rest.startswith(e))
        out[f"{part}.stages.{stage}.op_list.{index}.main.{ends[end]}{rest.removeprefix(end)}"] = value
    return out


@pytest.fixture
def library_home(tmp_path, sana):
    """A home with a Gemma-2 file in ComfyUI's names and Sana's DC-AE in diffusers' names and in its makers' in the
    libraries, Gemma's tokenizer in a folder of its own."""
    from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers
    from safetensors.torch import save_file

    from desktop.engine.library.index import Library
    from tests.support.tiny_qwen_encoders import comfy_qwen_state

    pipe = sana["pipe"]
    save_file(comfy_qwen_state(pipe.text_encoder, head=False), str(tmp_path / "gemma_2_2b_it.safetensors"))
    state = {key: value.contiguous() for key, value in pipe.vae.state_dict().items()}
    save_file(state, str(tmp_path / "dc-ae-diffusers.safetensors"))
    original = _original_dc_ae(state)
    roundtrip = convert_autoencoder_dc_checkpoint_to_diffusers(dict(original))  # the helper is right
    assert sorted(roundtrip) == sorted(state) and all(torch.equal(roundtrip[k], state[k]) for k in state)
    save_file(original, str(tmp_path / "dc-ae-f32c32-sana-1.0.safetensors"))
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(tmp_path / "gemma_2_2b_it.safetensors", "encoder")
    library.import_path(tmp_path / "dc-ae-diffusers.safetensors", "vae")
    library.import_path(tmp_path / "dc-ae-f32c32-sana-1.0.safetensors", "vae")
    pipe.tokenizer.save_pretrained(str(tmp_path / "gemma-tokenizer"))
    return paths


def test_a_sana_file_runs_with_gemma_and_its_dc_ae_from_the_libraries(library_home, sana, tmp_path):
    from desktop.engine.library.index import Library

    library = Library(library_home)
    for name, layout in (("dc-ae-diffusers", "dc-ae"), ("dc-ae-f32c32-sana-1.0", "dc-ae-original")):
        record = library.get("vae", name)
        assert (record.format, record.shown_architecture.startswith("Sana DC-AE")) == (layout, True), record
    config = config_folder(sana["pipe"], tmp_path / "config")
    shutil.rmtree(config / "tokenizer", ignore_errors=True)
    request = request_for(sana["original"], model_config=str(config), text_encoders="gemma_2_2b_it",
                          vae="dc-ae-diffusers", tokenizer_folder=str(tmp_path / "gemma-tokenizer"))  # fmt: skip
    expected = bare_image(sana["folder"], request)
    for vae in ("dc-ae-diffusers", "dc-ae-f32c32-sana-1.0"):
        batch, _ = run(make_backend(library_home), replace(request, vae=vae))
        assert np.array_equal(pixels(batch.images[0]), expected), vae
    # A whole Sana folder as --config lends its own tokenizer.
    batch, _ = run(make_backend(library_home), replace(request, tokenizer_folder="", model_config=str(sana["folder"])))
    assert np.array_equal(pixels(batch.images[0]), expected)
    # Gemma's tokenizer cannot ship: without one, it says where to find it.
    with pytest.raises(ModelError, match=r"Gemma-2 text encoder from a file, whose tokenizer Marble cannot ship \(none "
                                         r"was given\): point --tokenizer-folder .*Sana"):  # fmt: skip
        run(make_backend(library_home), replace(request, tokenizer_folder=""))
    with pytest.raises(ModelError, match=r"cannot ship \(.*config holds none\)"):
        run(make_backend(library_home), replace(request, tokenizer_folder=str(config)))


def test_an_sd_vae_is_refused_for_sana_and_a_dc_ae_for_the_others(library_home, sana, tmp_path):
    from desktop.engine.library.index import Library
    from tests.support.tiny_components import save_ae
    from tests.support.tiny_dit import _vae

    Library(library_home).import_path(save_ae(_vae(4, None, 0.13025), tmp_path / "sdxl_vae.safetensors"), "vae")
    config = config_folder(sana["pipe"], tmp_path / "config")
    request = request_for(sana["original"], model_config=str(config), text_encoders="gemma_2_2b_it", vae="sdxl_vae",
                          tokenizer_folder=str(tmp_path / "gemma-tokenizer"))  # fmt: skip
    with pytest.raises(ModelError, match=r"'sdxl_vae' .* is a SD 1\.x / 2\.x / SDXL VAE; .*Sana's deep-compression"):
        run(make_backend(library_home), request)
    # Flux.2's VAE has the DC-AE's 32 latent channels: the DC-AE is refused by what it is, not loaded half-fitting.
    from desktop.engine.backends.encoder_components import Component, load_vae
    from desktop.engine.resources import Resources

    dc_ae = Library(library_home).get("vae", "dc-ae-diffusers")
    klein = Resources.default().config_folder("flux2-klein-4b") / "vae"
    with pytest.raises(ModelError, match=r"is a Sana DC-AE; klein works in 32 channels of its own VAE's.*flux2-vae"):
        load_vae(klein, Component(dc_ae.name, Library(library_home).path_of(dc_ae)), model_name="klein",
                 dtype=torch.float32, convert_ldm=None)  # fmt: skip


def test_a_folder_that_cannot_serve_it_is_refused_before_the_load(paths, sana, tmp_path):
    folder = tmp_path / "not-sana"
    shutil.copytree(sana["folder"], folder)
    shutil.rmtree(folder / "tokenizer")
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelError, match=r"not-sana cannot serve .*: it has no tokenizer/; no DC-AE autoencoder"):
        run(make_backend(paths), request_for(sana["original"], model_config=str(sana["folder"]),
                                             text_encoders=str(folder)))  # fmt: skip


def test_pixarts_makers_names_are_not_taken_for_sanas(tmp_path):
    from safetensors.torch import save_file

    # PixArt's blocks in its makers' names share Sana's but for its MLP (`fc1`, Sana's a GLUMBConv).
    pixart = {f"model.diffusion_model.blocks.0.{name}.weight": torch.zeros(1) for name in
              ("cross_attn.q_linear", "mlp.fc1", "attn.qkv")}  # fmt: skip
    save_file(pixart, str(tmp_path / "pixart.safetensors"))
    with pytest.raises(ModelError, match=r"pixart\.safetensors looks like PixArt but x_embedder\.proj\.weight is "):
        detect_model(tmp_path / "pixart.safetensors")


@pytest.fixture(scope="module")
def sprint(sana, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sana_sprint")
    pipe = build_tiny_sana(seed=2, sprint=True)
    folder = tmp / "Sana_Sprint_1.6B_1024px_diffusers"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    return {"folder": folder, "file": save_transformer_file(state, tmp / "sana_sprint.safetensors", prefix=PREFIX)}


def bare_sprint(folder, request, **extra):
    from diffusers import SanaSprintImg2ImgPipeline, SanaSprintPipeline

    cls = SanaSprintImg2ImgPipeline if "image" in extra else SanaSprintPipeline
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pixels(pipe(prompt=request.prompt, num_inference_steps=request.steps, width=request.width,
                       height=request.height, guidance_scale=request.cfg_scale, use_resolution_binning=False,
                       generator=torch.Generator("cpu").manual_seed(request.seed), **extra).images[0])  # fmt: skip


def test_a_sana_sprint_folder_runs_its_own_pipeline_and_defaults(paths, sprint):
    arch = detect_model(sprint["folder"])
    assert (arch.family, arch.dit.variant, arch.config_name, arch.label) == ("sana", "sprint", "sana-sprint",
                                                                             "Sana Sprint")  # fmt: skip
    assert model_family(sprint["folder"]) == "sana-sprint"
    assert family_defaults("sana-sprint") == {"steps": 2, "cfg_scale": 4.5}
    # Its tensors say Sprint (its guidance embedder): nothing for the user to mark, on a Sana file either.
    assert variant_choices("sana") == {}
    request = request_for(sprint["folder"], steps=2, cfg_scale=4.5, negative_prompt="blurry")
    batch, steps = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_sprint(sprint["folder"], request))
    assert [step.step for step in steps] == [0, 1, 2]  # the preview fit's notice, then two steps
    assert batch.notes == ("Sana Sprint takes no negative prompt (its guidance is embedded, as Flux.1 dev's); it was "
                           "ignored.",)  # fmt: skip
    # Its guidance is embedded: another value, another picture.
    other, _ = run(make_backend(paths), replace(request, cfg_scale=2.0))
    assert not np.array_equal(pixels(other.images[0]), pixels(batch.images[0]))


def test_a_sprint_file_runs_sprints_scheduler_whatever_folder_lends_the_encoders(paths, sana, sprint, tmp_path):
    arch = detect_model(sprint["file"])
    assert (arch.dit.variant, arch.dit.layout, arch.label) == ("sprint", "diffusers", "Sana Sprint")
    # The encoders from a folder whose scheduler is Sana's DPM-Solver: Sprint's SCM runs.
    lender = tmp_path / "lender"
    shutil.copytree(sprint["folder"], lender)
    shutil.rmtree(lender / "scheduler")
    shutil.copytree(sana["folder"] / "scheduler", lender / "scheduler")
    index = lender / "model_index.json"
    index.write_text(index.read_text(encoding="utf-8").replace('"SCMScheduler"', '"DPMSolverMultistepScheduler"'),
                     encoding="utf-8")  # fmt: skip
    request = request_for(sprint["file"], steps=2, cfg_scale=4.5, model_config=str(sprint["folder"]),
                          text_encoders=str(lender))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_sprint(sprint["folder"], request))


def test_a_sprint_file_in_its_makers_names_is_converted(paths, sprint, tmp_path):
    # NVlabs' Sprint checkpoint: `cfg_embedder` for the guidance, `t_embedder` alone for the time, and the
    # log-variance head of its training, which the model does not use.
    from diffusers import SanaSprintPipeline

    pipe = SanaSprintPipeline.from_pretrained(str(sprint["folder"]), local_files_only=True)
    state = dict(pipe.transformer.state_dict())
    makers = original_names(state) | {"logvar_linear.weight": torch.ones(1, 4), "logvar_linear.bias": torch.ones(1)}
    assert "cfg_embedder.mlp.0.weight" in makers and "t_embedder.mlp.2.bias" in makers
    path = save_transformer_file(makers, tmp_path / "Sana_Sprint_1.6B_1024px.safetensors", prefix=PREFIX)
    arch = detect_model(path)
    assert (arch.dit.variant, arch.dit.layout, arch.label) == ("sprint", "original", "Sana Sprint")
    request = request_for(path, steps=2, cfg_scale=4.5, text_encoders=str(sprint["folder"]),
                          model_config=str(sprint["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_sprint(sprint["folder"], request))
    # A tensor of its training that is not the log-variance head is still refused by name.
    odd = save_transformer_file(makers | {"cfg_embedder.mlp.4.weight": torch.ones(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(ModelError, match=r"odd\.safetensors.*cfg_embedder\.mlp\.4"):
        run(make_backend(paths), replace(request, model=str(odd)))


def test_sprint_runs_image_to_image_and_inpainting(paths, sprint, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "source.png")
    source = str(tmp_path / "source.png")
    request = request_for(sprint["folder"], init_image=source, strength=0.6, steps=2, cfg_scale=4.5, seed=43)
    batch, _ = run(make_backend(paths), request)
    expected = bare_sprint(sprint["folder"], request, image=Image.open(source), strength=0.6)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # Inpainting (refused before 2026-12-07): Marble's steering of Sprint's sampler (the pipeline's own checks below).
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    inpainting = replace(request, mask=str(tmp_path / "mask.png"), strength=1.0, mask_blur=0)
    inpainted, steps = run(make_backend(paths), inpainting)
    edit = sprint_edit(sprint["folder"])
    by_hand = edit(prompt=request.prompt, image=Image.open(source), mask_image=mask, strength=1.0,
                   num_inference_steps=2, width=64, height=64, guidance_scale=4.5, use_resolution_binning=False,
                   generator=torch.Generator().manual_seed(43)).images[0]  # fmt: skip
    # Inside the mask the pipeline's picture; outside it Marble lays the source back over it (as A1111 does).
    drawn, expected = pixels(inpainted.images[0]), pixels(by_hand)
    assert np.array_equal(drawn[16:48, 16:48], expected[16:48, 16:48])
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert (drawn[outside] == (200, 40, 40)).all()
    assert np.abs(drawn[16:48, 16:48].astype(int) - (200, 40, 40)).mean() > 20  # repainted
    assert [step.step for step in steps if step.waiting is None] == [1, 2]
    # A batch: one source per image, each repainted with its own seed.
    pair, _ = run(make_backend(paths), replace(inpainting, batch_size=2))
    first, second = (pixels(image) for image in pair.images)
    assert np.array_equal(first, drawn) and (second[outside] == (200, 40, 40)).all()
    assert not np.array_equal(first[16:48, 16:48], second[16:48, 16:48])
    # The hires fix's second pass is its image-to-image pipeline (from pixels with a pixel upscaler).
    hires_request = request_for(sprint["folder"], steps=2, cfg_scale=4.5, hires_fix=True, hires_scale=1.5,
                                hires_steps=2, hires_upscaler="Lanczos")  # fmt: skip
    hires, _ = run(make_backend(paths), hires_request)
    assert hires.images[0].size == (96, 96)


def sprint_edit(folder):
    """Marble's pipeline for Sprint's edits (families_sana.img2img_class), loaded from the folder as diffusers loads."""
    from desktop.engine.backends.families_sana import img2img_class

    pipe = img2img_class().from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_sprint_inpainting_keeps_the_sources_latents_outside_the_mask(sprint, strength):
    """Outside the mask the last estimate, which is the picture, is the source's latents; inside it is repainted, and
    at strength 1 from the noise alone: what text to image draws for the seed, where the mask covers everything."""
    from PIL import Image

    edit = sprint_edit(sprint["folder"])
    source = Image.new("RGB", (64, 64), SOURCE_COLOUR)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 20, 64))  # latent columns 0 to 2 (8 pixels each) hold masked pixels
    call = dict(prompt="a cat", strength=strength, num_inference_steps=2, width=64, height=64, guidance_scale=4.5,
                use_resolution_binning=False, output_type="latent")  # fmt: skip
    latents = edit(**call, image=source, mask_image=mask, generator=torch.Generator().manual_seed(7)).images
    assert "step" not in vars(edit.scheduler)  # the steering of its sampler ended with the call
    clean = source_latents(edit, source)
    assert torch.allclose(latents[..., 3:], clean[..., 3:], atol=1e-5)
    assert not torch.allclose(latents[..., :3], clean[..., :3], atol=1e-2)
    # Without the mask, the same call is diffusers' image to image: the source is not kept anywhere.
    plain = edit(**call, image=source, generator=torch.Generator().manual_seed(7)).images
    assert not torch.allclose(plain[..., 3:], clean[..., 3:], atol=1e-2)
    if strength == 1.0:
        everything = edit(**call, image=source, mask_image=Image.new("L", (64, 64), 255),
                          generator=torch.Generator().manual_seed(7)).images  # fmt: skip
        assert torch.allclose(everything, plain, atol=1e-5)


def test_sprints_latent_hires_fix_is_the_two_passes_by_hand(paths, sprint):
    """A latent upscaler interpolates Sprint's first-pass latents and hands them to its image-to-image pipeline, noised
    as that pipeline noises an encoded picture (SCM's cos t * x0 + sin t * noise, both times sigma_data). Before
    2026-12-07 it ran as Lanczos, diffusers' pipeline resizing any tensor as a picture."""
    from diffusers import SanaSprintImg2ImgPipeline
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    request = request_for(sprint["folder"], steps=2, cfg_scale=4.5, negative_prompt="", seed=43, hires_fix=True,
                          hires_scale=1.5, hires_steps=2, hires_denoise=0.5, hires_upscaler="Latent")  # fmt: skip
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (96, 96) and batch.notes == ()
    assert steps[-1].step == steps[-1].total == 3  # 2 steps, then the last 1 of 2 at strength 0.5
    first = _final_latents(sprint["folder"], request, sprint=True)[None]  # (1, 32, 8, 8): the DC-AE's, scaled
    upscaled = torch.nn.functional.interpolate(first.float(), size=(12, 12), mode="bilinear")
    second = SanaSprintImg2ImgPipeline.from_pretrained(str(sprint["folder"]), local_files_only=True)
    second.set_progress_bar_config(disable=True)
    call = dict(prompt=request.prompt, num_inference_steps=2, strength=0.5, width=96, height=96, guidance_scale=4.5,
                use_resolution_binning=False, image=Image.new("RGB", (96, 96)))  # fmt: skip
    times = []
    second(**call, generator=torch.Generator().manual_seed(43),
           callback_on_step_end=lambda pipe, i, t, tensors: times.append(t) or {})  # fmt: skip
    generator = torch.Generator().manual_seed(43)
    sigma_data = second.scheduler.config.sigma_data
    noise = randn_tensor(upscaled.shape, generator=generator, dtype=torch.float32) * sigma_data
    noised = torch.cos(times[0]) * upscaled * sigma_data + torch.sin(times[0]) * noise
    expected = second(**call, latents=noised, generator=generator).images[0]
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    # The latents interpolated as the pipeline's latents (without sigma_data) would be another picture.
    generator = torch.Generator().manual_seed(43)
    randn_tensor(upscaled.shape, generator=generator, dtype=torch.float32)  # the same draws after the noise
    other = second(**call, latents=torch.cos(times[0]) * upscaled + torch.sin(times[0]) * noise,
                   generator=generator).images[0]  # fmt: skip
    assert np.abs(pixels(other).astype(int) - pixels(expected).astype(int)).mean() > 1
    # A batch: one first-pass latent per seed, each its own second pass.
    pair, _ = run(make_backend(paths), replace(request, batch_size=2))
    assert [image.size for image in pair.images] == [(96, 96)] * 2
    assert not np.array_equal(pixels(pair.images[0]), pixels(pair.images[1]))


def _final_latents(folder, request, sprint=False):
    """The job's final latents as the bare pipeline leaves them, in the transformer's space (before the DC-AE's
    scaling is undone)."""
    from diffusers import SanaSprintPipeline

    pipe = (SanaSprintPipeline if sprint else SanaPipeline).from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    negative = {} if sprint else {"negative_prompt": request.negative_prompt}  # Sprint takes none
    return pipe(prompt=request.prompt, **negative, num_inference_steps=request.steps, width=request.width,
                height=request.height, guidance_scale=request.cfg_scale, use_resolution_binning=False,
                output_type="latent", generator=torch.Generator("cpu").manual_seed(request.seed)).images[0]  # fmt: skip


@pytest.mark.parametrize("kind", ["sana", "sprint"])
def test_previews_read_colours_fitted_from_the_dc_ae(paths, sana, sprint, kind):
    """No table is published for Sana's DC-AE: the first job with previews fits one from the loaded autoencoder
    (preview_fit.py; how well it fits is checked in test_preview_fit.py). Before 2026-12-07 Sana's previews went
    through Flux.2's 32-channel table, another autoencoder's colours. Sprint's sampler holds its estimates times
    sigma_data (0.5), which its table undoes."""
    from desktop.engine.backends.preview_fit import fit_from_autoencoder

    folder = sana["folder"] if kind == "sana" else sprint["folder"]
    request = request_for(folder, steps=3 if kind == "sana" else 2, cfg_scale=4.5, seed=7)
    backend = make_backend(paths)
    assert not paths.preview_tables.exists()
    _, steps = run(backend, request)
    table = backend._fitted_colours
    assert table is not None and table.name == "fitted from the autoencoder"
    assert steps[0] == StepInfo(0, 0, 0, None, Waiting.FITTING_PREVIEWS)  # said before the fit, not a step
    assert all(step.waiting is None for step in steps[1:])
    vae = backend._pipe.vae
    by_hand = fit_from_autoencoder(vae, 8, vae.config.scaling_factor, torch.device("cpu"))
    base = table if kind == "sana" else table.scaled(2.0)  # the table for latents as the transformer holds them
    assert np.allclose(base.factors, by_hand.factors, atol=1e-6) and np.allclose(base.bias, by_hand.bias, atol=1e-6)
    # Both samplers' last estimates are the final latents (Sprint's times 0.5): the last preview is them through it.
    latents = _final_latents(folder, request, sprint=kind == "sprint").numpy()
    drawn = latents_to_rgb(latents, base).astype(int)
    assert np.abs(steps[-1].preview.astype(int) - drawn).max() <= 1
    assert np.abs(latents_to_rgb(latents, "flux2").astype(int) - drawn).mean() > 20  # not Flux.2's colours
    # Fitted once per autoencoder: kept in the cache folder, where a restarted app finds it.
    _, second = run(backend, request)
    assert backend._fitted_colours is table and all(step.waiting is None for step in second)
    (stored,) = paths.preview_tables.iterdir()
    restarted = make_backend(paths)
    with mock.patch("desktop.engine.backends.preview_fit.fit_from_autoencoder", side_effect=AssertionError("fitted")):
        _, again = run(restarted, request)
    assert np.array_equal(again[-1].preview, steps[-1].preview) and list(paths.preview_tables.iterdir()) == [stored]
    assert all(step.waiting is None for step in again)  # read from the cache: nothing to say
    # A job without previews fits none.
    quiet = make_backend(paths, preview_every=0)
    _, silent = run(quiet, request)
    assert quiet._fitted_colours is None and all(step.waiting is None for step in silent)


def test_a_job_cancelled_while_the_previews_are_fitted_stops_before_its_first_step(paths, sana):
    """The fit takes some 20 s on a CPU: a job cancelled meanwhile ends there (Cancelled, no step), keeps no table,
    and the next job fits again."""
    request = request_for(sana["folder"], steps=3, cfg_scale=4.5, seed=7)
    backend = make_backend(paths)
    backend.load(request)
    token, seen = CancelToken(), []

    def on_step(info):
        seen.append(info)
        token.cancel()  # at the fit's notice: the fit asks before its first encode

    with mock.patch.object(backend._pipe.vae, "decode", side_effect=AssertionError("decoded")) as decode:
        with pytest.raises(Cancelled):
            backend.generate(request, 0, on_step, token)
    assert seen == [StepInfo(0, 0, 0, None, Waiting.FITTING_PREVIEWS)] and decode.call_count == 0
    assert backend._fitted_colours is None and not paths.preview_tables.exists()
    _, steps = run(backend, request)
    assert steps[0].waiting is Waiting.FITTING_PREVIEWS and [step.step for step in steps[1:]] == [1, 2, 3]
    assert backend._fitted_colours is not None and len(list(paths.preview_tables.iterdir())) == 1


def sana_edit(folder):
    from desktop.engine.backends.families import own_edit_pipeline

    pipe = bare_pipeline(folder)
    return pipe, own_edit_pipeline(pipe, "sana")


class _Unbinned:
    """Calls a Sana pipeline as Marble does: the size asked, not snapped to a trained aspect ratio."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.vae, self.image_processor = pipe.vae, pipe.image_processor

    def __call__(self, **call):
        return self.pipe(**call, use_resolution_binning=False)


def test_image_to_image_runs_the_tail_of_the_text_to_image_schedule(sana):
    pipe, edit = sana_edit(sana["folder"])
    check_schedule_tail(_Unbinned(pipe), _Unbinned(edit), guidance=4.5)


def test_inpainting_leaves_the_sources_latents_outside_the_mask(sana):
    check_inpainting_keeps_the_source(_Unbinned(sana_edit(sana["folder"])[1]), guidance_scale=1.0)


def test_edits_and_the_hires_fix_run_through_marble(paths, sana, tmp_path):
    check_edits_through_marble(paths, sana["folder"], _Unbinned(sana_edit(sana["folder"])[1]), 4.5, tmp_path)


_LORA_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_v")


@pytest.mark.parametrize("naming", NAMINGS)
def test_a_sana_lora_is_detected_and_applied_as_bare_diffusers_applies_it(paths, sana, naming, tmp_path):
    check_lora_as_bare_diffusers(paths, tmp_path, sana["folder"], bare_pipeline, transformer=sana["pipe"].transformer,
                                 blocks=("transformer_blocks.0.", "transformer_blocks.1."), layers=_LORA_LAYERS,
                                 naming=naming, cfg=4.5, family="sana", label="Sana", unbinned=True)  # fmt: skip


@pytest.mark.parametrize(("config", "guided"), [("sana", False), ("sana-sprint", True)])
def test_the_shipped_configs_are_the_published_models(config, guided):
    from accelerate import init_empty_weights

    from desktop.engine.resources import Resources

    folder = Resources.default().config_folder(config)
    settings = SanaTransformer2DModel.load_config(str(folder), subfolder="transformer")
    with init_empty_weights():
        model = SanaTransformer2DModel.from_config(settings)
    # Sana 1600M: 20 blocks 2240 wide ("1.6B" in NVIDIA's model card); Sprint the same with its guidance embedder.
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == 1.6
    assert (settings["num_layers"], settings.get("guidance_embeds", False)) == (20, guided)
    # Its DC-AE (dc-ae-f32c32-sana-1.0 as diffusers' conversion script builds it: 32 channels, 32x) and Gemma-2 2B,
    # for library encoders and VAEs.
    from diffusers import AutoencoderDC
    from transformers import AutoConfig, Gemma2Model

    with init_empty_weights():
        vae = AutoencoderDC.from_config(AutoencoderDC.load_config(str(folder), subfolder="vae"))
        gemma = Gemma2Model(AutoConfig.from_pretrained(str(folder / "text_encoder")))
    assert (sum(p.numel() for p in vae.parameters()), vae.config.latent_channels) == (312_250_275, 32)
    assert vae.spatial_compression_ratio == 32 and vae.config.scaling_factor == 0.41407
    assert (gemma.config.hidden_size, settings["caption_channels"]) == (2304, 2304)
