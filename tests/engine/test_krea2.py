"""Krea 2 (Krea AI's 12.8B model, Raw and its 8-step Turbo): a tiny random model as a diffusers folder, as a
transformer-only file in its makers' names (ComfyUI's, with and without its prefix) and in diffusers' names, and as
a GGUF; detected from its tensors and run offline through Marble, pixel-identical to bare diffusers with the same
seed; image to image, inpainting and the hires fix through flow_edit.py; LoRAs in both namings."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import GGUFQuantizationConfig, Krea2Pipeline, Krea2Transformer2DModel
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model, read_safetensors_header
from desktop.engine.library.lora import inspect_lora
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import save_gguf
from tests.support.tiny_dit_loras import lora_on, trainer_form
from tests.support.tiny_krea2 import build_tiny_krea2, to_original
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, save_transformer_file

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def krea(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("krea2")
    pipe = build_tiny_krea2()
    folder = tmp / "Krea-2-Raw"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": folder,
        "comfy": save_transformer_file(to_original(state), tmp / "krea2_raw_bf16.safetensors", prefix=PREFIX),
        "original": save_transformer_file(to_original(state), tmp / "krea2.safetensors"),
        "diffusers": save_transformer_file(state, tmp / "krea2-diffusers.safetensors"),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipe(folder, transformer=None) -> Krea2Pipeline:
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = Krea2Pipeline.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(pipe, request, **extra) -> np.ndarray:
    # Marble's CFG scale is A1111's; Krea's pipeline takes the step beyond the conditional prediction (CFG - 1).
    guidance = max(request.cfg_scale - 1, 0)
    negative = {"negative_prompt": request.negative_prompt} if guidance > 0 and request.negative_prompt else {}
    return pixels(pipe(
        prompt=request.prompt, num_inference_steps=request.steps, width=request.width, height=request.height,
        guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(request.seed), **negative, **extra,
    ).images[0])  # fmt: skip


def test_a_krea2_folder_is_detected_and_matches_bare_diffusers(paths, krea):
    arch = detect_model(krea["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.label) == ("krea2", "diffusers", "krea2", "Krea 2")
    request = request_for(krea["folder"], steps=3, cfg_scale=5.5)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(bare_pipe(krea["folder"]), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == 3 and all(step.preview is not None for step in steps)
    # CFG 1 (Turbo's) runs without guidance: the negative prompt unused.
    plain_request = request_for(krea["folder"], steps=3, cfg_scale=1.0)
    plain, _ = run(make_backend(paths), plain_request)
    assert np.array_equal(pixels(plain.images[0]), bare_image(bare_pipe(krea["folder"]), plain_request))
    assert not np.array_equal(pixels(plain.images[0]), expected)
    assert plain.notes == ("Krea 2 uses a negative prompt only with CFG above 1; the negative prompt was ignored.",)
    assert batch.notes == ()


@pytest.mark.parametrize("layout", ["comfy", "original", "diffusers"])
def test_transformer_files_in_each_layout_match_with_the_folders_components(paths, krea, layout):
    arch = detect_model(krea[layout])
    assert (arch.family, arch.dit.layout, arch.dit.blocks) == ("krea2", "diffusers" if layout == "diffusers" else
                                                               "original", (2, 0))  # fmt: skip
    assert arch.dit.needs_components
    request = request_for(krea[layout], steps=3, cfg_scale=5.5, model_config=str(krea["folder"]),
                          text_encoders=str(krea["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_pipe(krea["folder"]), request))


def test_a_turbo_folder_keeps_its_distilled_schedule(paths, krea, tmp_path):
    # Turbo's folder says `is_distilled` (a fixed shift of 1.15); Marble builds the pipeline with it, as diffusers'
    # own loading does. The tiny Raw's pictures differ from it at the same seed.
    folder = tmp_path / "Krea-2-Turbo"
    shutil.copytree(krea["folder"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"is_distilled": True}))
    request = request_for(folder, steps=3, cfg_scale=1.0)
    batch, _ = run(make_backend(paths), request)
    turbo = bare_pipe(folder)
    assert turbo.config.is_distilled
    assert np.array_equal(pixels(batch.images[0]), bare_image(turbo, request))
    assert not np.array_equal(pixels(batch.images[0]), bare_image(bare_pipe(krea["folder"]), request))
    # The folder says Turbo: so do its label and defaults (8 steps without guidance).
    arch = detect_model(folder)
    assert (arch.dit.variant, arch.label, model_family(folder)) == ("turbo", "Krea 2 Turbo", "krea2-distilled")
    assert family_defaults("krea2-distilled") == {"steps": 8, "cfg_scale": 1.0}


def test_a_library_file_marked_turbo_runs_distilled_with_a_raw_folder(krea, tmp_path):
    """Turbo's file has Raw's tensors and ComfyUI's carries no metadata: the user marks the library's file
    (Library.choose_variant), and it runs with its pipeline's distilled schedule whatever folder serves it."""
    from desktop.engine.library.index import Library

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    record = library.import_path(krea["comfy"], "model")
    request = request_for(record.name, steps=3, cfg_scale=1.0, text_encoders=str(krea["folder"]),
                          model_config=str(krea["folder"]))  # fmt: skip
    raw, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(raw.images[0]), bare_image(bare_pipe(krea["folder"]), request))
    chosen = library.choose_variant(record.name, "turbo")
    assert chosen.architecture.startswith("Krea 2 Turbo")
    assert model_family(library.path_of(chosen), chosen.chosen_variant) == "krea2-distilled"
    turbo, _ = run(make_backend(paths), request)
    distilled = bare_pipe(krea["folder"])
    distilled.register_to_config(is_distilled=True)
    assert np.array_equal(pixels(turbo.images[0]), bare_image(distilled, request))
    assert not np.array_equal(pixels(turbo.images[0]), pixels(raw.images[0]))


def test_a_krea2_gguf_matches_diffusers_gguf_loading(paths, krea, tmp_path):
    # The final modulation table stays F32, as the GGUF converters keep it (diffusers uses it as a parameter).
    path = save_gguf(to_original(dict(krea["pipe"].transformer.state_dict())), tmp_path / "krea2-Q8_0.gguf",
                     arch="krea2", keep=("last.modulation.lin",))  # fmt: skip
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.quantization) == ("krea2", "original", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=5.5, model_config=str(krea["folder"]),
                          text_encoders=str(krea["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    transformer = Krea2Transformer2DModel.from_single_file(
        str(path), config=str(krea["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    expected = bare_image(bare_pipe(krea["folder"], transformer), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(bare_pipe(krea["folder"]), request))  # the quantisation shows
    # A GGUF whose final modulation table is block-quantised would fail inside diffusers: refused by name.
    blocky = save_gguf(to_original(dict(krea["pipe"].transformer.state_dict())), tmp_path / "odd-Q8_0.gguf",
                       arch="krea2")  # fmt: skip
    with pytest.raises(ModelError, match=r"odd-Q8_0\.gguf: its last\.modulation\.lin is stored as Q8_0"):
        detect_model(blocky)


def test_damaged_files_and_wrong_components_are_refused_by_name(paths, krea, tmp_path):
    state = to_original(dict(krea["pipe"].transformer.state_dict()))
    middle = save_transformer_file(state, tmp_path / "my-krea.safetensors", prefix=PREFIX, drop="blocks.0")
    with pytest.raises(ModelError, match=r"my-krea\.safetensors looks like Krea 2 but blocks\.0 is missing"):
        detect_model(middle)
    headless = save_transformer_file({k: v for k, v in state.items() if not k.startswith("first.")},
                                     tmp_path / "headless.safetensors")  # fmt: skip
    with pytest.raises(ModelError, match=r"headless\.safetensors looks like Krea 2 but first\.weight is missing"):
        detect_model(headless)
    last = save_transformer_file(state, tmp_path / "short.safetensors", drop="blocks.1")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 main blocks but the Krea 2 config"):
        run(make_backend(paths), request_for(last, model_config=str(krea["folder"]),
                                             text_encoders=str(krea["folder"])))  # fmt: skip
    with pytest.raises(ModelError, match=r"Qwen3-VL 4B text encoder, its tokenizer and its VAE"):
        run(make_backend(paths), request_for(krea["original"], model_config=str(krea["folder"])))
    old = tmp_path / "qwen-image"
    build_tiny_qwen_image().save_pretrained(str(old), safe_serialization=True)
    with pytest.raises(ModelError, match=r"are qwen2_5_vl and AutoencoderKLQwenImage, but Krea 2 needs"):
        run(make_backend(paths), request_for(krea["original"], model_config=str(krea["folder"]),
                                             text_encoders=str(old)))  # fmt: skip


def test_library_family_defaults_and_the_shipped_config(krea):
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.resources import Resources

    assert model_family(krea["folder"]) == "krea2" and model_family(krea["comfy"]) == "krea2"
    assert family_defaults("krea2") == {"steps": 52, "cfg_scale": 4.5}
    cls = transformer_class("krea2")
    config = cls.load_config(str(Resources.default().config_folder("krea2")), subfolder="transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 12_820_073_036  # 28 blocks 6144 wide
    # The shipped Qwen3-VL 4B config's language model (what a library file is loaded as): Qwen3 4B's published
    # 4.02B parameters (its head tied to the embedding).
    import transformers

    encoder = transformers.AutoConfig.from_pretrained(str(Resources.default().config_folder("krea2") / "text_encoder"))
    with init_empty_weights():
        language = transformers.Qwen3VLTextModel(encoder.text_config)
    assert sum(p.numel() for p in language.parameters()) == 4_022_468_096


def test_image_to_image_and_inpainting(paths, krea, tmp_path):
    from desktop.engine.backends.families import own_edit_pipeline

    pipe = bare_pipe(krea["folder"])
    edit = own_edit_pipeline(pipe, "krea2")
    source = Image.new("RGB", (96, 64), (200, 40, 40))
    call = dict(prompt="a cat", num_inference_steps=4, width=96, height=64, output_type="np", guidance_scale=0.0)
    # Strength 1 starts from the noise text to image draws for the seed: the same picture.
    whole = edit(**call, image=source, strength=1.0, generator=torch.Generator().manual_seed(7)).images
    assert np.array_equal(whole, pipe(**call, generator=torch.Generator().manual_seed(7)).images)
    # A Turbo checkpoint's fixed shift serves its edits too: strength 0.5 runs the last half of its steps at the
    # very sigmas its text to image reaches them.
    pipe.register_to_config(is_distilled=True)
    seen, half = [], []
    record = lambda into: lambda p, i, t, tensors: into.append(float(p.scheduler.sigmas[i])) or {}  # noqa: E731
    pipe(**call, generator=torch.Generator().manual_seed(7), callback_on_step_end=record(seen))
    turbo = own_edit_pipeline(pipe, "krea2")
    turbo(**call, image=source, strength=0.5, generator=torch.Generator().manual_seed(7),
          callback_on_step_end=record(half))  # fmt: skip
    assert half == pytest.approx(seen[2:], abs=1e-6)
    # ... and it starts from the source noised to exactly that first sigma: (1 - s) x0 + s noise, then that tail.
    from diffusers.utils.torch_utils import randn_tensor

    clean = turbo._edit_pack(turbo._edit_encode(source, 96, 64, None))
    noise = turbo._edit_pack(randn_tensor((1, 4, 8, 12), generator=torch.Generator().manual_seed(7)))
    by_hand = pipe(**call, latents=(1 - seen[2]) * clean + seen[2] * noise, sigmas=list(np.linspace(1, 0.25, 4)[2:]),
                   generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    edited = turbo(**call, image=source, strength=0.5, generator=torch.Generator().manual_seed(7)).images
    assert np.allclose(edited, by_hand, atol=1e-6)
    pipe.register_to_config(is_distilled=False)
    # Inpainting leaves the source's latents outside the mask: the left 20 columns repaint latent columns 0-2.
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 20, 64))
    latents = edit(**(call | {"output_type": "latent"}), image=source, mask_image=mask, strength=1.0,
                   generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    clean = edit._edit_pack(edit._edit_encode(source, 96, 64, None))
    grid, kept = latents.reshape(4, 6, -1), clean.reshape(4, 6, -1)  # tokens of 2x2 latents: 4 rows of 6
    assert torch.allclose(grid[:, 2:], kept[:, 2:], atol=1e-6) and not torch.allclose(grid[:, :2], kept[:, :2])
    # Through Marble: image to image, and the hires fix with a latent and a pixel upscaler.
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "source.png")
    request = request_for(krea["folder"], init_image=str(tmp_path / "source.png"), strength=0.6, steps=3,
                          cfg_scale=5.5, seed=43)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    expected = pixels(edit(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=3,
                           width=64, height=64, guidance_scale=4.5, image=Image.open(tmp_path / "source.png"),
                           strength=0.6, generator=torch.Generator().manual_seed(43)).images[0])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    for upscaler in ("Latent", "Lanczos"):
        hires_request = request_for(krea["folder"], steps=2, cfg_scale=1.0, negative_prompt="", hires_fix=True,
                                    hires_scale=1.5, hires_steps=2, hires_upscaler=upscaler,
                                    width=96)  # not square: rows and columns apart
        hires, steps = run(make_backend(paths), hires_request)
        assert hires.images[0].size == (144, 96) and len(steps) > 2 and not hires.notes


# Every block's attention projections and feed-forward.
_LORA_LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.to_gate", "ff.gate", "ff.up", "ff.down")


_LORA_ORIGINAL = {".attn.to_q.": ".attn.wq.", ".attn.to_k.": ".attn.wk.", ".attn.to_v.": ".attn.wv.",
                  ".attn.to_out.0.": ".attn.wo.", ".attn.to_gate.": ".attn.gate.", ".ff.": ".mlp."}  # fmt: skip


def to_original_lora(tensors: dict[str, torch.Tensor], naming: str) -> dict[str, torch.Tensor]:
    """The same LoRA in its makers' module names: "native" as ai-toolkit writes it (`diffusion_model.` + lora_A /
    lora_B); "musubi" and "kohya" as tiny_dit_loras.trainer_form writes them."""
    native = {}
    for key, value in tensors.items():
        name = key.replace("transformer.transformer_blocks.", "diffusion_model.blocks.")
        for new, old in _LORA_ORIGINAL.items():
            name = name.replace(new, old)
        native[name] = value
    return native if naming == "native" else trainer_form(native, kohya=naming == "kohya")


@pytest.mark.parametrize("naming", ["diffusers", "native", "musubi", "kohya"])
def test_a_krea2_lora_is_detected_and_applied_as_bare_diffusers_applies_it(paths, krea, naming, tmp_path):
    tensors = lora_on(krea["pipe"].transformer, "transformer_blocks.", _LORA_LAYERS)
    written = tensors if naming == "diffusers" else to_original_lora(tensors, naming)
    save_file(written, str(paths.loras / "style.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "style.safetensors"), "style")
    assert (info.family, info.label) == ("krea2", "Krea 2")
    request = request_for(krea["folder"], prompt="a red circle <lora:style:0.8>", steps=3, cfg_scale=1.0)
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    # The reference: bare diffusers loading the LoRA in its own names.
    save_file(tensors, str(tmp_path / "reference.safetensors"))
    pipe = bare_pipe(krea["folder"])
    pipe.load_lora_weights(str(tmp_path / "reference.safetensors"), adapter_name="style")
    pipe.set_adapters(["style"], [0.8])
    plain_request = request_for(krea["folder"], prompt="a red circle", steps=3, cfg_scale=1.0)
    expected = bare_image(pipe, plain_request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(bare_pipe(krea["folder"]), plain_request))


@pytest.fixture
def library_home(tmp_path, krea):
    from desktop.engine.library.index import Library
    from tests.support.tiny_krea2 import comfy_qwen3_vl
    from tests.support.tiny_qwen_encoders import wan_vae_names

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    save_file(comfy_qwen3_vl(krea["pipe"].text_encoder), str(tmp_path / "qwen3vl_4b.safetensors"))
    save_file(wan_vae_names(krea["pipe"].vae.state_dict()), str(tmp_path / "qwen_image_vae.safetensors"))
    library = Library(paths)
    record = library.import_path(tmp_path / "qwen3vl_4b.safetensors", "encoder")
    library.import_path(tmp_path / "qwen_image_vae.safetensors", "vae")
    return paths, record


def test_a_krea2_file_runs_with_comfys_qwen3_vl_and_qwen_image_vae_from_the_library(library_home, krea):
    paths, record = library_home
    assert record.family == "qwen3vl" and "Qwen3-VL text encoder (width 16)" in record.shown_architecture
    # The config folder says the model's settings (the tiny model's tapped layers); the tokenizer is Marble's own.
    request = request_for(krea["comfy"], steps=3, cfg_scale=4.5, model_config=str(krea["folder"]),
                          text_encoders="qwen3vl_4b", vae="qwen_image_vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_pipe(krea["folder"]), request))
    # The same file in the library, marked Turbo: Krea's distilled schedule with the library's parts too (the
    # config folder is Raw's).
    from desktop.engine.library.index import Library

    library = Library(paths)
    model = library.choose_variant(library.import_path(krea["comfy"], "model").name, "turbo")
    turbo, _ = run(make_backend(paths), replace(request, model=model.name, cfg_scale=1.0))
    distilled = bare_pipe(krea["folder"])
    distilled.register_to_config(is_distilled=True)
    assert np.array_equal(pixels(turbo.images[0]), bare_image(distilled, replace(request, cfg_scale=1.0)))


def test_comfys_scaled_fp8_qwen3_vl_computes_its_dequantised_weights(library_home, krea, tmp_path):
    import copy

    from desktop.engine.library.index import Library
    from tests.engine.test_scaled_fp8 import scaled_fp8
    from tests.support.tiny_krea2 import comfy_qwen3_vl

    paths, _ = library_home
    file, exact, _ = scaled_fp8(comfy_qwen3_vl(krea["pipe"].text_encoder))
    save_file(file, str(tmp_path / "qwen3vl_4b_fp8_scaled.safetensors"))
    Library(paths).import_path(tmp_path / "qwen3vl_4b_fp8_scaled.safetensors", "encoder")
    request = request_for(krea["comfy"], steps=3, cfg_scale=4.5, model_config=str(krea["folder"]),
                          text_encoders="qwen3vl_4b_fp8_scaled", vae="qwen_image_vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    encoder = copy.deepcopy(krea["pipe"].text_encoder)
    encoder.load_state_dict({k.removeprefix("model."): v for k, v in exact.items()})
    reference = Krea2Pipeline.from_pretrained(str(krea["folder"]), local_files_only=True, text_encoder=encoder)
    reference.set_progress_bar_config(disable=True)
    expected = bare_image(reference, request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(bare_pipe(krea["folder"]), request))  # the fp8 shows
