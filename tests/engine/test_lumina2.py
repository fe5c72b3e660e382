"""Lumina Image 2.0 (Alpha-VLLM's, and fine-tunes in its layout such as Neta Lumina): a tiny random model as a
diffusers folder, as a transformer-only file in its makers' names (ComfyUI's, with and without its prefix) and in
diffusers' names, and as a GGUF; detected from its tensors (told from Z-Image, which shares the names, by the
Gemma-2 caption width) and run offline through Marble, pixel-identical to bare diffusers with the same seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import GGUFQuantizationConfig, Lumina2Pipeline, Lumina2Transformer2DModel

from desktop.engine.backends.families_lumina2 import diffusers_names
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.flow_edit_checks import (
    check_edits_through_marble,
    check_inpainting_keeps_the_source,
    check_schedule_tail,
)
from tests.support.tiny_dit import save_gguf
from tests.support.tiny_lumina2 import build_tiny_lumina2, lumina2_to_original
from tests.support.tiny_qwen_zimage import build_tiny_z_image, save_transformer_file, z_image_to_original

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def lumina(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lumina2")
    pipe = build_tiny_lumina2()
    folder = tmp / "lumina"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": folder,
        # ComfyUI's file, under a name that says nothing true.
        "original": save_transformer_file(lumina2_to_original(state), tmp / "z-image.safetensors", prefix=PREFIX),
        "bare": save_transformer_file(lumina2_to_original(state), tmp / "neta.safetensors"),
        "diffusers": save_transformer_file(state, tmp / "lumina-diffusers.safetensors"),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_image(folder, request, transformer=None):
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = Lumina2Pipeline.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        width=request.width, height=request.height, guidance_scale=request.cfg_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0])  # fmt: skip


def test_a_lumina2_folder_is_detected_and_matches_bare_diffusers(paths, lumina):
    arch = detect_model(lumina["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.label) == (
        "lumina2", "diffusers", "lumina2", "Lumina Image 2.0"
    )  # fmt: skip
    request = request_for(lumina["folder"], steps=3, cfg_scale=4.0)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(lumina["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == 3 and all(step.preview is not None for step in steps)
    # Its CFG runs against the negative prompt: another negative, another image.
    other, _ = run(make_backend(paths), request_for(lumina["folder"], steps=3, cfg_scale=4.0, negative_prompt="dark"))
    assert not np.array_equal(pixels(other.images[0]), expected)


@pytest.mark.parametrize("layout", ["original", "bare", "diffusers"])
def test_transformer_files_in_each_layout_match_with_the_folders_text_encoder(paths, lumina, layout):
    arch = detect_model(lumina[layout])
    assert (arch.family, arch.dit.layout, arch.dit.blocks) == ("lumina2", "diffusers" if layout == "diffusers" else
                                                                "original", (2, 1))  # fmt: skip
    assert arch.dit.needs_components
    request = request_for(lumina[layout], steps=3, cfg_scale=4.0, model_config=str(lumina["folder"]),
                          text_encoders=str(lumina["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(lumina["folder"], request))


def test_original_names_convert_to_every_diffusers_tensor_at_the_configs_sizes(lumina):
    # The query and key/value heads differ (4 and 2), so a cut at the wrong sizes cannot pass.
    state = dict(lumina["pipe"].transformer.state_dict())
    converted = diffusers_names(lumina2_to_original(state), lumina["pipe"].transformer.config)
    assert sorted(converted) == sorted(state)
    assert all(torch.equal(converted[key], state[key]) for key in state)
    with pytest.raises(KeyError, match="layers.0.attention.mystery"):
        diffusers_names({"layers.0.attention.mystery.weight": torch.zeros(1)}, lumina["pipe"].transformer.config)


def test_a_lumina2_gguf_matches_diffusers_gguf_loading(paths, lumina, tmp_path):
    path = save_gguf(lumina2_to_original(dict(lumina["pipe"].transformer.state_dict())), tmp_path / "l-Q8_0.gguf",
                     arch="lumina2")  # fmt: skip
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.quantization) == ("lumina2", "original", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=4.0, model_config=str(lumina["folder"]),
                          text_encoders=str(lumina["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    # diffusers' own GGUF loading, from the same tensors in diffusers' names (its converter cuts q/k/v at the
    # real model's sizes only).
    renamed = save_gguf(dict(lumina["pipe"].transformer.state_dict()), tmp_path / "d-Q8_0.gguf", arch="lumina2")
    transformer = Lumina2Transformer2DModel.from_single_file(
        str(renamed), config=str(lumina["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    expected = bare_image(lumina["folder"], request, transformer)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(lumina["folder"], request))  # the quantisation shows


def test_lumina2_is_told_from_z_image_by_its_padding_tokens_and_caption_width(lumina, tmp_path):
    # The same names: Z-Image has its padding tokens, Lumina none, and Lumina's caption input is Gemma-2's 2304.
    z_state = z_image_to_original(dict(build_tiny_z_image().transformer.state_dict()))
    assert detect_model(save_transformer_file(z_state, tmp_path / "z.safetensors")).family == "z-image"
    assert detect_model(lumina["bare"]).family == "lumina2"
    padless = {key: value for key, value in z_state.items() if not key.endswith("_pad_token")}
    assert detect_model(save_transformer_file(padless, tmp_path / "z-padless.safetensors")).family == "lumina2"
    z_state["cap_embedder.1.weight"] = torch.zeros(32, 2304)
    assert detect_model(save_transformer_file(z_state, tmp_path / "z-wide.safetensors")).family == "lumina2"


def test_damaged_files_and_missing_components_are_refused_by_name(paths, lumina, tmp_path):
    state = lumina2_to_original(dict(lumina["pipe"].transformer.state_dict()))
    middle = save_transformer_file(state, tmp_path / "my-lumina.safetensors", prefix=PREFIX, drop="layers.0")
    with pytest.raises(ModelError, match=r"my-lumina\.safetensors looks like Lumina Image 2\.0 but layers\.0 is"):
        detect_model(middle)
    last = save_transformer_file(state, tmp_path / "short.safetensors", drop="layers.1")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 main blocks but the Lumina Image 2\.0 config"):
        run(make_backend(paths), request_for(last, model_config=str(lumina["folder"]),
                                             text_encoders=str(lumina["folder"])))  # fmt: skip
    # Without its text encoder folder or library files, it says what to supply.
    with pytest.raises(ModelError, match=r"Gemma-2 2B text encoder, its tokenizer and its VAE"):
        run(make_backend(paths), request_for(lumina["bare"], model_config=str(lumina["folder"])))
    # A Z-Image folder's Qwen3 would load with half its weights random: refused by its config.
    z_folder = tmp_path / "z"
    build_tiny_z_image().save_pretrained(str(z_folder), safe_serialization=True)
    with pytest.raises(ModelError, match=r"its text encoder and VAE are qwen3 and AutoencoderKL, but Lumina Image"):
        run(make_backend(paths), request_for(lumina["bare"], model_config=str(lumina["folder"]),
                                             text_encoders=str(z_folder)))  # fmt: skip


def test_control_units_are_refused_before_the_model_loads(paths, lumina, tmp_path):
    from PIL import Image

    from desktop.engine.request import ControlUnit

    Image.new("RGB", (64, 64), (90, 30, 200)).save(tmp_path / "source.png")
    with pytest.raises((InvalidRequest, ModelError), match="Lumina Image 2.0"):
        run(make_backend(paths), request_for(lumina["folder"],
                                             controls=(ControlUnit("edges", str(tmp_path / "source.png")),)))


def lumina_edit(folder):
    from desktop.engine.backends.families import own_edit_pipeline

    pipe = Lumina2Pipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, own_edit_pipeline(pipe, "lumina2")


def test_image_to_image_runs_the_tail_of_the_text_to_image_schedule(lumina):
    check_schedule_tail(*lumina_edit(lumina["folder"]), guidance=4.0)


def test_inpainting_leaves_the_sources_latents_outside_the_mask(lumina):
    check_inpainting_keeps_the_source(lumina_edit(lumina["folder"])[1])


def test_edits_and_the_hires_fix_run_through_marble(paths, lumina, tmp_path):
    check_edits_through_marble(paths, lumina["folder"], lumina_edit(lumina["folder"])[1], 4.0, tmp_path)


def test_library_family_defaults_and_the_shipped_config(lumina):
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.resources import Resources

    assert model_family(lumina["folder"]) == "lumina2" and model_family(lumina["original"]) == "lumina2"
    assert family_defaults("lumina2") == {"cfg_scale": 4.0}
    # The published 2.6B transformer, counted from the shipped config on the meta device.
    cls = transformer_class("lumina2")
    config = cls.load_config(str(Resources.default().config_folder("lumina2")), subfolder="transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 2_609_769_152


def lumina_lora(transformer, seed: int = 3) -> dict[str, torch.Tensor]:
    """A LoRA on every attention projection and the feed-forward's output, in diffusers' names (what diffusers'
    Lumina trainer writes): `transformer.layers.N.attn.to_q.lora_A.weight` ..."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if name.endswith(("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "feed_forward.linear_2")):
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator) / 2
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator) / 2
    return tensors


def test_a_lumina2_lora_is_detected_and_applied_as_bare_diffusers_applies_it(paths, lumina, tmp_path):
    from safetensors.torch import save_file

    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.lora import inspect_lora

    save_file(lumina_lora(lumina["pipe"].transformer), str(paths.loras / "style.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "style.safetensors"), "style")
    assert (info.family, info.label, info.transformer_width) == ("lumina2", "Lumina Image 2.0", 64)
    request = request_for(lumina["folder"], prompt="a red circle <lora:style:0.8>", steps=3, cfg_scale=4.0)
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    pipe = Lumina2Pipeline.from_pretrained(str(lumina["folder"]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(paths.loras / "style.safetensors"), adapter_name="style")
    pipe.set_adapters(["style"], [0.8])
    expected = pixels(pipe(prompt="a red circle", negative_prompt=request.negative_prompt, num_inference_steps=3,
                           width=64, height=64, guidance_scale=4.0,
                           generator=torch.Generator("cpu").manual_seed(request.seed)).images[0])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    plain = bare_image(lumina["folder"], request_for(lumina["folder"], prompt="a red circle", steps=3, cfg_scale=4.0))
    assert not np.array_equal(expected, plain)
    # One of another width is refused by it, not loaded in part.
    wide = {k: torch.zeros(v.shape[0], 48) if k.endswith("lora_A.weight") else v
            for k, v in lumina_lora(lumina["pipe"].transformer).items()}  # fmt: skip
    save_file(wide, str(paths.loras / "wide.safetensors"))
    with pytest.raises(ModelError, match=r"'wide' does not fit .*width 48, .*have 64"):
        run(make_backend(paths), request_for(lumina["folder"], prompt="x <lora:wide:1>", steps=2))


def test_lora_families_are_told_apart_by_names_and_width(tmp_path):
    from safetensors.torch import save_file

    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.lora import inspect_lora

    def family(tensors):
        save_file(tensors, str(tmp_path / "l.safetensors"))
        return inspect_lora(read_safetensors_header(tmp_path / "l.safetensors"), "l").family

    def pair(key, width):
        return {f"{key}.lora_A.weight": torch.zeros(4, width), f"{key}.lora_B.weight": torch.zeros(width, 4)}

    # The makers' names (fused qkv), shared by the two families: the block width decides (2304 = Lumina).
    assert family(pair("diffusion_model.layers.0.attention.qkv", 2304)) == "lumina2"
    assert family(pair("diffusion_model.layers.0.attention.qkv", 3840)) == "z-image"
    # diffusers' names differ: Lumina's `attn`, Z-Image's `attention`.
    assert family(pair("transformer.layers.0.attn.to_q", 32)) == "lumina2"
    assert family(pair("transformer.layers.0.attention.to_q", 32)) == "z-image"


def test_the_command_line_runs_it_and_says_when_a_prompt_is_cut(lumina, tmp_path):
    from desktop.engine.metadata import read_image_metadata
    from tests.support.cli_runner import run_cli

    out = tmp_path / "l.png"
    long_prompt = "a red circle " * 120  # far past the 256 tokens its encoder reads
    code, stdout, err = run_cli(
        "generate", "--model", str(lumina["folder"]), "--prompt", long_prompt, "--steps", "2", "--seed", "4",
        "--width", "64", "--height", "64", "--device", "cpu", "--out", str(out), "--no-preview",
        "--home", str(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, err
    assert "Lumina Image 2.0's text encoder, which reads the first 256" in stdout + err
    metadata = read_image_metadata(out)
    assert "CFG scale: 4" in metadata.raw["parameters"] and "Steps: 2" in metadata.raw["parameters"]


def test_a_prompt_with_its_own_system_prompt_replaces_the_pipelines(paths, lumina):
    # As ComfyUI's Lumina workflows write it (Neta Lumina asks for its own system prompt): the part before
    # "<Prompt Start>" is the system prompt, which diffusers would otherwise put before it a second time.
    system = "You are an assistant designed to generate anime images based on textual prompts."
    text = f"{system} <Prompt Start> a red circle"
    batch, _ = run(make_backend(paths), request_for(lumina["folder"], prompt=text, steps=3, cfg_scale=4.0))
    pipe = Lumina2Pipeline.from_pretrained(str(lumina["folder"]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def by_hand(**prompt):
        return pixels(pipe(negative_prompt="blurry", num_inference_steps=3, width=64, height=64, guidance_scale=4.0,
                           generator=torch.Generator("cpu").manual_seed(42), **prompt).images[0])  # fmt: skip

    expected = by_hand(prompt="a red circle", system_prompt=system)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, by_hand(prompt="a red circle"))  # the pipeline's own system prompt


def test_the_conversion_agrees_with_diffusers_own_at_the_real_models_sizes(lumina):
    # diffusers' converter cuts q/k/v at the real model's sizes only (2304 + 768 + 768 rows): at those sizes the
    # two must give the same tensors under the same names. The tiny model's names, with a fused qkv of the real
    # row count (a few columns), and every other tensor as it is.
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers

    state = lumina2_to_original(dict(lumina["pipe"].transformer.state_dict()))
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(3840, 3, generator=generator) if key.endswith("attention.qkv.weight") else value
             for key, value in state.items()}  # fmt: skip
    real = {"hidden_size": 2304, "num_attention_heads": 24, "num_kv_heads": 8}
    ours = diffusers_names(dict(state), real)
    theirs = convert_lumina2_to_diffusers(dict(state))
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


@pytest.fixture
def library_home(tmp_path, lumina):
    """A home with ComfyUI's kind of Gemma-2 file (its `model.` names and the SentencePiece tokenizer it carries,
    which Marble does not read) and the Flux VAE in the libraries."""
    from safetensors.torch import save_file

    from desktop.engine.library.index import Library
    from tests.support.tiny_components import save_ae
    from tests.support.tiny_qwen_encoders import comfy_qwen_state

    state = comfy_qwen_state(lumina["pipe"].text_encoder, head=False)
    state["spiece_model"] = torch.frombuffer(bytearray(b"\x0a\x05hello"), dtype=torch.uint8)
    save_file(state, str(tmp_path / "gemma_2_2b_fp16.safetensors"))
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(tmp_path / "gemma_2_2b_fp16.safetensors", "encoder")
    library.import_path(save_ae(lumina["pipe"].vae, tmp_path / "ae.safetensors"), "vae")
    lumina["pipe"].tokenizer.save_pretrained(str(tmp_path / "gemma-tokenizer"))
    return paths


def test_a_lumina2_file_runs_with_a_gemma_file_and_vae_from_the_library(library_home, lumina, tmp_path):
    from desktop.engine.library.index import Library

    record = Library(library_home).get("encoder", "gemma_2_2b_fp16")
    assert (record.family, record.components) == ("gemma2", ("gemma2",))
    assert "Gemma 2 text encoder (width 32)" in record.shown_architecture
    from desktop.engine.library.index import guess_kind

    assert guess_kind(tmp_path / "gemma_2_2b_fp16.safetensors") == "encoder"  # a dropped file goes to its library
    request = request_for(lumina["bare"], steps=3, cfg_scale=4.0, model_config=str(lumina["folder"]),
                          text_encoders="gemma_2_2b_fp16", vae="ae",
                          tokenizer_folder=str(tmp_path / "gemma-tokenizer"))  # fmt: skip
    batch, _ = run(make_backend(library_home), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(lumina["folder"], request))
    # Gemma's tokenizer cannot ship: without a tokenizer folder (and a config folder without one), it says where
    # to find one.
    from tests.support.tiny_dit import config_folder

    bare_config = config_folder(lumina["pipe"], tmp_path / "config")
    with pytest.raises(ModelError, match=r"whose tokenizer Marble cannot ship: point --tokenizer-folder .*Lumina"):
        run(make_backend(library_home), replace(request, tokenizer_folder="", model_config=str(bare_config)))


def test_gemma_files_are_told_from_the_other_llm_encoders():
    from desktop.engine.library.encoder_qwen import inspect_qwen

    def kind(names):
        shapes = {name: (8, 8) for name in names} | {"model.embed_tokens.weight": (10, 8)}
        return inspect_qwen(shapes, dict.fromkeys(shapes, "F16"), "x")[0]

    layer = "model.layers.0."
    # Plain attention: Gemma 2 by its feed-forward norms, Mistral without them; Qwen3 by its q/k norms.
    assert kind([layer + "self_attn.q_proj.weight", layer + "pre_feedforward_layernorm.weight"]) == "gemma2"
    assert kind([layer + "self_attn.q_proj.weight"]) == "mistral3"
    assert kind([layer + "self_attn.q_proj.weight", layer + "self_attn.q_norm.weight"]) == "qwen3"


def test_the_long_prompt_note_counts_the_system_prompt(paths, lumina):
    # 120 characters read alone fit the 256 tokens (one a character with the tiny tokenizer); after the
    # pipeline's system prompt (about 160) they do not, and the end of the prompt is cut: said.
    prompt = "a red circle " * 9 + "and more"  # 125 characters
    batch, _ = run(make_backend(paths), request_for(lumina["folder"], prompt=prompt, steps=2, cfg_scale=4.0))
    assert any("prompt with its system prompt is" in note and "reads the first 256" in note for note in batch.notes)
