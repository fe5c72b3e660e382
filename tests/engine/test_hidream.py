"""HiDream-I1 (HiDream.ai's 17B model: Full, Dev and Fast): a tiny random model as a diffusers folder (its four text
encoders, Llama among them, inside), as a transformer-only file in its release's names (bare and under ComfyUI's
prefix) and as a GGUF; detected from its tensors, its release told by a folder's scheduler or marked by the user for a
file, and run offline through Marble, pixel-identical to bare diffusers with the same seed."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    GGUFQuantizationConfig,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
)
from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.checkpoint import detect_model, with_variant
from desktop.engine.library.dit import variant_choices
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
from tests.support.tiny_hidream import build_tiny_hidream
from tests.support.tiny_models import save_diffusers
from tests.support.tiny_qwen_zimage import save_transformer_file

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def hidream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hidream")
    pipe = build_tiny_hidream()
    folder = tmp / "hidream-full"
    save_diffusers(pipe, folder)
    dev = save_diffusers(build_tiny_hidream(variant="dev"), tmp / "hidream-dev")
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": folder,
        "dev": dev,
        # ComfyUI's file, under a name that says nothing true.
        "comfy": save_transformer_file(state, tmp / "flux-dev.safetensors", prefix=PREFIX),
        "bare": save_transformer_file(state, tmp / "hidream_i1.safetensors"),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipeline(folder, transformer=None, scheduler=None):
    parts = {"transformer": transformer} if transformer is not None else {}
    parts |= {"scheduler": scheduler} if scheduler is not None else {}
    pipe = HiDreamImagePipeline.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    # diffusers scales every job to this reference area: the tests' 64x64 pixels.
    pipe.default_sample_size = 64 // pipe.vae_scale_factor
    return pipe


def bare_image(folder, request, transformer=None, scheduler=None):
    pipe = bare_pipeline(folder, transformer, scheduler)
    guided = request.cfg_scale > 1
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt if guided else None,
        num_inference_steps=request.steps, width=request.width, height=request.height,
        guidance_scale=request.cfg_scale, generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0])  # fmt: skip


def test_a_hidream_folder_is_detected_and_matches_bare_diffusers(paths, hidream):
    arch = detect_model(hidream["folder"])
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.config_name, arch.label) == (
        "hidream-i1", "", "diffusers", "hidream-i1", "HiDream-I1"
    )  # fmt: skip
    request = request_for(hidream["folder"], steps=3, cfg_scale=5.0)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(hidream["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == 3 and all(step.preview is not None for step in steps)
    assert not batch.notes
    # Its CFG runs against the negative prompt: another negative, another image.
    other, _ = run(make_backend(paths), replace(request, negative_prompt="dark"))
    assert not np.array_equal(pixels(other.images[0]), expected)


def test_a_dev_folder_is_told_by_its_scheduler_and_runs_without_cfg(paths, hidream):
    arch = detect_model(hidream["dev"])
    assert (arch.dit.variant, arch.label) == ("dev", "HiDream-I1 Dev")
    assert model_family(hidream["dev"]) == "hidream-i1-dev" and model_family(hidream["folder"]) == "hidream-i1"
    request = request_for(hidream["dev"], steps=3, cfg_scale=1.0)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(hidream["dev"], request))
    assert batch.notes == ("HiDream-I1 Dev uses a negative prompt only with CFG above 1; the negative prompt was "
                           "ignored.",)  # fmt: skip


def test_each_release_has_its_makers_defaults():
    assert family_defaults("hidream-i1") == {"steps": 50, "cfg_scale": 5.0}
    assert family_defaults("hidream-i1-dev") == {"steps": 28, "cfg_scale": 1.0}
    assert family_defaults("hidream-i1-fast") == {"steps": 16, "cfg_scale": 1.0}
    assert variant_choices("hidream-i1") == {"": "HiDream-I1 (as the file says)", "dev": "HiDream-I1 Dev",
                                             "fast": "HiDream-I1 Fast"}  # fmt: skip


@pytest.mark.parametrize("layout", ["comfy", "bare"])
def test_transformer_files_match_with_the_folders_encoders(paths, hidream, layout):
    arch = detect_model(hidream[layout])
    assert (arch.family, arch.dit.layout, arch.dit.blocks, arch.label) == ("hidream-i1", "diffusers", (2, 2),
                                                                           "HiDream-I1")  # fmt: skip
    assert arch.dit.needs_components
    request = request_for(hidream[layout], steps=3, cfg_scale=5.0, model_config=str(hidream["folder"]),
                          text_encoders=str(hidream["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(hidream["folder"], request))


def test_a_file_run_as_full_with_a_dev_folders_configs_runs_fulls_unipc(paths, hidream):
    # The Dev folder as --config holds an Euler scheduler: the file, unmarked, is Full and runs Full's UniPC.
    request = request_for(hidream["bare"], steps=3, cfg_scale=5.0, model_config=str(hidream["dev"]),
                          text_encoders=str(hidream["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(hidream["folder"], request))


def test_a_folders_scheduler_of_another_class_is_not_built(paths, hidream, tmp_path):
    # Only the releases' own scheduler classes are built from a folder's JSON; anything else runs Full's UniPC.
    folder = tmp_path / "odd"
    shutil.copytree(hidream["folder"], folder)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text(encoding="utf-8").replace('"UniPCMultistepScheduler"', '"DDIMScheduler"'),
                      encoding="utf-8")  # fmt: skip
    request = request_for(folder, steps=3, cfg_scale=5.0)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(hidream["folder"], request))


def test_a_file_marked_dev_runs_devs_schedule_whatever_the_folders(paths, hidream):
    from desktop.engine.library.index import Library, record_variant_choices

    marked = with_variant(detect_model(hidream["bare"]), "dev")
    assert (marked.label, marked.config_name) == ("HiDream-I1 Dev", "hidream-i1")
    library = Library(paths)
    record = library.import_path(hidream["bare"], "model", name="hidream-i1-dev")
    assert record_variant_choices(record) == variant_choices("hidream-i1")
    chosen = library.choose_variant(record.name, "dev")
    assert model_family(library.path_of(chosen), "dev") == "hidream-i1-dev"
    # A folder says which release it is by its scheduler: nothing to choose.
    assert record_variant_choices(library.import_path(hidream["dev"], "model")) == {}
    request = request_for(record.name, steps=3, cfg_scale=1.0, model_config=str(hidream["folder"]),
                          text_encoders=str(hidream["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    # The Full folder's UniPC is not used: Euler at Dev's shift 6 is.
    euler = FlowMatchEulerDiscreteScheduler(shift=6.0)
    assert np.array_equal(pixels(batch.images[0]), bare_image(hidream["folder"], request, scheduler=euler))
    assert not np.array_equal(pixels(batch.images[0]), bare_image(hidream["folder"], request))


def test_a_hidream_gguf_matches_diffusers_gguf_loading(paths, hidream, tmp_path):
    state = dict(hidream["pipe"].transformer.state_dict())
    path = save_gguf(state, tmp_path / "hidream-Q8_0.gguf", arch="hidream")
    arch = detect_model(path)
    assert (arch.family, arch.dit.quantization) == ("hidream-i1", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=5.0, model_config=str(hidream["folder"]),
                          text_encoders=str(hidream["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    transformer = HiDreamImageTransformer2DModel.from_single_file(
        str(path), config=str(hidream["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    # The experts' gates are bare weights diffusers' GGUF layers leave quantised (they fail in the first step
    # otherwise): dequantised, as Marble does at load.
    for block in (*transformer.double_stream_blocks, *transformer.single_stream_blocks):
        gate = block.block.ff_i.gate
        assert gate.weight.quant_type.name == "Q8_0"
        gate.weight = torch.nn.Parameter(dequantize_gguf_tensor(gate.weight).float(), requires_grad=False)
    expected = bare_image(hidream["folder"], request, transformer)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(hidream["folder"], request))  # the quantisation shows


def test_the_size_asked_is_drawn_not_diffusers_reference_area(paths, hidream):
    # diffusers' pipeline would scale 96x64 to its 64x64 reference area (and 1024x1024 for the real model).
    batch, steps = run(make_backend(paths), request_for(hidream["folder"], steps=2, cfg_scale=5.0, width=96,
                                                        height=64))  # fmt: skip
    assert batch.images[0].size == (96, 64) and len(steps) == 2
    # Not square, more patches than the transformer pads to (its max_seq: 64 for the tiny one): refused by name.
    with pytest.raises(InvalidRequest, match=r"HiDream-I1 draws a picture that is not square at up to 16,384 pixels"):
        run(make_backend(paths), request_for(hidream["folder"], steps=2, width=160, height=128))
    square, _ = run(make_backend(paths), request_for(hidream["folder"], steps=2, width=144, height=144))
    assert square.images[0].size == (144, 144)
    # The hires fix's second pass over the limit is refused before the first pass runs.
    seen = []
    backend = make_backend(paths)
    hires = request_for(hidream["folder"], steps=2, width=96, height=64, hires_fix=True, hires_scale=2.0, hires_steps=2)
    backend.load(hires)
    with pytest.raises(InvalidRequest, match=r"up to 16,384 pixels .*: 192x128 is 24,576"):
        backend.generate(hires, 0, seen.append, CancelToken())
    assert seen == []


def test_damaged_files_and_missing_components_are_refused_by_name(paths, hidream, tmp_path):
    state = dict(hidream["pipe"].transformer.state_dict())
    middle = save_transformer_file(state, tmp_path / "my-hidream.safetensors", prefix=PREFIX,
                                   drop="double_stream_blocks.0")  # fmt: skip
    with pytest.raises(ModelError, match=r"my-hidream\.safetensors looks like HiDream-I1 but double_stream_blocks\.0"):
        detect_model(middle)
    cut = {key: value for key, value in state.items() if not key.startswith("caption_projection.4.")}
    with pytest.raises(ModelError, match=r"cut\.safetensors looks like HiDream-I1 but caption_projection\.4\."):
        detect_model(save_transformer_file(cut, tmp_path / "cut.safetensors"))
    last = save_transformer_file(state, tmp_path / "short.safetensors", drop="single_stream_blocks.1")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 single blocks but the HiDream-I1 config"):
        run(make_backend(paths), request_for(last, model_config=str(hidream["folder"]),
                                             text_encoders=str(hidream["folder"])))  # fmt: skip
    with pytest.raises(ModelError, match=r"four text encoders \(CLIP-L, CLIP-G, T5-XXL and Llama 3\.1 8B Instruct\)"):
        run(make_backend(paths), request_for(hidream["bare"], model_config=str(hidream["folder"])))


def test_a_folder_without_llama_says_where_it_goes(paths, hidream, tmp_path):
    folder = tmp_path / "HiDream-I1-Full"
    shutil.copytree(hidream["folder"], folder)
    shutil.rmtree(folder / "text_encoder_4")
    shutil.rmtree(folder / "tokenizer_4")
    with pytest.raises(ModelError, match=r"no text_encoder_4/ \(Llama 3\.1 8B Instruct\).*as text_encoder_4/"):
        run(make_backend(paths), request_for(folder, steps=2))
    # Meta's Llama folder holds its tokenizer beside its weights: linked in as text_encoder_4/, it serves both.
    llama = tmp_path / "Meta-Llama-3.1-8B-Instruct"
    shutil.copytree(hidream["folder"] / "text_encoder_4", llama)
    for file in (hidream["folder"] / "tokenizer_4").iterdir():
        shutil.copy(file, llama / file.name)
    (folder / "text_encoder_4").symlink_to(llama, target_is_directory=True)
    request = request_for(folder, steps=2, cfg_scale=5.0)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(hidream["folder"], request))
    # Another model's language model in its place is refused before anything loads.
    config = (llama / "config.json").read_text(encoding="utf-8").replace('"llama"', '"qwen3"')
    (llama / "config.json").write_text(config, encoding="utf-8")
    with pytest.raises(ModelError, match=r"its text_encoder_4/ is qwen3 .* needs Llama 3\.1 8B Instruct"):
        run(make_backend(paths), request_for(folder, steps=2))
    # And another model's VAE (SD's 4 latent channels, not Flux.1's 16).
    (llama / "config.json").write_text(config.replace('"qwen3"', '"llama"'), encoding="utf-8")
    vae_config = (folder / "vae" / "config.json").read_text(encoding="utf-8")
    (folder / "vae" / "config.json").write_text(vae_config.replace('"latent_channels": 16', '"latent_channels": 4'),
                                                encoding="utf-8")  # fmt: skip
    with pytest.raises(ModelError, match=r"its VAE has 4 latent channels, but HiDream-I1 needs .* Flux\.1's VAE"):
        run(make_backend(paths), request_for(folder, steps=2))


def test_the_shipped_config_is_the_published_model():
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.resources import Resources

    cls = transformer_class("hidream-i1")
    config = cls.load_config(str(Resources.default().config_folder("hidream-i1")), subfolder="transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    # 17B parameters (HiDream.ai's model card), 48 blocks each reading one of Llama 3.1's 32 layers.
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == 17.1
    assert len(config["llama_layers"]) == config["num_layers"] + config["num_single_layers"] == 48


def hidream_edit(folder):
    from desktop.engine.backends.families import own_edit_pipeline
    from desktop.engine.backends.families_hidream import pipeline_class

    pipe = pipeline_class().from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, own_edit_pipeline(pipe, "hidream-i1")


@pytest.mark.parametrize("release", ["folder", "dev"])  # Full's UniPC, Dev's Euler
def test_image_to_image_runs_the_tail_of_the_text_to_image_schedule(hidream, release):
    check_schedule_tail(*hidream_edit(hidream[release]), guidance=5.0)


def test_inpainting_leaves_the_sources_latents_outside_the_mask(hidream):
    check_inpainting_keeps_the_source(hidream_edit(hidream["dev"])[1], guidance_scale=1.0)


def test_edits_and_the_hires_fix_run_through_marble(paths, hidream, tmp_path):
    check_edits_through_marble(paths, hidream["folder"], hidream_edit(hidream["folder"])[1], 5.0, tmp_path)


_LORA_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out", "attn1.to_q_t", "ff_i.shared_experts.w1",
                "ff_i.experts.0.w2", "ff_t.w3")  # fmt: skip


@pytest.mark.parametrize("naming", NAMINGS)
def test_a_hidream_lora_is_detected_and_applied_as_bare_diffusers_applies_it(paths, hidream, naming, tmp_path):
    info = check_lora_as_bare_diffusers(paths, tmp_path, hidream["dev"], bare_pipeline,
                                        transformer=hidream["pipe"].transformer,
                                        blocks=("double_stream_blocks.", "single_stream_blocks."), layers=_LORA_LAYERS,
                                        naming=naming, cfg=1.0, family="hidream-i1", label="HiDream-I1")  # fmt: skip
    assert info.transformer_width == 32


def test_a_lora_for_another_family_is_refused_by_name(paths, hidream):
    from safetensors.torch import save_file

    from tests.support.tiny_dit_loras import lora_on
    from tests.support.tiny_lumina2 import build_tiny_lumina2

    lumina = lora_on(build_tiny_lumina2().transformer, "layers.", ("attn.to_q",))
    save_file(lumina, str(paths.loras / "lumina.safetensors"))
    with pytest.raises(ModelError, match=r"it is a LoRA for Lumina Image 2\.0 models, and hidream-dev is HiDream-I1"):
        run(make_backend(paths), request_for(hidream["dev"], prompt="a fox <lora:lumina:1>", steps=2, cfg_scale=1.0))


@pytest.fixture(scope="module")
def comfy_files(tmp_path_factory):
    """A tiny HiDream-I1 whose Llama has Llama 3's vocabulary, its configs as --config (its diffusers folder), and
    its encoders and VAE as ComfyUI's split files for the libraries."""
    from tests.support.tiny_hidream import library_files

    tmp = tmp_path_factory.mktemp("hidream_library")
    pipe = build_tiny_hidream(seed=1, llama_vocabulary=128256)
    folder = save_diffusers(pipe, tmp / "hidream")
    # Marble's shipped configs hold no tokenizers: the CLIP and T5 ones ship apart, Llama's comes from the user.
    configs = tmp / "configs"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("tokenizer*"))
    files = library_files(pipe, tmp / "split")
    transformer = save_transformer_file(dict(pipe.transformer.state_dict()), tmp / "hidream_i1_full.safetensors",
                                        prefix=PREFIX)  # fmt: skip
    return {"folder": folder, "configs": configs, "files": files, "transformer": transformer}


def test_comfyuis_split_files_run_from_the_libraries(paths, comfy_files):
    from desktop.engine.library.index import Library

    library = Library(paths)
    kinds = {}
    for name, path in comfy_files["files"].items():
        record = library.import_path(path, "vae" if name == "ae" else "encoder")
        kinds[name] = record.architecture
    assert "Llama 3 text encoder (width 32)" in kinds["llama_3.1_8b_instruct"]
    encoders = "llama_3.1_8b_instruct,t5xxl,clip_g_hidream,clip_l_hidream"  # any order: each finds its slot
    request = request_for(comfy_files["transformer"], steps=3, cfg_scale=5.0, model_config=str(comfy_files["configs"]),
                          text_encoders=encoders, vae="ae",
                          tokenizer_folder=str(comfy_files["folder"] / "tokenizer_4"))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(comfy_files["folder"], request))
    # Llama's tokenizer cannot ship: without a folder holding it, the job says where to point.
    with pytest.raises(ModelError, match=r"whose tokenizer Marble cannot ship \(none was given\): point "):
        run(make_backend(paths), replace(request, tokenizer_folder=None))
    # Three encoders are not four: the missing slot is named.
    with pytest.raises(ModelError, match=r"needs a Llama \(width 32\) text encoder for its text_encoder_4"):
        run(make_backend(paths), replace(request, text_encoders="t5xxl,clip_g_hidream,clip_l_hidream"))


def test_a_file_marked_fast_runs_fasts_schedule_with_library_encoders(paths, comfy_files):
    from desktop.engine.library.index import Library

    library = Library(paths)
    for name, path in comfy_files["files"].items():
        library.import_path(path, "vae" if name == "ae" else "encoder")
    record = library.import_path(comfy_files["transformer"], "model", name="hidream-fast")
    library.choose_variant(record.name, "fast")
    request = request_for(record.name, steps=3, cfg_scale=1.0, model_config=str(comfy_files["configs"]),
                          text_encoders="clip_l_hidream,clip_g_hidream,t5xxl,llama_3.1_8b_instruct", vae="ae",
                          tokenizer_folder=str(comfy_files["folder"] / "tokenizer_4"))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert np.array_equal(pixels(batch.images[0]), bare_image(comfy_files["folder"], request, scheduler=euler))


def test_a_published_size_llama_is_named_and_offered_to_hidream_only():
    from desktop.engine.library.encoder import EncoderInfo, fits_model

    info = EncoderInfo("llama3", 4096, 32, "transformers", "model.", "BF16", 8_030_261_248)
    assert (info.label, info.family) == ("Llama 3.1 8B text encoder", "llama")
    assert all(fits_model(info.family, family) for family in ("hidream-i1", "hidream-i1-dev", "hidream-i1-fast"))
    assert not fits_model(info.family, "flux2-dev")


@pytest.mark.parametrize("quant", ["F16", "Q8_0"])
def test_a_llama_gguf_has_its_rows_put_back_and_matches(paths, comfy_files, tmp_path, quant):
    # llama.cpp's converter permutes a Llama's q and k rows (each head's rotary halves interleaved): read as they are,
    # the encoder would run wrong.
    from safetensors.torch import load_file

    from desktop.engine.library.index import Library
    from tests.support.tiny_qwen_encoders import save_llama_gguf

    state = load_file(str(comfy_files["files"]["llama_3.1_8b_instruct"]))
    # With Llama 3.1's rope factors beside the weights, as llama.cpp writes them (transformers makes its own).
    path = save_llama_gguf(state, tmp_path / f"Llama-3.1-8B-Instruct-{quant}.gguf", "llama", quant, heads=(2, 1),
                           extra={"rope_freqs.weight": torch.ones(8)})  # fmt: skip
    library = Library(paths)
    for name, file in comfy_files["files"].items():
        if name != "llama_3.1_8b_instruct":
            library.import_path(file, "vae" if name == "ae" else "encoder")
    record = library.import_path(path, "encoder")
    assert (record.family, record.dtype) == ("llama3", quant), (record.family, record.dtype)
    request = request_for(comfy_files["transformer"], steps=2, cfg_scale=5.0, model_config=str(comfy_files["configs"]),
                          text_encoders=f"clip_l_hidream,clip_g_hidream,t5xxl,{record.name}", vae="ae",
                          tokenizer_folder=str(comfy_files["folder"] / "tokenizer_4"))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    # The reference: bare diffusers with the Llama's weights as the GGUF holds them (rounded to float16; Q8_0 blocks).
    pipe = bare_pipeline(comfy_files["folder"])
    rounded = {}
    for key, value in state.items():
        if quant == "Q8_0" and value.ndim == 2 and value.shape[1] % 32 == 0:
            import gguf

            kind = gguf.GGMLQuantizationType.Q8_0
            blocks = gguf.quants.quantize(value.float().numpy(), kind)
            rounded[key] = torch.from_numpy(gguf.quants.dequantize(blocks, kind).copy()).reshape(value.shape)
        else:
            rounded[key] = value.half().float() if value.ndim == 2 else value
    pipe.text_encoder_4.load_state_dict(rounded, strict=False)
    expected = pixels(pipe(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=2,
                           width=64, height=64, guidance_scale=5.0,
                           generator=torch.Generator("cpu").manual_seed(request.seed)).images[0])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_comfyuis_scaled_fp8_llama_stays_in_fp8_and_draws_its_dequantised_weights(paths, comfy_files, tmp_path):
    from safetensors.torch import load_file, save_file

    from desktop.engine.backends.scaled_fp8_layers import stored_fp8
    from desktop.engine.library.encoder import fits_model
    from desktop.engine.library.index import Library
    from tests.engine.test_scaled_fp8 import scaled_fp8

    file, exact, unscaled = scaled_fp8(load_file(str(comfy_files["files"]["llama_3.1_8b_instruct"])))
    save_file(file, str(tmp_path / "llama_3.1_8b_instruct_fp8_scaled.safetensors"))
    library = Library(paths)
    for name, path in comfy_files["files"].items():
        if name != "llama_3.1_8b_instruct":
            library.import_path(path, "vae" if name == "ae" else "encoder")
    record = library.import_path(tmp_path / "llama_3.1_8b_instruct_fp8_scaled.safetensors", "encoder")
    assert (record.dtype, record.family) == ("F8_E4M3_SCALED", "llama3"), (record.dtype, record.family)
    assert fits_model(record.family, "hidream-i1-dev") and not fits_model(record.family, "flux2-dev")
    request = request_for(comfy_files["transformer"], steps=2, cfg_scale=5.0, model_config=str(comfy_files["configs"]),
                          text_encoders=f"clip_l_hidream,clip_g_hidream,t5xxl,{record.name}", vae="ae",
                          tokenizer_folder=str(comfy_files["folder"] / "tokenizer_4"))  # fmt: skip
    backend = make_backend(paths)
    batch, _ = run(backend, request)
    q = stored_fp8(backend._pipe.text_encoder_4.model.layers[0].self_attn.q_proj)
    assert torch.equal(q.view(torch.uint8), file["model.layers.0.self_attn.q_proj.weight"].view(torch.uint8))

    def with_llama(weights):
        pipe = bare_pipeline(comfy_files["folder"])
        pipe.text_encoder_4.load_state_dict(weights, strict=False)
        return pixels(pipe(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=2,
                           width=64, height=64, guidance_scale=5.0,
                           generator=torch.Generator("cpu").manual_seed(request.seed)).images[0])  # fmt: skip

    expected = with_llama(exact)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, with_llama(unscaled))  # the scales mattered


def test_marble_generate_takes_the_releases_defaults_and_records_them(hidream, tmp_path):
    from PIL import Image

    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    out_file = tmp_path / "dev.png"
    code, _, err = in_process(["generate", "--home", str(tmp_path / "home"), "--model", str(hidream["dev"]),
                               "--prompt", "a red fox", "--width", "64", "--height", "64", "--seed", "5",
                               "--device", "cpu", "--out", str(out_file)])  # fmt: skip
    assert code == 0, err
    recorded = read_image_metadata(out_file).request
    assert (recorded.steps, recorded.cfg_scale) == (28, 1.0)  # Dev's: 28 steps without CFG
    with Image.open(out_file) as image:
        assert np.array_equal(pixels(image), bare_image(hidream["dev"], recorded))


def test_the_memory_estimate_counts_its_blocks_and_four_encoders(paths, hidream):
    from desktop.engine.backends.families import memory_sizes

    backend = make_backend(paths)
    backend.load(request_for(hidream["folder"]))
    sizes = memory_sizes(backend._pipe, backend._dit)
    # Group offload moves one block at a time: its 2 double- and 2 single-stream blocks, not the whole transformer.
    assert sizes.transformer_blocks == 4
    assert len(sizes.encoders) == 4 and all(size > 0 for size in sizes.encoders)


def test_transformers_notice_about_llamas_attention_maps_is_dropped():
    # The pipeline asks its Llama for attention maps it never reads; the notice would send users to a slower attention.
    import logging

    import desktop.engine.backends.diffusers_backend  # noqa: F401 - installs the filter

    logger = logging.getLogger("transformers.integrations.sdpa_attention")

    def passes(message: str) -> bool:
        return bool(logger.filter(logging.LogRecord(logger.name, logging.WARNING, __file__, 1, message, None, None)))

    assert not passes("`sdpa` attention does not support `output_attentions=True`. Please set your attention to "
                      "`eager` if you want any of these features.")  # fmt: skip
    assert passes("`sdpa` attention does not support something else")


def test_control_units_are_refused_before_the_model_loads(paths, hidream, tmp_path):
    from PIL import Image

    from desktop.engine.request import ControlUnit

    Image.new("RGB", (64, 64), (90, 30, 200)).save(tmp_path / "source.png")
    with pytest.raises((InvalidRequest, ModelError), match="HiDream-I1"):
        run(make_backend(paths), request_for(hidream["folder"],
                                             controls=(ControlUnit("edges", str(tmp_path / "source.png")),)))
