"""Sana (NVIDIA's 1.0 and 1.5): a tiny random model as a diffusers folder, as a transformer-only file in its makers'
names (bare and under ComfyUI's prefix; 1.0's and 1.5's, whose query-key norms diffusers' converter does not know) and
in diffusers', and as a GGUF; detected from its tensors and run offline through Marble, pixel-identical to bare
diffusers with the same seed, its text encoder, tokenizer and autoencoder from a folder."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import GGUFQuantizationConfig, SanaPipeline, SanaTransformer2DModel
from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

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
from tests.support.tiny_dit import save_gguf
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
    assert len(steps) == 3 and all(step.preview is not None for step in steps)
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
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 double blocks but the Sana configuration has 2"):
        run(make_backend(paths), request_for(last, model_config=str(sana["folder"]),
                                             text_encoders=str(sana["folder"])))  # fmt: skip
    odd = save_transformer_file(original | {"blocks.0.attn.extra.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(ModelError, match=r"odd\.safetensors: its Sana transformer does not load .*0\.attn\.extra"):
        run(make_backend(paths), request_for(odd, model_config=str(sana["folder"]), text_encoders=str(sana["folder"])))
    with pytest.raises(ModelError, match=r"needs its text encoder \(Gemma-2 2B\), Gemma's tokenizer and its DC-AE"):
        run(make_backend(paths), request_for(sana["original"], model_config=str(sana["folder"])))
    with pytest.raises(ModelError, match=r"libraries do not read yet"):
        run(make_backend(paths), request_for(sana["original"], model_config=str(sana["folder"]),
                                             text_encoders="gemma_2_2b", vae="dc-ae"))  # fmt: skip


def test_a_folder_that_cannot_serve_it_is_refused_before_the_load(paths, sana, tmp_path):
    folder = tmp_path / "not-sana"
    shutil.copytree(sana["folder"], folder)
    shutil.rmtree(folder / "tokenizer")
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelError, match=r"not-sana cannot serve .*: it has no tokenizer/; no DC-AE autoencoder"):
        run(make_backend(paths), request_for(sana["original"], model_config=str(sana["folder"]),
                                             text_encoders=str(folder)))  # fmt: skip


def test_sana_sprint_and_pixart_are_named_not_taken_for_sana(tmp_path):
    from safetensors.torch import save_file

    sprint = {"time_embed.guidance_embedder.linear_1.weight": torch.zeros(1)} | {
        key: torch.zeros(1) for key in ("transformer_blocks.0.ff.conv_inverted.weight", "caption_norm.weight")
    }
    save_file(sprint, str(tmp_path / "sana_sprint.safetensors"))
    with pytest.raises(ModelError, match=r"is a Sana Sprint model, a family Marble cannot run yet"):
        detect_model(tmp_path / "sana_sprint.safetensors")
    # PixArt's blocks in its makers' names share Sana's but for its MLP (`fc1`, Sana's a GLUMBConv).
    pixart = {f"model.diffusion_model.blocks.0.{name}.weight": torch.zeros(1) for name in
              ("cross_attn.q_linear", "mlp.fc1", "attn.qkv")}  # fmt: skip
    save_file(pixart, str(tmp_path / "pixart.safetensors"))
    with pytest.raises(ModelError, match=r"is a PixArt model, a family Marble cannot run yet"):
        detect_model(tmp_path / "pixart.safetensors")


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
