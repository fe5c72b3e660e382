"""Flux.2: told from Flux.1 by its tensors (shared modulation), its variant by its text embedding's
width (or, for other widths, by its guidance embedder), in BFL and diffusers names; tiny random Klein and
dev models run offline through Marble, pixel-identical to bare diffusers with the same seed."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (
    Flux2KleinInpaintPipeline,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    GGUFQuantizationConfig,
)
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import detect_model, read_safetensors_header
from desktop.engine.library.lora import inspect_lora
from desktop.engine.library.native_size import model_family
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.e2e.test_cli import in_process
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.flow_edit_checks import (
    check_the_tail_of_text_to_image,
    latent_hires_by_hand,
    normalised_vae_patches,
)
from tests.support.tiny_dit import build_tiny_flux, flux_to_bfl, save_gguf
from tests.support.tiny_dit_loras import flux_kohya_lora, peft_lora
from tests.support.tiny_flux2 import (
    build_tiny_flux2_dev,
    build_tiny_flux2_klein,
    flux2_to_bfl,
    lora_for,
    save_transformer_file,
)
from tests.support.tiny_loras import save_lora

PREFIX = "model.diffusion_model."


def bfl_flux2(text_width: int) -> dict[str, torch.Tensor]:
    """Flux.2's original tensor names (ComfyUI prefix), small shapes but the real text-embedding width."""
    names = ["img_in.weight", "time_in.in_layer.weight", "time_in.out_layer.weight", "final_layer.linear.weight",
             "final_layer.adaLN_modulation.1.weight", "double_stream_modulation_img.lin.weight",
             "double_stream_modulation_txt.lin.weight", "single_stream_modulation.lin.weight"]  # fmt: skip
    for i in range(2):
        names += [f"double_blocks.{i}.img_attn.qkv.weight", f"double_blocks.{i}.txt_mlp.0.weight"]
        names += [f"single_blocks.{i}.linear1.weight", f"single_blocks.{i}.linear2.weight"]
    state = {name: torch.zeros(8, 8) for name in names}
    state["txt_in.weight"] = torch.zeros(8, text_width)
    return {"model.diffusion_model." + k: v for k, v in state.items()}


def test_flux2_bfl_file_is_flux2_dev_not_flux1(tmp_path):
    path = tmp_path / "flux1-dev.safetensors"
    save_file(bfl_flux2(15360), str(path))
    arch = detect_model(path)
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.dit.blocks, arch.label) == (
        "flux2", "dev", "bfl", (2, 2), "Flux.2 dev"
    )  # fmt: skip
    assert arch.config_name == "flux2-dev"


def test_flux2_diffusers_transformer_is_detected_with_its_klein_variant(tmp_path):
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=7680, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )  # fmt: skip
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(path))
    arch = detect_model(path)
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.dit.blocks) == (
        "flux2", "klein 4b", "diffusers", (2, 3)
    )  # fmt: skip
    assert arch.dit.parameters == sum(p.numel() for p in transformer.parameters())


def test_a_flux2_file_with_a_missing_block_names_the_file(tmp_path):
    path = tmp_path / "my-flux2.safetensors"
    save_file({k: v for k, v in bfl_flux2(12288).items() if ".single_blocks.0." not in k}, str(path))
    with pytest.raises(ModelError, match=r"my-flux2\.safetensors looks like Flux\.2 but single_blocks\.0 is missing"):
        detect_model(path)


@pytest.fixture(scope="module")
def klein(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("klein")
    pipe = build_tiny_flux2_klein()
    folder = tmp / "klein"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    bfl = flux2_to_bfl(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "transformer": pipe.transformer,
        "folder": folder,
        # BFL's names under ComfyUI's prefix, under a name that says nothing true.
        "bfl": save_transformer_file(bfl, tmp / "flux1-dev.safetensors", prefix=PREFIX),
        "short": save_transformer_file(bfl, tmp / "klein-short.safetensors", drop="single_blocks.1"),
        # City96-style GGUF: BFL's names, quantised.
        "gguf": save_gguf(bfl, tmp / "klein-Q8_0.gguf", arch="flux2"),
        "tmp": tmp,
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def klein_expected(folder, request, transformer=None, is_distilled=None):
    parts = {"transformer": transformer} if transformer is not None else {}
    if is_distilled is not None:
        parts["is_distilled"] = is_distilled
    pipe = Flux2KleinPipeline.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=request.prompt, num_inference_steps=request.steps, width=request.width, height=request.height,
        guidance_scale=request.cfg_scale, generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0]  # fmt: skip
    return pixels(image)


def test_klein_folder_is_detected_and_matches_bare_diffusers(paths, klein):
    arch = detect_model(klein["folder"])
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.label) == (
        "flux2", "klein", "diffusers", "Flux.2 klein"
    )  # fmt: skip
    request = request_for(klein["folder"], steps=2, cfg_scale=1.0)
    batch, steps = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), klein_expected(klein["folder"], request))
    assert len(steps) == 2
    # The folder says step-distilled: no CFG, so the negative prompt is ignored, and the result says so.
    assert batch.notes == ("Flux.2 klein is step-distilled: it runs without CFG, so without a negative prompt; the "
                           "negative prompt was ignored.",)  # fmt: skip


def test_klein_bfl_file_with_text_encoder_from_its_folder_matches_bare_diffusers(paths, klein):
    arch = detect_model(klein["bfl"])
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.dit.components, arch.dit.blocks) == (
        "flux2", "klein", "bfl", ("transformer",), (2, 2)
    )  # fmt: skip
    # A single file cannot say whether it is step-distilled: the CFG scale decides, 4 runs true CFG.
    request = request_for(
        klein["bfl"], steps=2, cfg_scale=4.0, negative_prompt="", model_config=str(klein["folder"]),
        text_encoders=str(klein["folder"]),
    )  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    expected = klein_expected(klein["folder"], request, is_distilled=False)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, klein_expected(klein["folder"], request))  # CFG really ran
    # A negative prompt: true CFG runs against its encoding instead of the empty prompt's.
    negative, _ = run(make_backend(paths), replace(request, negative_prompt="blurry"))
    pipe = Flux2KleinPipeline.from_pretrained(str(klein["folder"]), local_files_only=True, is_distilled=False)
    pipe.set_progress_bar_config(disable=True)
    embeds = pipe.encode_prompt(prompt="blurry", max_sequence_length=512)[0]
    wanted = pipe(
        prompt=request.prompt, num_inference_steps=2, width=64, height=64, guidance_scale=4.0,
        negative_prompt_embeds=embeds, generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0]  # fmt: skip
    assert np.array_equal(pixels(negative.images[0]), pixels(wanted))
    assert not np.array_equal(pixels(wanted), expected)


def test_klein_bfl_gguf_matches_diffusers_gguf_loading(paths, klein):
    arch = detect_model(klein["gguf"])
    assert (arch.dit.variant, arch.dit.layout, arch.dit.quantization) == ("klein", "bfl", "Q8_0")
    request = request_for(
        klein["gguf"], steps=2, cfg_scale=1.0, model_config=str(klein["folder"]), text_encoders=str(klein["folder"])
    )
    batch, _ = run(make_backend(paths), request)
    transformer = Flux2Transformer2DModel.from_single_file(
        str(klein["gguf"]), config=str(klein["folder"]), subfolder="transformer", local_files_only=True,
        dtype=torch.float32, quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
    )  # fmt: skip
    expected = klein_expected(klein["folder"], request, transformer, is_distilled=False)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, klein_expected(klein["folder"], request))  # Q8_0 really was used


def test_a_flux2_file_without_text_encoders_is_refused_naming_what_to_supply(paths, klein):
    with pytest.raises(ModelError, match=r"flux1-dev\.safetensors holds the Flux\.2 klein transformer only.*Qwen3"):
        run(make_backend(paths), request_for(klein["bfl"], model_config=str(klein["folder"])))


def test_a_klein_file_with_a_clip_from_the_library_is_refused_naming_the_qwen3_it_needs(paths, klein):
    # Klein takes its Qwen3 from the text-encoder library; a CLIP there is refused before the transformer
    # loads, naming the slot and what fits it.
    from transformers import CLIPTextConfig, CLIPTextModel

    from desktop.engine.library.index import Library
    from tests.support.tiny_components import save_clip_l

    clip = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=1000))  # fmt: skip
    Library(paths).import_path(save_clip_l(clip, klein["tmp"] / "clip_l.safetensors"), "encoder")
    request = request_for(klein["bfl"], model_config=str(klein["folder"]), text_encoders="clip_l", vae="")
    with pytest.raises(ModelError, match=r"flux1-dev\.safetensors needs a Qwen3 \(width 16\) text encoder for its "
                                         r"text_encoder .*chosen: clip_l \(CLIP"):  # fmt: skip
        run(make_backend(paths), request)


def test_a_klein_file_runs_with_its_qwen3_and_flux2_vae_from_the_library(paths, klein):
    """ComfyUI's Klein files: the transformer, qwen_3_4b.safetensors (`model.*` names, its lm_head tied to the
    embedding and left out) and flux2-vae.safetensors (BFL's names), or a VAE in diffusers' names."""
    from safetensors.torch import save_file

    from desktop.engine.library.index import Library
    from tests.support.tiny_flux2 import flux2_vae_to_bfl

    pipe, tmp = klein["pipe"], klein["tmp"]
    library = Library(paths)
    encoder = {k: v.contiguous() for k, v in pipe.text_encoder.state_dict().items() if k != "lm_head.weight"}
    save_file(encoder, str(tmp / "qwen_3_4b.safetensors"))
    assert library.import_path(tmp / "qwen_3_4b.safetensors", "encoder").family == "qwen3"
    save_file(flux2_vae_to_bfl(pipe.vae), str(tmp / "flux2-vae.safetensors"))
    diffusers_names = {k: v.contiguous() for k, v in pipe.vae.state_dict().items() if "num_batches" not in k}
    save_file(diffusers_names, str(tmp / "flux2-vae-diffusers.safetensors"))
    for file in ("flux2-vae.safetensors", "flux2-vae-diffusers.safetensors"):
        record = library.import_path(tmp / file, "vae")
        assert record.shown_architecture.startswith("Flux.2 VAE"), record.shown_architecture
    # The whole diffusers folder as --config: its configs, and its tokenizer (the tiny one).
    request = request_for(klein["bfl"], steps=2, cfg_scale=4.0, negative_prompt="", model_config=str(klein["folder"]),
                          text_encoders="qwen_3_4b", vae="flux2-vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    expected = klein_expected(klein["folder"], request, is_distilled=False)
    assert np.array_equal(pixels(batch.images[0]), expected)
    other, _ = run(make_backend(paths), replace(request, vae="flux2-vae-diffusers"))
    assert np.array_equal(pixels(other.images[0]), expected)
    # An SD3 / Flux.1 VAE is refused by name: Flux.2 works in 32 latent channels (4 in the tiny model).
    from tests.support.tiny_components import save_ae
    from tests.support.tiny_dit import _vae

    library.import_path(save_ae(_vae(16, 0.0, 1.0), tmp / "ae.safetensors"), "vae")
    with pytest.raises(ModelError, match=r"'ae' \(ae\.safetensors\) is a SD3 / Flux VAE with 16 latent channels; "
                                         r".*flux2-vae\.safetensors"):  # fmt: skip
        run(make_backend(paths), replace(request, vae="ae"))


def test_a_flux2_file_missing_its_last_block_names_the_file(paths, klein):
    request = request_for(klein["short"], model_config=str(klein["folder"]), text_encoders=str(klein["folder"]))
    with pytest.raises(ModelError, match=r"klein-short\.safetensors has 1 single blocks but the Flux\.2 klein "
                       r"configuration has 2"):  # fmt: skip
        run(make_backend(paths), request)


@pytest.mark.parametrize(
    ("name", "billions"), [("flux2-dev", 32.2), ("flux2-klein-4b", 3.9), ("flux2-klein-9b", 9.1)]
)
def test_shipped_flux2_configs_have_the_published_sizes(name, billions):
    config = json.loads((Resources.default().config_folder(name) / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        transformer = Flux2Transformer2DModel.from_config(config)
    assert round(sum(p.numel() for p in transformer.parameters()) / 1e9, 1) == billions


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux2dev")
    pipe = build_tiny_flux2_dev()
    folder = tmp / "dev"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    return {
        "folder": folder,
        "diffusers": save_transformer_file(state, tmp / "dev-diffusers.safetensors"),
        "gguf": save_gguf(state, tmp / "dev-Q8_0.gguf", arch="flux2"),
    }


def dev_expected(folder, request, transformer=None):
    parts = {"transformer": transformer} if transformer is not None else {}
    return dev_image(Flux2Pipeline.from_pretrained(str(folder), local_files_only=True, **parts), request)


def dev_image(pipe, request):
    """Bare diffusers' dev picture for `request`: its distilled guidance, the request's seed on the CPU."""
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=request.prompt, num_inference_steps=request.steps, width=request.width, height=request.height,
        guidance_scale=request.distilled_cfg_scale, generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0]  # fmt: skip
    return pixels(image)


def test_dev_folder_runs_its_distilled_guidance_like_bare_diffusers(paths, dev):
    arch = detect_model(dev["folder"])
    assert (arch.family, arch.dit.variant, arch.config_name) == ("flux2", "dev", "flux2-dev")
    request = request_for(dev["folder"], steps=2, distilled_cfg_scale=4.0)
    backend = make_backend(paths)
    batch, _ = run(backend, request)
    expected = dev_expected(dev["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # The folder's whole Mistral 3 (31 layers here) runs as the 30-layer language model Flux.2 reads.
    encoder = backend._pipe.text_encoder
    assert (type(encoder).__name__, len(encoder.layers), type(encoder.norm).__name__) == (
        "MistralModel", 30, "Identity"
    )  # fmt: skip
    other, _ = run(make_backend(paths), request_for(dev["folder"], steps=2, distilled_cfg_scale=1.5))
    assert not np.array_equal(pixels(other.images[0]), expected)


@pytest.mark.parametrize("layout", ["diffusers", "gguf"])
def test_dev_transformer_files_match_diffusers_single_file_loading(paths, dev, layout):
    path = dev[layout]
    arch = detect_model(path)
    assert (arch.dit.variant, arch.dit.layout, arch.dit.quantization) == (
        "dev", "diffusers", "Q8_0" if layout == "gguf" else None
    )  # fmt: skip
    request = request_for(
        path, steps=2, distilled_cfg_scale=4.0, model_config=str(dev["folder"]), text_encoders=str(dev["folder"])
    )
    batch, _ = run(make_backend(paths), request)
    gguf = {"quantization_config": GGUFQuantizationConfig(compute_dtype=torch.float32)} if layout == "gguf" else {}
    transformer = Flux2Transformer2DModel.from_single_file(
        str(path), config=str(dev["folder"]), subfolder="transformer", local_files_only=True, dtype=torch.float32,
        **gguf,
    )  # fmt: skip
    expected = dev_expected(dev["folder"], request, transformer)
    assert np.array_equal(pixels(batch.images[0]), expected)
    if layout == "gguf":
        assert not np.array_equal(expected, dev_expected(dev["folder"], request))  # Q8_0 really was used


def test_a_klein_file_with_a_dev_folder_is_refused_naming_the_encoder(paths, klein, dev):
    request = request_for(klein["bfl"], model_config=str(klein["folder"]), text_encoders=str(dev["folder"]))
    with pytest.raises(ModelError, match=r"cannot serve flux1-dev\.safetensors: its text encoder and VAE are mistral3"):
        run(make_backend(paths), request)


def test_cli_gives_klein_its_few_steps_and_dev_its_distilled_guidance(klein, dev, tmp_path):
    assert (model_family(klein["folder"]), model_family(dev["folder"])) == ("flux2-klein", "flux2-dev")
    base = ["generate", "--prompt", "a fox", "--seed", "1", "--width", "64", "--height", "64", "--device", "cpu",
            "--no-preview", "--home", str(tmp_path / "home")]  # fmt: skip
    code, _, err = in_process([*base, "--model", str(klein["folder"]), "--out", str(tmp_path / "k.png")])
    assert code == 0, err
    request = read_image_metadata(tmp_path / "k.png").request
    assert (request.steps, request.cfg_scale) == (4, 1.0)
    code, _, err = in_process([*base, "--model", str(dev["folder"]), "--steps", "2", "--out", str(tmp_path / "d.png")])
    assert code == 0, err
    metadata = read_image_metadata(tmp_path / "d.png")
    assert ", Distilled CFG Scale: 4.0, " in metadata.raw["parameters"] and metadata.request.distilled_cfg_scale == 4.0
    expected = dev_expected(dev["folder"], request_for(dev["folder"], prompt="a fox", seed=1, steps=2,
                                                       distilled_cfg_scale=4.0))  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png").convert("RGB")), expected)


def test_klein_runs_in_fp8_layerwise_casting_close_to_full_precision(paths, klein):
    backend = make_backend(paths)
    full, _ = run(backend, request_for(klein["folder"], steps=2, cfg_scale=1.0, memory_mode="full"))
    fp8, _ = run(backend, request_for(klein["folder"], steps=2, cfg_scale=1.0, memory_mode="fp8"))
    assert backend.memory_mode == "fp8"
    assert backend._pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    difference = np.abs(pixels(fp8.images[0]).astype(int) - pixels(full.images[0]).astype(int))
    # The tolerance of Flux.1's fp8 test (tests/engine/test_dit_memory.py).
    assert 0 < difference.mean() < 1.5, difference.mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
@pytest.mark.parametrize("mode", ["offload", "group", "sequential", "fp8"])
@pytest.mark.parametrize("kind", ["klein", "dev"])
def test_each_offload_mode_runs_flux2_on_cuda(klein, dev, tmp_path, mode, kind):
    folder = (klein if kind == "klein" else dev)["folder"]
    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    full, _ = run(backend, request_for(folder, steps=2, cfg_scale=1.0, device="cuda", memory_mode="full"))
    other, _ = run(backend, request_for(folder, steps=2, cfg_scale=1.0, device="cuda", memory_mode=mode))
    assert backend.memory_mode == mode
    difference = np.abs(pixels(other.images[0]).astype(int) - pixels(full.images[0]).astype(int))
    assert difference.mean() < (1.5 if mode == "fp8" else 0.5)


def klein_edit_expected(folder, request, source, mask, **extra):
    pipe = Flux2KleinInpaintPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=request.prompt, image=source, mask_image=mask, strength=request.strength, width=64, height=64,
        num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
    ).images[0]  # fmt: skip
    return pixels(image)


def test_klein_img2img_and_inpaint_match_diffusers_inpainting_pipeline(paths, klein, tmp_path):
    rng = np.random.default_rng(3)
    source = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    source.save(tmp_path / "source.png")
    box = np.zeros((64, 64), np.uint8)
    box[16:40, 16:48] = 255
    Image.fromarray(box, "L").save(tmp_path / "mask.png")
    backend = make_backend(paths)
    # CFG 4 on a step-distilled folder: ignored, as the folder says, by the edit pipeline too.
    values = dict(steps=4, cfg_scale=4.0, init_image=str(tmp_path / "source.png"), strength=0.75, mask_blur=0)
    # Image-to-image: Klein's inpainting pipeline with everything masked.
    request = request_for(klein["folder"], **values)
    batch, steps = run(backend, request)
    everything = Image.new("L", (64, 64), 255)
    assert np.array_equal(pixels(batch.images[0]), klein_edit_expected(klein["folder"], request, source, everything))
    assert len(steps) == 3  # int(4 x 0.75) of the schedule
    request = request_for(klein["folder"], mask=str(tmp_path / "mask.png"), **values)
    batch, _ = run(backend, request)
    out = klein_edit_expected(klein["folder"], request, source, Image.fromarray(box, "L"))
    # Marble pastes the result back inside the mask only: outside it, the source's own pixels.
    assert np.array_equal(pixels(batch.images[0]), np.where(box[..., None] == 255, out, pixels(source)))


def test_klein_edits_read_one_reference_image_like_diffusers_image_reference(paths, klein, tmp_path):
    from desktop.engine.imaging import load_source

    source = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    source.save(tmp_path / "source.png")
    reference = tmp_path / "hat.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(reference)
    request = request_for(klein["folder"], steps=4, cfg_scale=1.0, init_image=str(tmp_path / "source.png"),
                          strength=0.75, reference_images=(str(reference),))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    everything = Image.new("L", (64, 64), 255)
    expected = klein_edit_expected(klein["folder"], request, source, everything, image_reference=load_source(reference))
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, klein_edit_expected(klein["folder"], request, source, everything))


def bare_dev(folder):
    pipe = Flux2Pipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_flux2_dev_image_to_image_and_inpainting(paths, dev, tmp_path):
    """diffusers' Flux2Pipeline edits by instruction from references only (Marble refused dev's edits before
    2026-12-07): Marble's own image to image and inpainting over it (families_flux2.dev_edit_class, flow_edit.py)."""
    from diffusers.utils.torch_utils import randn_tensor

    from desktop.engine.backends.families import sibling
    from desktop.engine.backends.families_flux2 import dev_edit_class

    pipe = bare_dev(dev["folder"])
    edit = sibling(pipe, dev_edit_class())
    source = Image.new("RGB", (96, 64), (200, 40, 40))
    call = dict(prompt="a cat", num_inference_steps=4, width=96, height=64, output_type="np", guidance_scale=4.0)
    # Strength 1 is text to image's picture; 0.5 runs the last half of the steps at the very sigmas text to image
    # reaches them (Flux.2's shift depends on the step count: the tail's two steps with a two-step shift would be
    # other sigmas) ...
    seen = check_the_tail_of_text_to_image(pipe, edit, call, source)
    # ... from the source noised to exactly the first of them, (1 - s) x0 + s noise: the bare pipeline run by hand
    # over that tail (its two unshifted sigmas, the job's four steps for the shift) from those latents.
    clean = edit._edit_encode(source, 96, 64, None)
    noise = randn_tensor((1, 16, 16, 24), generator=torch.Generator().manual_seed(7))
    by_hand = pipe(**call, sigmas=[0.5, 0.25], latents=(1 - seen[2]) * clean + seen[2] * noise,
                   generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    edited = edit(**call, image=source, strength=0.5, generator=torch.Generator().manual_seed(7)).images
    assert np.allclose(edited, by_hand, atol=1e-6)
    # The source's latents by hand: the VAE's mode, in 2x2 patches, normalised by its batch-norm statistics.
    assert torch.allclose(clean, normalised_vae_patches(edit, source, 96, 64, pipe.vae.config.batch_norm_eps),
                          atol=1e-6)  # fmt: skip
    # Inpainting leaves the source's latents outside the mask: the left 20 columns of pixels repaint the grid's
    # columns 0-4 (a cell is 4 pixels here). The pipeline gives back its tokens in row order.
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 20, 64))
    tokens = edit(**(call | {"output_type": "latent"}), image=source, mask_image=mask, strength=1.0,
                  generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    latents = tokens.transpose(1, 2).reshape(1, 16, 16, 24)
    assert torch.allclose(latents[..., 5:], clean[..., 5:], atol=1e-6)
    assert not torch.allclose(latents[..., :5], clean[..., :5], atol=1e-3)
    # Through Marble: image to image is that pipeline's picture.
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "source.png")
    request = request_for(dev["folder"], init_image=str(tmp_path / "source.png"), strength=0.6, steps=3,
                          distilled_cfg_scale=4.0, seed=43)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    expected = edit(prompt=request.prompt, num_inference_steps=3, width=64, height=64, guidance_scale=4.0,
                    image=Image.open(tmp_path / "source.png"), strength=0.6,
                    generator=torch.Generator().manual_seed(43)).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    # A reference picture still goes with the prompt, beside the source (the pipeline's own `image=`).
    Image.new("RGB", (64, 64), (20, 200, 60)).save(tmp_path / "reference.png")
    with_reference, _ = run(make_backend(paths), replace(request, reference_images=(str(tmp_path / "reference.png"),)))
    expected = edit(prompt=request.prompt, num_inference_steps=3, width=64, height=64, guidance_scale=4.0,
                    image=Image.open(tmp_path / "source.png"), strength=0.6,
                    references=[Image.open(tmp_path / "reference.png").convert("RGB")],
                    generator=torch.Generator().manual_seed(43)).images[0]  # fmt: skip
    assert np.array_equal(pixels(with_reference.images[0]), pixels(expected))
    assert not np.array_equal(pixels(with_reference.images[0]), pixels(batch.images[0]))


def test_a_reference_flux2_cannot_read_is_refused_naming_it(paths, dev, tmp_path):
    # Flux.2's pipelines refuse a reference under 64 pixels a side or longer than 8 times its width; their
    # ValueError came out of the middle of the job.
    for size, said in (((48, 64), "at least 64 pixels a side"), ((64, 600), "no more than 8 times as long")):
        Image.new("RGB", size, (20, 200, 60)).save(tmp_path / "small.png")
        request = request_for(dev["folder"], steps=1, reference_images=(str(tmp_path / "small.png"),))
        with pytest.raises(InvalidRequest, match=f"small.png is {size[0]}x{size[1]} pixels: .*{said}"):
            run(make_backend(paths), request)
    # Beside a dev source too (its edit hands them to the same pipeline's `image=`).
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "source.png")
    with pytest.raises(InvalidRequest, match="small.png is 64x600 pixels"):
        run(make_backend(paths), replace(request, init_image=str(tmp_path / "source.png"), strength=0.5))


def test_flux2_dev_hires_fix_with_a_latent_upscaler_interpolates_the_vaes_latents(paths, dev):
    """dev's first pass gives back its normalised patches packed into tokens: a latent upscaler interpolates the
    VAE's latents (un-normalised, the cells put back in place), as for ERNIE-Image, and the second pass (Marble's
    image to image, tested above) is handed them patched and normalised again. A pixel upscaler runs too."""
    from desktop.engine.backends.families import sibling
    from desktop.engine.backends.families_flux2 import dev_edit_class

    request = request_for(dev["folder"], steps=2, distilled_cfg_scale=4.0, hires_fix=True, hires_scale=1.5,
                          hires_steps=4, hires_denoise=0.5, hires_upscaler="Latent", width=96, seed=5,
                          negative_prompt="")  # fmt: skip
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (144, 96) and batch.notes == (), batch.notes
    assert [(step.step, step.total) for step in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # both passes
    pipe = bare_dev(dev["folder"])
    call = dict(prompt=request.prompt, guidance_scale=4.0)
    tokens = pipe(**call, num_inference_steps=2, width=96, height=64, output_type="latent",
                  generator=torch.Generator().manual_seed(5)).images  # fmt: skip
    grid = tokens.transpose(1, 2).reshape(1, 16, 16, 24)  # its tokens are its patch grid in row order
    upscaled, naive = latent_hires_by_hand(pipe, grid, pipe.vae.config.batch_norm_eps)
    edit = sibling(pipe, dev_edit_class())
    second = call | {"num_inference_steps": 4, "strength": 0.5, "width": 144, "height": 96}
    expected = edit(**second, image=upscaled, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    # The normalised patches themselves interpolated would be another picture: the check above can fail.
    other = edit(**second, image=naive, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert not np.array_equal(pixels(other), pixels(expected))
    lanczos, _ = run(make_backend(paths), replace(request, hires_upscaler="Lanczos"))
    assert lanczos.images[0].size == (144, 96) and lanczos.notes == ()
    assert not np.array_equal(pixels(lanczos.images[0]), pixels(batch.images[0]))


def test_a_chat_template_kept_by_an_older_processor_file_is_used(paths, dev, tmp_path):
    # A Pixtral processor saved in the older form keeps its chat template in chat_template.json.
    folder = tmp_path / "dev"
    shutil.copytree(dev["folder"], folder)
    template = (folder / "tokenizer" / "chat_template.jinja").read_text(encoding="utf-8")
    (folder / "tokenizer" / "chat_template.jinja").unlink()
    (folder / "tokenizer" / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    request = request_for(folder, steps=2, distilled_cfg_scale=4.0)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), dev_expected(dev["folder"], request))


@pytest.mark.parametrize(("layout", "fmt"), [("peft", "peft"), ("aitoolkit", "peft"), ("kohya", "kohya")])
def test_flux2_loras_are_told_from_flux1_ones_by_their_tensors(klein, tmp_path, layout, fmt):
    path = save_lora(lora_for(klein["transformer"], layout), tmp_path / "l.safetensors")
    info = inspect_lora(read_safetensors_header(path), "l")
    assert (info.family, info.format, info.label) == ("flux2", fmt, "Flux.2")
    # Flux.1's LoRAs in the same layouts stay Flux.1 (its fused layers are 7 and 4 widths, not 9 and 6).
    flux1 = build_tiny_flux().transformer
    bfl = flux_to_bfl(flux1.state_dict())
    fused = {k: v for k, v in bfl.items() if k.endswith((".linear1.weight", "mlp.0.weight"))}
    aitoolkit = {f"diffusion_model.{k.removesuffix('.weight')}.lora_{part}.weight": torch.zeros(shape)
                 for k, v in fused.items()
                 for part, shape in (("A", (4, v.shape[1])), ("B", (v.shape[0], 4)))}  # fmt: skip
    for tensors in (peft_lora(flux1), flux_kohya_lora(flux1), aitoolkit):
        header = read_safetensors_header(save_lora(tensors, tmp_path / "f.safetensors"))
        assert inspect_lora(header, "f").family == "flux"


@pytest.mark.parametrize("layout", ["aitoolkit", "kohya"])
def test_a_flux2_lora_tag_matches_bare_diffusers_and_changes_the_image(paths, klein, layout):
    tensors = lora_for(klein["transformer"], layout)
    save_lora(tensors, paths.loras / "style.safetensors")
    request = request_for(klein["folder"], prompt="a red circle <lora:style:0.8>", steps=2, cfg_scale=1.0)
    batch, _ = run(make_backend(paths), request)
    pipe = Flux2KleinPipeline.from_pretrained(str(klein["folder"]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights({k: v.clone() for k, v in tensors.items()}, adapter_name="x")
    pipe.set_adapters(["x"], [0.8])
    image = pipe(
        prompt="a red circle", num_inference_steps=2, width=64, height=64, guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(image))
    assert not np.array_equal(pixels(image), klein_expected(klein["folder"], replace(request, prompt="a red circle")))


def test_a_flux1_lora_is_refused_on_flux2(paths, klein):
    save_lora(peft_lora(build_tiny_flux().transformer), paths.loras / "f1.safetensors")
    request = request_for(klein["folder"], prompt="a fox <lora:f1:1>", steps=2, cfg_scale=1.0)
    with pytest.raises(ModelError, match="it is a LoRA for Flux.1 models, and klein is Flux.2"):
        run(make_backend(paths), request)


def test_a_klein_9b_file_with_a_narrower_text_encoder_is_refused_before_loading(paths, klein, tmp_path):
    path = tmp_path / "klein9b.safetensors"
    save_file(bfl_flux2(12288), str(path))  # detected as Klein 9B by its text width; never loaded
    request = request_for(path, model_config=str(klein["folder"]), text_encoders=str(klein["folder"]))
    with pytest.raises(ModelError, match=r"cannot serve klein9b\.safetensors: its text encoder is 16 wide, but this "
                       r"transformer reads 3 x 4096"):  # fmt: skip
        run(make_backend(paths), request)
