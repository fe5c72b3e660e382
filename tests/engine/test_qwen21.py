"""Qwen-Image 2.1 (Qwen's 7B single-stream model that generates and edits, reading Qwen3-VL 8B): a tiny random
model as a diffusers folder laid out as Qwen/Qwen-Image-2.1's, as a transformer-only file in diffusers' names and in
ComfyUI's (the SwiGLU's gate and up projections fused, under its prefix), and as a GGUF; detected from its tensors
and run offline through Marble, pixel-identical to bare diffusers with the same seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import GGUFQuantizationConfig, QwenImage21Pipeline, QwenImage21Transformer2DModel
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import detect_model, read_safetensors_header
from desktop.engine.library.dit import reference_image_limit
from desktop.engine.library.lora import inspect_lora
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import save_gguf
from tests.support.tiny_qwen21 import build_tiny_qwen21, save_folder, tiny_processor, to_comfy
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, save_transformer_file


@pytest.fixture(scope="module")
def qwen21(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwen21")
    pipe = build_tiny_qwen21()
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": save_folder(pipe, tmp / "Qwen-Image-2.1"),
        # ComfyUI's file, under a name that says nothing true.
        "comfy": save_transformer_file(to_comfy(state), tmp / "qwen_image_bf16.safetensors"),
        "diffusers": save_transformer_file(state, tmp / "q21-diffusers.safetensors"),
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipe(folder, transformer=None) -> QwenImage21Pipeline:
    # diffusers' own loading, with the processor built as the tiny model's: transformers' Qwen3VLProcessor wants a
    # video processor, which needs torchvision (not installed).
    parts = {"transformer": transformer} if transformer is not None else {}
    pipe = QwenImage21Pipeline.from_pretrained(str(folder), local_files_only=True, processor=tiny_processor(), **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(pipe, request, **extra) -> np.ndarray:
    guidance = {"negative_prompt": request.negative_prompt or " ", "true_cfg_scale": request.cfg_scale}
    return pixels(pipe(
        prompt=request.prompt, num_inference_steps=request.steps, width=request.width, height=request.height,
        generator=torch.Generator("cpu").manual_seed(request.seed), **(guidance if request.cfg_scale > 1 else {}),
        **extra,
    ).images[0])  # fmt: skip


def test_a_qwen21_folder_is_detected_and_matches_bare_diffusers(paths, qwen21):
    arch = detect_model(qwen21["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.label) == (
        "qwen-image-2.1", "diffusers", "qwen-image-2.1", "Qwen-Image 2.1"
    )  # fmt: skip
    request = request_for(qwen21["folder"], steps=3, cfg_scale=4.0)
    batch, steps = run(make_backend(paths), request)
    # The model paints RGBA: its alpha is kept.
    assert batch.images[0].mode == "RGBA"
    expected = bare_pipe(qwen21["folder"])(
        prompt=request.prompt, negative_prompt=request.negative_prompt, true_cfg_scale=4.0, num_inference_steps=3,
        width=64, height=64, generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(batch.images[0]), np.asarray(expected))
    assert len(steps) == 3 and all(step.preview is not None for step in steps)
    # CFG 1 (Qwen's recommendation) runs without guidance: one pass a step, the negative prompt unused.
    plain, _ = run(make_backend(paths), request_for(qwen21["folder"], steps=3, cfg_scale=1.0))
    assert np.array_equal(pixels(plain.images[0]), bare_image(bare_pipe(qwen21["folder"]), request_for(
        qwen21["folder"], steps=3, cfg_scale=1.0)))  # fmt: skip
    assert not np.array_equal(pixels(plain.images[0]), pixels(expected))
    assert plain.notes == (
        "Qwen-Image 2.1 uses a negative prompt only with CFG above 1; the negative prompt was ignored.",
    )
    # Above CFG 1 without a negative prompt, guidance runs against a blank one (as for Qwen-Image).
    blank = request_for(qwen21["folder"], steps=3, cfg_scale=4.0, negative_prompt="")
    guided, _ = run(make_backend(paths), blank)
    assert np.array_equal(pixels(guided.images[0]), bare_image(bare_pipe(qwen21["folder"]), blank))
    assert not np.array_equal(pixels(guided.images[0]), pixels(plain.images[0]))


@pytest.mark.parametrize("layout", ["comfy", "diffusers"])
def test_transformer_files_in_each_layout_match_with_the_folders_components(paths, qwen21, layout):
    arch = detect_model(qwen21[layout])
    assert (arch.family, arch.dit.layout, arch.dit.blocks) == (
        "qwen-image-2.1", "original" if layout == "comfy" else "diffusers", (2, 0)
    )  # fmt: skip
    assert arch.dit.needs_components
    request = request_for(qwen21[layout], steps=3, cfg_scale=4.0, model_config=str(qwen21["folder"]),
                          text_encoders=str(qwen21["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_pipe(qwen21["folder"]), request))


def test_the_shipped_config_serves_a_file_without_model_config(paths, qwen21, tmp_path):
    # The shipped transformer config is the published 7B one: a tiny file given no --config is refused by its
    # block count, which says the config was read.
    request = request_for(qwen21["comfy"], steps=2, text_encoders=str(qwen21["folder"]))
    with pytest.raises(ModelError, match=r"has 2 main blocks but the Qwen-Image 2\.1 configuration has 32"):
        run(make_backend(paths), request)


def test_a_comfy_gguf_matches_diffusers_gguf_loading(paths, qwen21, tmp_path):
    state = {k.removeprefix("model.diffusion_model."): v for k, v in to_comfy(dict(
        qwen21["pipe"].transformer.state_dict())).items()}  # fmt: skip
    path = save_gguf(state, tmp_path / "q21-Q8_0.gguf", arch="qwen_image21")
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.quantization) == ("qwen-image-2.1", "original", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=4.0, model_config=str(qwen21["folder"]),
                          text_encoders=str(qwen21["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    transformer = QwenImage21Transformer2DModel.from_single_file(
        str(path), config=str(qwen21["folder"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    expected = bare_image(bare_pipe(qwen21["folder"], transformer), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(bare_pipe(qwen21["folder"]), request))  # the quantisation shows


def test_comfys_fused_mlp_is_split_gate_first(qwen21, tmp_path):
    # Gate and up swapped would still load (the same shapes): the picture must come out different.
    state = dict(qwen21["pipe"].transformer.state_dict())
    swapped = {k.replace("gate_layer", "@").replace("img_mlp.proj", "img_mlp.gate_layer").replace("@", "proj"): v
               for k, v in state.items()}  # fmt: skip
    fused = to_comfy(swapped)
    path = save_transformer_file(fused, tmp_path / "swapped.safetensors")
    good = QwenImage21Transformer2DModel.from_single_file(str(qwen21["comfy"]), config=str(qwen21["folder"]),
                                                          subfolder="transformer", local_files_only=True)  # fmt: skip
    bad = QwenImage21Transformer2DModel.from_single_file(str(path), config=str(qwen21["folder"]),
                                                         subfolder="transformer", local_files_only=True)  # fmt: skip
    key = "transformer_blocks.0.img_mlp.gate_layer.weight"
    assert torch.equal(good.state_dict()[key], state[key]) and not torch.equal(bad.state_dict()[key], state[key])


def test_damaged_files_and_wrong_components_are_refused_by_name(paths, qwen21, tmp_path):
    state = dict(qwen21["pipe"].transformer.state_dict())
    middle = save_transformer_file(to_comfy(state), tmp_path / "my-q21.safetensors",
                                   drop="model.diffusion_model.transformer_blocks.0")  # fmt: skip
    with pytest.raises(ModelError, match=r"my-q21\.safetensors looks like Qwen-Image 2\.1 but transformer_blocks\.0"):
        detect_model(middle)
    headless = save_transformer_file({k: v for k, v in state.items() if not k.startswith("modulation.")},
                                     tmp_path / "headless.safetensors")  # fmt: skip
    with pytest.raises(ModelError, match=r"headless\.safetensors looks like Qwen-Image 2\.1 but modulation\.1\.weight"):
        detect_model(headless)
    last = save_transformer_file(state, tmp_path / "short.safetensors", drop="transformer_blocks.1")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 main blocks but the Qwen-Image 2\.1 config"):
        run(make_backend(paths), request_for(last, model_config=str(qwen21["folder"]),
                                             text_encoders=str(qwen21["folder"])))  # fmt: skip
    # Without its components it says what to supply.
    with pytest.raises(ModelError, match=r"Qwen3-VL 8B text encoder, its tokenizer and its VAE"):
        run(make_backend(paths), request_for(qwen21["diffusers"], model_config=str(qwen21["folder"])))
    # A Qwen-Image folder's Qwen2.5-VL and VAE would load into the wrong classes: refused by their configs.
    old = tmp_path / "qwen-image"
    build_tiny_qwen_image().save_pretrained(str(old), safe_serialization=True)
    with pytest.raises(ModelError, match=r"has no processor/"):
        run(make_backend(paths), request_for(qwen21["diffusers"], model_config=str(qwen21["folder"]),
                                             text_encoders=str(old)))  # fmt: skip
    (old / "processor").mkdir()
    (old / "tokenizer" / "tokenizer.json").rename(old / "processor" / "tokenizer.json")
    with pytest.raises(ModelError, match=r"are qwen2_5_vl and AutoencoderKLQwenImage, but Qwen-Image 2\.1 needs"):
        run(make_backend(paths), request_for(qwen21["diffusers"], model_config=str(qwen21["folder"]),
                                             text_encoders=str(old)))  # fmt: skip


def test_reference_images_are_read_as_diffusers_reads_them(paths, qwen21, tmp_path):
    # Qwen-Image 2.1 edits by instruction from up to 10 pictures: they go with the prompt, shown to the encoder's
    # vision tower and as latents beside the noise, sized to the job's pixel count.
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (48, 64), (20, 30, 220)).save(tmp_path / "blue.png")
    refs = (str(tmp_path / "red.png"), str(tmp_path / "blue.png"))
    request = request_for(qwen21["folder"], steps=2, cfg_scale=1.0, reference_images=refs)
    batch, _ = run(make_backend(paths), request)
    pictures = [Image.open(path).convert("RGB") for path in refs]
    expected = bare_image(bare_pipe(qwen21["folder"]), request, image=pictures, output_resolution=64)
    assert np.array_equal(pixels(batch.images[0]), expected)
    plain = bare_image(bare_pipe(qwen21["folder"]), request)
    assert not np.array_equal(expected, plain)
    assert reference_image_limit(detect_model(qwen21["folder"]).dit) == 10


def test_control_units_are_refused(paths, qwen21, tmp_path):
    from desktop.engine.request import ControlUnit

    Image.new("RGB", (64, 64), (90, 30, 200)).save(tmp_path / "source.png")
    unit = ControlUnit("edges", str(tmp_path / "source.png"))
    with pytest.raises((InvalidRequest, ModelError), match="Qwen-Image 2.1"):
        run(make_backend(paths), request_for(qwen21["folder"], controls=(unit,)))


def recorded_sigmas(pipe):
    """A step-end callback that notes the sigma each step started from."""
    seen = []

    def step_end(pipeline, i, t, tensors):
        seen.append(float(pipeline.scheduler.sigmas[i]))
        return {}

    return seen, step_end


def test_image_to_image_runs_the_tail_of_the_text_to_image_schedule(qwen21):
    from desktop.engine.backends.families import own_edit_pipeline

    pipe = bare_pipe(qwen21["folder"])
    edit = own_edit_pipeline(pipe, "qwen-image-2.1")
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    full, on_full = recorded_sigmas(pipe)
    plain = pipe(prompt="a cat", num_inference_steps=4, width=64, height=64, output_type="np",
                 generator=torch.Generator().manual_seed(7), callback_on_step_end=on_full).images  # fmt: skip
    # Strength 1 starts from pure noise, drawn as text to image draws it: the same picture (not square, so rows
    # and columns cannot be swapped unseen).
    wide = dict(prompt="a cat", num_inference_steps=4, width=96, height=64, output_type="np")
    whole = edit(**wide, image=source, strength=1.0, generator=torch.Generator().manual_seed(7)).images
    assert np.array_equal(whole, pipe(**wide, generator=torch.Generator().manual_seed(7)).images)
    # Strength 0.5 runs the last two of the four steps, at the very sigmas text to image reaches them.
    half, on_half = recorded_sigmas(pipe)
    edit(prompt="a cat", image=source, strength=0.5, num_inference_steps=4, width=64, height=64, output_type="np",
         generator=torch.Generator().manual_seed(7), callback_on_step_end=on_half)  # fmt: skip
    assert half == pytest.approx(full[2:], abs=1e-6) and len(full) == 4
    # The hires fix's latent upscalers hand over latents (B, C, h, w): the source's own latents give its picture.
    pixels_ = edit.image_processor.preprocess(source.convert("RGBA"), height=64, width=64).unsqueeze(2)
    grid = edit._encode_vae_image(pixels_, None)[:, :, 0]
    by_picture, by_latents = (
        edit(prompt="a cat", image=given, strength=0.5, num_inference_steps=4, width=64, height=64, output_type="np",
             generator=torch.Generator().manual_seed(7)).images
        for given in (source, grid)
    )  # fmt: skip
    assert np.array_equal(by_picture, by_latents) and not np.array_equal(by_picture, plain)


def test_inpainting_leaves_the_sources_latents_outside_the_mask(qwen21):
    from desktop.engine.backends.families import own_edit_pipeline

    edit = own_edit_pipeline(bare_pipe(qwen21["folder"]), "qwen-image-2.1")
    source = Image.new("RGB", (96, 64), (200, 40, 40))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 20, 64))  # the left 20 columns: latent columns 0 and 1 (16 pixels each)
    latents = edit(prompt="a cat", image=source, mask_image=mask, strength=1.0, num_inference_steps=3, width=96,
                   height=64, output_type="latent", generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    pixels_ = edit.image_processor.preprocess(source.convert("RGBA"), height=64, width=96).unsqueeze(2)
    clean = edit._pack_latents(edit._encode_vae_image(pixels_, None)[:, :, 0], 1, 64, 4, 6)
    grid = latents.reshape(4, 6, 64)  # 4 rows of 6 cells
    kept = clean.reshape(4, 6, 64)
    assert torch.allclose(grid[:, 2:], kept[:, 2:], atol=1e-6)
    assert not torch.allclose(grid[:, :2], kept[:, :2], atol=1e-2)


def test_edits_and_the_hires_fix_run_through_marble(paths, qwen21, tmp_path):
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "source.png")
    source = str(tmp_path / "source.png")
    # A batch of image to image: picture k is the lone job's with seed k.
    batch, _ = run(make_backend(paths), request_for(qwen21["folder"], init_image=source, strength=0.6, steps=3,
                                                    cfg_scale=1.0, batch_size=2))  # fmt: skip
    second, _ = run(make_backend(paths), request_for(qwen21["folder"], init_image=source, strength=0.6, steps=3,
                                                     cfg_scale=1.0, seed=43))  # fmt: skip
    difference = np.abs(pixels(batch.images[1]).astype(int) - pixels(second.images[0]).astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01  # batched float maths rounds a few values apart
    expected = bare_image(edit_of(qwen21), request_for(qwen21["folder"], steps=3, cfg_scale=1.0, seed=43),
                          image=Image.open(source), strength=0.6, output_resolution=64)  # fmt: skip
    assert np.array_equal(pixels(second.images[0]), expected)
    # A reference picture beside the source is the pipeline's condition image, as in text to image.
    Image.new("RGB", (48, 64), (20, 30, 220)).save(tmp_path / "blue.png")
    guided, _ = run(make_backend(paths), request_for(qwen21["folder"], init_image=source, strength=0.6, steps=3,
                                                     cfg_scale=1.0, seed=43,
                                                     reference_images=(str(tmp_path / "blue.png"),)))  # fmt: skip
    expected = bare_image(edit_of(qwen21), request_for(qwen21["folder"], steps=3, cfg_scale=1.0, seed=43),
                          image=Image.open(source), strength=0.6, output_resolution=64,
                          references=[Image.open(tmp_path / "blue.png").convert("RGB")])  # fmt: skip
    assert np.array_equal(pixels(guided.images[0]), expected)
    assert not np.array_equal(expected, pixels(second.images[0]))
    for upscaler in ("Latent", "Lanczos"):
        hires_request = request_for(qwen21["folder"], steps=2, cfg_scale=1.0, negative_prompt="", hires_fix=True,
                                    hires_scale=1.5, hires_steps=2, hires_upscaler=upscaler,
                                    width=96)  # not square: rows and columns apart
        hires, steps = run(make_backend(paths), hires_request)
        assert hires.images[0].size == (144, 96) and len(steps) > 2 and not hires.notes


def edit_of(qwen21):
    from desktop.engine.backends.families import own_edit_pipeline

    return own_edit_pipeline(bare_pipe(qwen21["folder"]), "qwen-image-2.1")


def test_library_family_defaults_and_the_shipped_config(qwen21):
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.resources import Resources

    assert model_family(qwen21["folder"]) == "qwen-image-2.1" and model_family(qwen21["comfy"]) == "qwen-image-2.1"
    assert family_defaults("qwen-image-2.1") == {"steps": 40, "cfg_scale": 1.0}
    # The published 7B transformer (32 single-stream blocks), counted from the shipped config on the meta device.
    cls = transformer_class("qwen-image-2.1")
    config = cls.load_config(str(Resources.default().config_folder("qwen-image-2.1")), subfolder="transformer")
    with init_empty_weights():
        model = cls.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 7_115_124_736


def qwen21_lora(transformer, seed: int = 3) -> dict[str, torch.Tensor]:
    """A LoRA on every attention projection and the SwiGLU's three layers, in diffusers' names."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if name.endswith(("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "img_mlp.gate_layer",
                          "img_mlp.proj", "img_mlp.out")):  # fmt: skip
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator) / 2
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator) / 2
    return tensors


def test_a_qwen21_lora_is_detected_and_applied_as_bare_diffusers_applies_it(paths, qwen21):
    save_file(qwen21_lora(qwen21["pipe"].transformer), str(paths.loras / "style.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "style.safetensors"), "style")
    assert (info.family, info.label, info.transformer_width) == ("qwen-image-2.1", "Qwen-Image 2.1", 32)
    request = request_for(qwen21["folder"], prompt="a red circle <lora:style:0.8>", steps=3, cfg_scale=1.0)
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    pipe = bare_pipe(qwen21["folder"])
    pipe.load_lora_weights(str(paths.loras / "style.safetensors"), adapter_name="style")
    pipe.set_adapters(["style"], [0.8])
    expected = bare_image(pipe, request_for(qwen21["folder"], prompt="a red circle", steps=3, cfg_scale=1.0))
    assert np.array_equal(pixels(batch.images[0]), expected)
    plain = bare_image(bare_pipe(qwen21["folder"]), request_for(qwen21["folder"], prompt="a red circle", steps=3,
                                                                cfg_scale=1.0))  # fmt: skip
    assert not np.array_equal(expected, plain)


def test_qwen21_loras_are_told_from_qwen_images(tmp_path):
    def family(tensors):
        save_file(tensors, str(tmp_path / "l.safetensors"))
        return inspect_lora(read_safetensors_header(tmp_path / "l.safetensors"), "l").family

    def pair(key, width):
        return {f"{key}.lora_A.weight": torch.zeros(4, width), f"{key}.lora_B.weight": torch.zeros(width, 4)}

    # The same block names: 2.1's single-stream SwiGLU, or its 4096 width for attention alone.
    assert family(pair("transformer.transformer_blocks.0.img_mlp.gate_layer", 32)) == "qwen-image-2.1"
    assert family(pair("transformer.transformer_blocks.0.attn.to_q", 4096)) == "qwen-image-2.1"
    assert family(pair("transformer.transformer_blocks.0.img_mlp.net.2", 3072)) == "qwen-image"
    # Attention 4096 wide beside a second stream's projections is not 2.1 (which has none).
    joint = pair("transformer.transformer_blocks.0.attn.to_q", 4096) | pair(
        "transformer.transformer_blocks.0.attn.add_q_proj", 4096)  # fmt: skip
    assert family(joint) != "qwen-image-2.1"
    assert family(pair("lora_unet_transformer_blocks_0_attn_to_q", 4096)) == "qwen-image-2.1"


def test_the_command_line_runs_it(qwen21, tmp_path):
    from desktop.engine.metadata import read_image_metadata
    from tests.support.cli_runner import run_cli

    out = tmp_path / "q.png"
    code, stdout, err = run_cli(
        "generate", "--model", str(qwen21["folder"]), "--prompt", "a red circle " * 400, "--steps", "2", "--seed",
        "4", "--width", "64", "--height", "64", "--device", "cpu", "--out", str(out), "--no-preview",
        "--home", str(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, err
    metadata = read_image_metadata(out)
    assert "CFG scale: 1" in metadata.raw["parameters"] and "Steps: 2" in metadata.raw["parameters"]
    assert Image.open(out).mode == "RGBA"


def test_previews_use_qwen21s_own_64_channel_table():
    from desktop.engine.backends.preview import latents_to_rgb

    # Zero latents give the table's offset; one channel lit gives its row (ComfyUI's published fit: row 41 is
    # [0.1484, 0.0801, 0.0804]).
    assert latents_to_rgb(np.zeros((64, 2, 2), dtype=np.float32), "qwen-image-2.1")[0, 0].tolist() == [111, 103, 88]
    lit = np.zeros((64, 1, 1), dtype=np.float32)
    lit[41] = 1.0
    assert latents_to_rgb(lit, "qwen-image-2.1")[0, 0].tolist() == [130, 113, 98]


def test_a_processor_folder_with_its_chat_template_in_json_reads_it(paths, qwen21, tmp_path):
    # Older processor folders keep the template in chat_template.json, which the tokenizer does not read; the
    # pipeline counts the system tokens it drops with it, so without it the picture would differ (or fail).
    import json
    import shutil

    folder = tmp_path / "json-template"
    shutil.copytree(qwen21["folder"], folder)
    jinja = folder / "processor" / "chat_template.jinja"
    (folder / "processor" / "chat_template.json").write_text(json.dumps({"chat_template": jinja.read_text()}))
    jinja.unlink()
    request = request_for(folder, steps=2, cfg_scale=1.0)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_pipe(qwen21["folder"]), request))


def test_a_turbo_models_own_sigmas_serve_its_edits_too(qwen21):
    from desktop.engine.backends.families import own_edit_pipeline

    # Qwen-Image-2.1-Turbo's folder names its schedule (`sample_sigmas` in model_index.json): steps follow it.
    pipe = bare_pipe(qwen21["folder"])
    pipe.register_to_config(sample_sigmas=[1.0, 0.9, 0.6, 0.3])
    full, on_full = recorded_sigmas(pipe)
    pipe(prompt="a cat", num_inference_steps=40, width=64, height=64, output_type="latent",
         generator=torch.Generator().manual_seed(7), callback_on_step_end=on_full)  # fmt: skip
    half, on_half = recorded_sigmas(pipe)
    edit = own_edit_pipeline(pipe, "qwen-image-2.1")
    edit(prompt="a cat", image=Image.new("RGB", (64, 64)), strength=0.5, num_inference_steps=40, width=64, height=64,
         output_type="latent", generator=torch.Generator().manual_seed(7), callback_on_step_end=on_half)  # fmt: skip
    assert len(full) == 4 and half == pytest.approx(full[2:], abs=1e-6)


def test_a_turbo_folder_runs_its_own_schedule(paths, qwen21, tmp_path):
    import json
    import shutil

    folder = tmp_path / "Qwen-Image-2.1-Turbo"
    shutil.copytree(qwen21["folder"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"sample_sigmas": [1.0, 0.8, 0.4]}))
    request = request_for(folder, steps=40, cfg_scale=1.0, negative_prompt="")
    batch, steps = run(make_backend(paths), request)
    assert len(steps) == 3
    assert batch.notes == (
        "Qwen-Image 2.1 runs its own 3-step schedule (its model_index.json): 40 steps were not used.",
    )
    expected = QwenImage21Pipeline.from_pretrained(str(folder), local_files_only=True, processor=tiny_processor())
    expected.set_progress_bar_config(disable=True)
    assert expected.config.sample_sigmas == [1.0, 0.8, 0.4]  # diffusers' own loading reads it too
    assert np.array_equal(pixels(batch.images[0]), bare_image(expected, request))
    # A transformer file with the Turbo folder's components runs the folder's schedule too.
    single, steps = run(make_backend(paths), request_for(qwen21["comfy"], steps=40, cfg_scale=1.0,
                                                         model_config=str(folder), text_encoders=str(folder)))
    assert len(steps) == 3 and np.array_equal(pixels(single.images[0]), pixels(batch.images[0]))
    # From library parts too, with the Turbo folder as --config (a file's tensors cannot say it is Turbo).
    import_library_parts(paths, qwen21["pipe"], tmp_path)
    parts, steps = run(make_backend(paths), request_for(qwen21["comfy"], steps=40, cfg_scale=1.0, negative_prompt="",
                                                        model_config=str(folder), text_encoders="qwen3vl_8b",
                                                        vae="qwen_image_2.1_vae"))  # fmt: skip
    assert len(steps) == 3 and np.array_equal(pixels(parts.images[0]), pixels(batch.images[0]))


@pytest.mark.parametrize("naming", ["comfy", "kohya"])
def test_a_lora_on_comfys_fused_mlp_is_split_as_diffusers_layers(paths, qwen21, naming):
    # Made on ComfyUI's model (ai-toolkit / ComfyUI's trainer): one LoRA on `img_mlp.gate_up`, whose first half of
    # rows is the gate. Marble splits it; the reference is bare diffusers loading the two halves itself.
    generator = torch.Generator().manual_seed(5)
    fused, halves = {}, {}
    for index, block in enumerate(qwen21["pipe"].transformer.transformer_blocks):
        width, hidden = block.img_mlp.gate_layer.in_features, block.img_mlp.gate_layer.out_features
        down = torch.randn(4, width, generator=generator) / 2
        up = torch.randn(2 * hidden, 4, generator=generator) / 2
        if naming == "comfy":  # with an alpha of 2 over rank 4: the update at half strength
            fused[f"diffusion_model.transformer_blocks.{index}.img_mlp.gate_up.lora_down.weight"] = down
            fused[f"diffusion_model.transformer_blocks.{index}.img_mlp.gate_up.lora_up.weight"] = up
            fused[f"diffusion_model.transformer_blocks.{index}.img_mlp.gate_up.alpha"] = torch.tensor(2.0)
            up = up / 2
        else:
            fused[f"lora_unet_transformer_blocks_{index}_img_mlp_gate_up.lora_down.weight"] = down
            fused[f"lora_unet_transformer_blocks_{index}_img_mlp_gate_up.lora_up.weight"] = up
        for half, rows in (("gate_layer", up[:hidden]), ("proj", up[hidden:])):
            halves[f"transformer.transformer_blocks.{index}.img_mlp.{half}.lora_A.weight"] = down.clone()
            halves[f"transformer.transformer_blocks.{index}.img_mlp.{half}.lora_B.weight"] = rows.contiguous()
    save_file(fused, str(paths.loras / "fused.safetensors"))
    save_file(halves, str(paths.loras.parent / "halves.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "fused.safetensors"), "fused")
    assert info.family == "qwen-image-2.1"
    batch, _ = run(make_backend(paths), request_for(qwen21["folder"], prompt="a red circle <lora:fused:1>", steps=3,
                                                    cfg_scale=1.0))  # fmt: skip
    assert [lora.name for lora in batch.loras] == ["fused"]
    pipe = bare_pipe(qwen21["folder"])
    pipe.load_lora_weights(str(paths.loras.parent / "halves.safetensors"), adapter_name="halves")
    expected = bare_image(pipe, request_for(qwen21["folder"], prompt="a red circle", steps=3, cfg_scale=1.0))
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(bare_pipe(qwen21["folder"]), request_for(
        qwen21["folder"], prompt="a red circle", steps=3, cfg_scale=1.0)))  # fmt: skip


def import_library_parts(paths, pipe, folder):
    """The tiny model's Qwen3-VL as ComfyUI's file and its VAE as the release's file, imported into the libraries as
    qwen3vl_8b and qwen_image_2.1_vae; returns their records."""
    from desktop.engine.library.index import Library
    from tests.support.tiny_krea2 import comfy_qwen3_vl

    save_file(comfy_qwen3_vl(pipe.text_encoder.model), str(folder / "qwen3vl_8b.safetensors"))
    save_file({key: value.contiguous() for key, value in pipe.vae.state_dict().items()},
              str(folder / "qwen_image_2.1_vae.safetensors"))  # fmt: skip
    library = Library(paths)
    return (library.import_path(folder / "qwen3vl_8b.safetensors", "encoder"),
            library.import_path(folder / "qwen_image_2.1_vae.safetensors", "vae"))  # fmt: skip


def test_a_file_runs_with_a_whole_qwen3_vl_and_the_qwen21_vae_from_the_library(paths, qwen21, tmp_path):
    """ComfyUI's Qwen3-VL file, built whole (its vision tower sees the reference pictures), and the release's VAE file
    from the libraries, the folder as --config (its processor): the folder's pictures, with and without a reference."""
    from desktop.engine.library.encoder import fits_model

    encoder, vae = import_library_parts(paths, qwen21["pipe"], tmp_path)
    assert encoder.family == "qwen3vl" and vae.architecture == "Qwen-Image 2.1 VAE"
    assert fits_model("qwen3vl", "qwen-image-2.1") and not fits_model("qwen2.5-vl", "qwen-image-2.1")
    request = request_for(qwen21["comfy"], steps=3, cfg_scale=4.0, model_config=str(qwen21["folder"]),
                          text_encoders="qwen3vl_8b", vae="qwen_image_2.1_vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_pipe(qwen21["folder"]), request))
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    with_reference = replace(request, cfg_scale=1.0, reference_images=(str(tmp_path / "red.png"),))
    batch, _ = run(make_backend(paths), with_reference)
    expected = bare_image(bare_pipe(qwen21["folder"]), with_reference, output_resolution=64,
                          image=[Image.open(tmp_path / "red.png").convert("RGB")])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_library_parts_of_another_model_are_refused_by_name(paths, qwen21, tmp_path):
    """Qwen-Image's VAE for 2.1 (and 2.1's for Qwen-Image), a Qwen3-VL of another width, no VAE, and 2.1's VAE in
    Wan's own names (which no converter reads): each refused naming what fits."""
    from desktop.engine.library.index import Library
    from tests.support.tiny_krea2 import comfy_qwen3_vl
    from tests.support.tiny_qwen21 import qwen3_vl_config

    pipe = qwen21["pipe"]
    qwen = build_tiny_qwen_image()
    save_file(comfy_qwen3_vl(pipe.text_encoder.model), str(tmp_path / "qwen3vl.safetensors"))
    save_file({key: value.contiguous() for key, value in pipe.vae.state_dict().items()},
              str(tmp_path / "q21_vae.safetensors"))  # fmt: skip
    save_file({key: value.contiguous() for key, value in qwen.vae.state_dict().items()},
              str(tmp_path / "qwen_image_vae.safetensors"))  # fmt: skip
    config = qwen3_vl_config(300, {"bos": 256, "eos": 258, "<|image_pad|>": 259, "<|video_pad|>": 260,
                                   "<|vision_start|>": 261, "<|vision_end|>": 262})  # fmt: skip
    config.text_config.hidden_size = 32
    config.vision_config.out_hidden_size = 32
    from transformers import Qwen3VLModel

    save_file(comfy_qwen3_vl(Qwen3VLModel(config)), str(tmp_path / "qwen3vl_wide.safetensors"))
    library = Library(paths)
    for name in ("qwen3vl", "qwen3vl_wide"):
        library.import_path(tmp_path / f"{name}.safetensors", "encoder")
    for name in ("q21_vae", "qwen_image_vae"):
        library.import_path(tmp_path / f"{name}.safetensors", "vae")
    request = request_for(qwen21["comfy"], steps=2, cfg_scale=1.0, model_config=str(qwen21["folder"]),
                          text_encoders="qwen3vl", vae="qwen_image_vae")  # fmt: skip
    with pytest.raises(ModelError, match=r"qwen_image_vae.* is a Qwen-Image VAE \(Wan 2\.1 design\); .* decodes with "
                                         r"the Qwen-Image 2\.1 VAE"):  # fmt: skip
        run(make_backend(paths), request)
    with pytest.raises(ModelError, match=r"needs .*Qwen3-VL.* text encoder for its text_encoder and none of the chosen "
                                         r"ones fits \(chosen: qwen3vl_wide"):  # fmt: skip
        run(make_backend(paths), replace(request, text_encoders="qwen3vl_wide", vae="q21_vae"))
    with pytest.raises(ModelError, match=r"choose its VAE too .*the Qwen-Image 2\.1 VAE"):
        run(make_backend(paths), replace(request, vae=""))
    # Wan's names for the probes Marble reads (the rest as they are: the layout is refused before any is read).
    renames = (("encoder.conv_in.", "encoder.conv1."), ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
               ("decoder.conv_out.", "decoder.head.2."))  # fmt: skip
    wan_names = {}
    for key, value in pipe.vae.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        wan_names[key] = value.contiguous()
    wan_names["conv2.weight"] = wan_names.pop("post_quant_conv.weight")
    save_file(wan_names, str(tmp_path / "q21_wan.safetensors"))
    assert library.import_path(tmp_path / "q21_wan.safetensors", "vae").architecture == "Qwen-Image 2.1 VAE"
    with pytest.raises(ModelError, match=r"in Wan's own names, which Marble cannot convert: import "
                                         r"vae/diffusion_pytorch_model\.safetensors"):  # fmt: skip
        run(make_backend(paths), replace(request, vae="q21_wan"))
    # And the other way: 2.1's VAE is no Qwen-Image VAE.
    from desktop.engine.backends.encoder_components import Component
    from desktop.engine.backends.qwen_encoders import load_qwen_vae
    from desktop.engine.resources import Resources

    with pytest.raises(ModelError, match=r"'q21' \(q21_vae\.safetensors\) is a Qwen-Image 2\.1 VAE; Qwen-Image decodes "
                                         r"with the Qwen-Image VAE \(qwen_image_vae\.safetensors\)"):  # fmt: skip
        load_qwen_vae(Resources.default().config_folder("qwen-image") / "vae",
                      Component("q21", tmp_path / "q21_vae.safetensors"), model_name="Qwen-Image",
                      dtype=torch.float32)  # fmt: skip


def test_the_shipped_processor_reads_as_qwen3_vl_8bs_and_the_encoder_config_is_the_published_model(tmp_path):
    """Without a folder, a library Qwen3-VL's processor is Marble's Qwen tokenizer with the image settings and chat
    template shipped beside the config: the system message is as many tokens as the raw template the pipeline
    tokenizes starts with (what it drops), pictures are cut in 16-pixel patches merged 2x2 at 256x256 pixels at
    least, and the encoder config is Qwen3-VL 8B (8,767,123,696 parameters, counted on the meta device)."""
    from accelerate import init_empty_weights
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from desktop.engine.backends.families_qwen21 import library_processor
    from desktop.engine.backends.qwen_encoders import SHIPPED_FOLDER
    from desktop.engine.resources import Resources

    resources = Resources.default()
    config = resources.config_folder("qwen-image-2.1")
    info = detect_model(save_transformer_file(dict(build_tiny_qwen21().transformer.state_dict()),
                                              tmp_path / "q21.safetensors")).dit  # fmt: skip
    processor = library_processor(None, config, resources.tokenizers / SHIPPED_FOLDER, info, name="q21")
    system = "Comprehend and analyze the provided prompt."
    counted = processor.apply_chat_template([{"role": "system", "content": [{"type": "text", "text": system}]}],
                                            tokenize=True, return_dict=False)  # fmt: skip
    raw = processor.tokenizer(f"<|im_start|>system\n{system}<|im_end|>\n").input_ids
    assert list(counted[0]) == raw and len(raw) == 14
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_pad == 151655
    shown = processor(text=["<|vision_start|><|image_pad|><|vision_end|>a fox"], images=[Image.new("RGB", (64, 48))],
                      return_tensors="pt")  # fmt: skip
    # 64x48 grown to at least 65,536 pixels in whole 32-pixel cells (patch x merge): 320x224, 20x14 patches.
    assert shown.image_grid_thw.tolist() == [[1, 14, 20]]
    assert (shown.input_ids == image_pad).sum() == 14 * 20 // 4
    # A --config folder without the image settings, and processor files that do not load: errors naming the folder.
    shipped = resources.tokenizers / SHIPPED_FOLDER
    with pytest.raises(ModelError, match=r"The config folder .* has no processor/preprocessor_config\.json \(Qwen3-VL's"
                                         r" image settings\), which q21 needs with a library"):  # fmt: skip
        library_processor(None, tmp_path, shipped, info, name="q21")
    broken = tmp_path / "broken" / "processor"
    broken.mkdir(parents=True)
    (broken / "preprocessor_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match=r"The processor in .*broken.processor does not load"):
        library_processor(None, broken.parent, shipped, info, name="q21")
    # Beside tokenizer files the folder's whole processor is read: a broken one is refused, not passed over.
    (broken / "tokenizer.json").write_text("{}", encoding="utf-8")
    (broken / "preprocessor_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match=r"The processor in .*broken.processor does not load"):
        library_processor(broken.parent, config, shipped, info, name="q21")
    settings = Qwen3VLConfig.from_pretrained(str(config / "text_encoder"))
    with init_empty_weights():
        encoder = Qwen3VLForConditionalGeneration(settings)
    assert sum(p.numel() for p in encoder.parameters()) == 8_767_123_696
