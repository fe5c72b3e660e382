"""FLUX.3 (BFL's third generation, base and distilled): a tiny random model as a diffusers folder, as transformer
files in BFL's names (bare and ComfyUI-prefixed) and diffusers', and as a GGUF; detected from its tensors and run
offline through Marble's own pipeline (backends/families_flux3.py), which gives the pixels of diffusers' modular
FLUX.3 pipeline for the same seed."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import Flux3AutoBlocks, Flux3DistilledAutoBlocks
from diffusers.modular_pipelines.flux3.image_processor import Flux3ImageProcessor
from PIL import Image

from desktop.engine.errors import Cancelled, ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.lora import inspect_lora
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.flow_edit_checks import (
    check_edits_through_marble,
    check_the_tail_of_text_to_image,
    normalised_vae_patches,
)
from tests.support.tiny_dit import save_gguf
from tests.support.tiny_dit_loras import lora_on, trainer_form
from tests.support.tiny_flux3 import LATENT_CHANNELS, build_tiny_flux3, save_folder, to_bfl
from tests.support.tiny_qwen_zimage import save_transformer_file

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def flux3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux3")
    pipe = build_tiny_flux3()
    distilled = build_tiny_flux3(seed=1, distilled=True)
    state = dict(pipe.transformer.state_dict())
    return {
        "pipe": pipe,
        "distilled": distilled,
        "folder": save_folder(pipe, tmp / "FLUX.3-base"),
        "distilled_folder": save_folder(distilled, tmp / "FLUX.3-distilled"),
        "comfy": save_transformer_file(to_bfl(state), tmp / "flux3-comfy.safetensors", prefix=PREFIX),
        "bfl": save_transformer_file(to_bfl(state), tmp / "flux3-bfl.safetensors"),
        "diffusers": save_transformer_file(state, tmp / "flux3-diffusers.safetensors"),
        "distilled_bfl": save_transformer_file(to_bfl(dict(distilled.transformer.state_dict())),
                                               tmp / "flux3-distilled.safetensors"),  # fmt: skip
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def modular(pipe, guidance: float):
    """diffusers' modular FLUX.3 pipeline over `pipe`'s parts, its prompt rewriter taken out (Marble never runs it)."""
    blocks = copy.deepcopy(Flux3DistilledAutoBlocks() if pipe.distilled else Flux3AutoBlocks())
    blocks.sub_blocks.pop("prompt_upsampler")
    reference = blocks.init_pipeline()
    reference.update_components(
        transformer=pipe.transformer, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        image_processor=Flux3ImageProcessor(vae_scale_factor=pipe.vae_scale_factor,
                                            vae_latent_channels=LATENT_CHANNELS),
    )  # fmt: skip
    if not pipe.distilled:
        reference.update_components(guider=reference.guider.new(guidance_scale=guidance))
    return reference


@pytest.mark.parametrize("kind", ["pipe", "distilled"])
def test_marbles_pipeline_gives_the_modular_pipelines_pixels(flux3, kind):
    pipe = flux3[kind]
    call = dict(prompt="a red fox in the snow", height=32, width=48, num_inference_steps=3, output_type="np")
    extra = {} if pipe.distilled else {"negative_prompt": "blurry"}
    reference = modular(pipe, 4.0)(**call, **extra, generator=torch.Generator().manual_seed(7), output="images")
    ours = pipe(**call, **extra, guidance_scale=4.0, generator=torch.Generator().manual_seed(7)).images
    assert ours.shape == (1, 32, 48, 3)
    assert np.array_equal(ours, reference)
    # Two pictures from two generators: each its own seed's (a batch's sums round a hair apart).
    pair = pipe(**call, **extra, guidance_scale=4.0, num_images_per_prompt=2,
                generator=[torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]).images  # fmt: skip
    assert np.allclose(pair[0], ours[0], atol=1e-5) and not np.allclose(pair[1], ours[0], atol=1e-2)


def test_the_prompt_window_and_the_guidance(flux3):
    pipe = flux3["pipe"]
    # The window is whole 80 tokens, its padding included (the transformer attends to it), at most the limit.
    words = pipe.tokenizer.tokenizer
    for prompt in ("a cat", "a cat " * 20, "a cat " * 30):
        text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)  # fmt: skip
        length = len(words(text)["input_ids"])
        assert pipe.encode_prompt(prompt).shape == (1, -(-length // 80) * 80, 128)
    assert pipe.encode_prompt("a cat " * 30, max_sequence_length=100).shape == (1, 100, 128)
    # The padding is read: the same prompt in a wider window is another encoding of its tokens.
    short, wide = pipe.encode_prompt("a cat"), pipe.encode_prompt("a cat", max_sequence_length=8192)
    assert torch.equal(short, wide)
    call = dict(prompt="a cat", height=32, width=32, num_inference_steps=2, output_type="np")

    def picture(negative: str, guidance: float) -> np.ndarray:
        return pipe(**call, negative_prompt=negative, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(3)).images  # fmt: skip

    plain, guided = picture("dark", 1.0), picture("dark", 4.0)
    assert not np.array_equal(plain, guided) and not np.array_equal(guided, picture("light", 4.0))
    # CFG 1 runs without the negative prompt at all: one pass a step, not two.
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        assert np.array_equal(plain, picture("light", 1.0)) and len(calls) == 2
        picture("light", 1.5)
        assert len(calls) == 2 + 4
    finally:
        hook.remove()


@pytest.mark.parametrize("layout", ["comfy", "bfl", "diffusers"])
def test_files_are_detected_from_their_tensors(flux3, layout):
    arch = detect_model(flux3[layout])
    expected_layout = "diffusers" if layout == "diffusers" else "bfl"
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.dit.blocks, arch.label) == (
        "flux3", "", expected_layout, (1, 2), "FLUX.3")  # fmt: skip
    assert arch.dit.needs_components
    distilled = detect_model(flux3["distilled_bfl"])
    assert (distilled.dit.variant, distilled.label, distilled.config_name) == ("distilled", "FLUX.3 distilled",
                                                                               "flux3-distilled")  # fmt: skip
    assert detect_model(flux3["folder"]).label == "FLUX.3"
    # A folder's transformer config says the flow map, or its modular pipeline's name does.
    assert detect_model(flux3["distilled_folder"]).label == "FLUX.3 distilled"
    from desktop.engine.library.dit import detect_dit_folder

    assert detect_dit_folder({}, {"flow_map": False}, "Flux3DistilledModularPipeline") == ("flux3", "distilled")
    assert detect_dit_folder({}, {"flow_map": False}, "Flux3ModularPipeline") == ("flux3", "")


def test_the_bfl_names_convert_to_the_models_own():
    from desktop.engine.backends.families_flux3 import diffusers_state, settings
    from tests.support.tiny_flux3 import tiny_transformer

    for distilled in (False, True):
        model = tiny_transformer(distilled=distilled, layers=2, single=3, heads=3)
        state = dict(model.state_dict())
        back = diffusers_state(to_bfl(state))
        assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
        # The config the tensors decide is the model's own.
        found = settings(to_bfl(state))
        assert {key: found[key] for key in found} == {key: (tuple(value) if isinstance(value, list) else value)
                                                      for key, value in model.config.items() if key in found}


def bare_image(pipe, request, **extra) -> np.ndarray:
    arguments = {} if pipe.distilled else {"negative_prompt": request.negative_prompt or "",
                                           "guidance_scale": request.cfg_scale}  # fmt: skip
    return pixels(pipe(
        prompt=request.prompt, num_inference_steps=request.steps, width=request.width, height=request.height,
        generator=torch.Generator("cpu").manual_seed(request.seed), **arguments, **extra,
    ).images[0])  # fmt: skip


def test_a_folder_runs_through_marble_with_previews(paths, flux3):
    request = request_for(flux3["folder"], steps=3, cfg_scale=4.0, width=96)
    batch, steps = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(flux3["pipe"], request))
    assert [(step.step, step.total) for step in steps] == [(1, 3), (2, 3), (3, 3)]
    # The VAE's latent grid, unpatchified (the tiny VAE's is half the picture's sides, the real one's an eighth).
    assert all(step.preview is not None for step in steps) and steps[-1].preview.shape[:2] == (64 // 2, 96 // 2)
    assert batch.notes == ()
    # The real model's 32 channels take Flux.2's published table (the same VAE): nothing to fit on a first job.
    from desktop.engine.backends import preview

    assert preview.has_published_table("flux3")
    latents = np.random.default_rng(1).standard_normal((32, 4, 6)).astype(np.float32)
    assert np.array_equal(preview.latents_to_rgb(latents, "flux3"), preview.latents_to_rgb(latents, "flux2"))


@pytest.mark.parametrize("layout", ["comfy", "diffusers"])
def test_transformer_files_match_with_the_folders_components(paths, flux3, layout):
    request = request_for(flux3[layout], steps=2, cfg_scale=3.0, text_encoders=str(flux3["folder"]))
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(flux3["pipe"], request))


def test_the_distilled_model_runs_without_cfg(paths, flux3):
    request = request_for(flux3["distilled_bfl"], steps=2, cfg_scale=4.0, negative_prompt="blurry",
                          text_encoders=str(flux3["distilled_folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(flux3["distilled"], request))
    assert batch.notes == ("FLUX.3 distilled runs without CFG, so without a negative prompt; it was ignored.",)


def test_a_gguf_transformer(paths, flux3, tmp_path):
    path = save_gguf(to_bfl(dict(flux3["pipe"].transformer.state_dict())), tmp_path / "flux3-Q8_0.gguf", arch="flux3")
    arch = detect_model(path)
    assert (arch.family, arch.dit.quantization, arch.dit.layout) == ("flux3", "Q8_0", "bfl")
    request = request_for(path, steps=2, cfg_scale=3.0, text_encoders=str(flux3["folder"]))
    batch, _ = run(make_backend(paths), request)
    plain = bare_image(flux3["pipe"], request)
    # Quantised: near the float model's picture, not equal to it.
    difference = np.abs(pixels(batch.images[0]).astype(int) - plain.astype(int))
    assert 0 < difference.max() and difference.mean() < 8


def test_cancel_stops_the_job(paths, flux3):
    from desktop.engine.jobs import CancelToken

    token = CancelToken()
    seen = []

    def on_step(info):
        seen.append(info.step)
        token.cancel()

    backend = make_backend(paths)
    request = request_for(flux3["folder"], steps=4, cfg_scale=3.0)
    backend.load(request)
    with pytest.raises(Cancelled):
        backend.generate(request, 0, on_step, token)
    assert seen == [1]


def test_damaged_files_and_wrong_components_are_refused_by_name(paths, flux3, tmp_path):
    state = to_bfl(dict(flux3["pipe"].transformer.state_dict()))
    gap = save_transformer_file(state, tmp_path / "my-flux3.safetensors", prefix=PREFIX, drop="single_blocks.0")
    with pytest.raises(ModelError, match=r"my-flux3\.safetensors looks like FLUX\.3 but single_blocks\.0 is missing"):
        detect_model(gap)
    text = save_transformer_file(state, tmp_path / "no-text.safetensors", drop="txt_mode_blocks.0")
    with pytest.raises(ModelError, match=r"no-text\.safetensors looks like FLUX\.3 but has no txt_mode_blocks"):
        detect_model(text)
    headless = save_transformer_file({k: v for k, v in state.items() if not k.startswith("txt_in.")},
                                     tmp_path / "headless.safetensors")  # fmt: skip
    with pytest.raises(ModelError, match=r"headless\.safetensors looks like FLUX\.3 but txt_in\.weight is missing"):
        detect_model(headless)
    with pytest.raises(ModelError, match=r"Qwen3-VL text encoder, its tokenizer and its VAE"):
        run(make_backend(paths), request_for(flux3["bfl"]))
    # A FLUX.3 folder of another width (its encoder 16 wide, the transformer reading 8 x 24).
    from tests.support.tiny_flux3 import tiny_transformer

    wide = tiny_transformer(text_width=24)
    wide_state = dict(wide.state_dict())
    del wide
    other = save_transformer_file(wide_state, tmp_path / "wide.safetensors")
    with pytest.raises(ModelError, match=r"its text encoder is 16 wide, but the FLUX\.3 transformer reads 24"):
        run(make_backend(paths), request_for(other, text_encoders=str(flux3["folder"])))


def test_image_to_image_and_inpainting(paths, flux3, tmp_path):
    from desktop.engine.backends.families import own_edit_pipeline

    pipe = flux3["pipe"]
    edit = own_edit_pipeline(pipe, "flux3")
    source = Image.new("RGB", (96, 64), (200, 40, 40))
    call = dict(prompt="a cat", num_inference_steps=4, width=96, height=64, output_type="np", guidance_scale=3.0)
    check_the_tail_of_text_to_image(pipe, edit, call, source)
    # Inpainting leaves the source's latents outside the mask: the left 20 columns repaint latent columns 0-4 (the
    # tiny VAE's patches are 4 pixels).
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 20, 64))
    tokens = edit(**(call | {"output_type": "latent"}), image=source, mask_image=mask, strength=1.0,
                  generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    latents = tokens.transpose(1, 2).reshape(1, 4 * LATENT_CHANNELS, 16, 24)
    clean = normalised_vae_patches(edit, source, 96, 64, edit.vae.config.batch_norm_eps)
    assert torch.allclose(latents[..., 5:], clean[..., 5:], atol=1e-5)
    assert not torch.allclose(latents[..., :5], clean[..., :5], atol=1e-3)
    # Through Marble: image to image is that pipeline's picture; inpainting and the hires fix (latent and pixel) run.
    check_edits_through_marble(paths, flux3["folder"], edit, 3.0, tmp_path)


def test_a_latent_hires_fix_interpolates_the_vaes_latents(paths, flux3):
    """The first pass's tokens are the VAE's normalised patches in row order: a latent upscaler interpolates the VAE's
    latents (un-normalised, the cells put back in place), and the second pass (Marble's image to image, tested above)
    is handed them patched and normalised again."""
    from desktop.engine.backends.families import own_edit_pipeline
    from tests.support.flow_edit_checks import latent_hires_by_hand

    request = request_for(flux3["folder"], steps=2, cfg_scale=3.0, negative_prompt="", hires_fix=True, hires_scale=1.5,
                          hires_steps=4, hires_denoise=0.5, hires_upscaler="Latent", width=96, seed=5)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    pipe = flux3["pipe"]
    call = dict(prompt=request.prompt, negative_prompt="", guidance_scale=3.0)
    tokens = pipe(**call, num_inference_steps=2, width=96, height=64, output_type="latent",
                  generator=torch.Generator().manual_seed(5)).images  # fmt: skip
    grid = tokens.transpose(1, 2).reshape(1, 4 * LATENT_CHANNELS, 16, 24)
    upscaled, naive = latent_hires_by_hand(pipe, grid, pipe.vae.config.batch_norm_eps)
    edit = own_edit_pipeline(pipe, "flux3")
    second = call | {"num_inference_steps": 4, "strength": 0.5, "width": 144, "height": 96}
    expected = edit(**second, image=upscaled, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    other = edit(**second, image=naive, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert not np.array_equal(pixels(other), pixels(expected))


def test_a_file_as_wide_as_the_released_model_with_fewer_blocks_is_incomplete():
    from desktop.engine.backends.families_flux3 import check_blocks

    shipped = {"num_attention_heads": 24, "attention_head_dim": 128, "num_layers": 5, "num_single_layers": 28}
    check_blocks(dict(shipped), shipped, label="FLUX.3", name="flux3.safetensors")
    with pytest.raises(ModelError, match=r"flux3\.safetensors has 27 single blocks but the FLUX\.3 configuration"):
        check_blocks(shipped | {"num_single_layers": 27}, shipped, label="FLUX.3", name="flux3.safetensors")
    with pytest.raises(ModelError, match=r"has 4 picture blocks but the FLUX\.3 configuration has 5"):
        check_blocks(shipped | {"num_layers": 4}, shipped, label="FLUX.3", name="flux3.safetensors")
    # Another width is another model, its own tensors its config.
    check_blocks(shipped | {"num_attention_heads": 2, "num_layers": 1}, shipped, label="FLUX.3", name="tiny")


def test_a_lora_changes_the_picture(paths, flux3, tmp_path):
    from safetensors.torch import save_file

    transformer = flux3["pipe"].transformer
    tensors = lora_on(transformer, "mode_blocks.image", ("attn.to_q", "attn.to_k", "attn.to_v"))
    tensors |= lora_on(transformer, "single_transformer_blocks", ("ff.linear_in",), seed=4)
    loras = paths.loras
    save_file(tensors, str(loras / "fox-style.safetensors"))
    from desktop.engine.library.checkpoint import read_safetensors_header

    info = inspect_lora(read_safetensors_header(loras / "fox-style.safetensors"))
    assert info.family == "flux3"
    # A LoRA of the single blocks alone is told by their separate feed-forward (AuraFlow's single blocks say
    # `ff.linear_1`, Flux.2's have none), in either naming.
    single = {key: value for key, value in tensors.items() if ".single_transformer_blocks." in key}
    save_file(single, str(tmp_path / "single.safetensors"))
    assert inspect_lora(read_safetensors_header(tmp_path / "single.safetensors")).family == "flux3"
    request = request_for(flux3["folder"], steps=2, cfg_scale=3.0)
    plain, _ = run(make_backend(paths), request)
    with_lora, _ = run(make_backend(paths), replace(request, prompt=request.prompt + " <lora:fox-style:1>"))
    assert not np.array_equal(pixels(plain.images[0]), pixels(with_lora.images[0]))
    assert with_lora.loras and with_lora.loras[0].name == "fox-style"
    # The same LoRA in BFL's names (ai-toolkit's and ComfyUI's form: `diffusion_model.` + the original modules).
    bfl = {}
    for key, value in tensors.items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        (renamed,) = to_bfl({module + ".weight": value})
        bfl[f"diffusion_model.{renamed.removesuffix('.weight')}.lora_{kind}"] = value
    assert any(".q_proj." in key for key in bfl) and any(".mlp_in." in key for key in bfl)
    save_file(bfl, str(loras / "fox-style-bfl.safetensors"))
    assert inspect_lora(read_safetensors_header(loras / "fox-style-bfl.safetensors")).family == "flux3"
    with_bfl, _ = run(make_backend(paths), replace(request, prompt=request.prompt + " <lora:fox-style-bfl:1>"))
    assert np.array_equal(pixels(with_bfl.images[0]), pixels(with_lora.images[0]))
    width = inspect_lora(read_safetensors_header(loras / "fox-style.safetensors")).transformer_width
    assert width == transformer.config.num_attention_heads * transformer.config.attention_head_dim
    assert inspect_lora(read_safetensors_header(loras / "fox-style-bfl.safetensors")).transformer_width == width
    # Trainers' forms, which diffusers' FLUX.3 loader does not read (renamed by lora_forms): kohya's flattened names of
    # BFL's modules and of diffusers', and BFL's names with lora_down / lora_up and an alpha (its scale folded in).
    diffusers_named = {"diffusion_model." + key.removeprefix("transformer."): value for key, value in tensors.items()}
    forms = {"kohya-bfl": trainer_form(bfl, kohya=True), "kohya-diffusers": trainer_form(diffusers_named, kohya=True),
             "alphas-bfl": trainer_form(bfl, kohya=False)}  # fmt: skip
    assert "lora_unet_content_mode_blocks_image_0_q_proj.lora_down.weight" in forms["kohya-bfl"]
    assert "lora_unet_single_transformer_blocks_0_ff_linear_in.alpha" in forms["kohya-diffusers"]
    for name, form in forms.items():
        save_file(form, str(loras / f"{name}.safetensors"))
        info = inspect_lora(read_safetensors_header(loras / f"{name}.safetensors"))
        assert info.family == "flux3" and (info.format == "kohya") == name.startswith("kohya"), name
        assert info.transformer_width == width, name  # what the fit check compares with the model's
        batch, _ = run(make_backend(paths), replace(request, prompt=request.prompt + f" <lora:{name}:1>"))
        assert np.array_equal(pixels(batch.images[0]), pixels(with_lora.images[0])), name
    # Names the model has no module for (a LoRA of a deeper FLUX.3) are refused, not silently left out.
    deeper = {key.replace("_image_0_", "_image_99_"): value for key, value in forms["kohya-bfl"].items()
              if "_image_0_" in key}  # fmt: skip
    save_file(deeper, str(loras / "deeper.safetensors"))
    with pytest.raises(ModelError, match=r"The LoRA 'deeper' could not be applied to this model: Target modules "
                                         r".*content_mode_blocks_image_99_q_proj.* not found"):  # fmt: skip
        run(make_backend(paths), replace(request, prompt=request.prompt + " <lora:deeper:1>"))
    # Text-encoder layers (Qwen3-VL's, sorted first in kohya's names) do not give the transformer's width.
    text = "lora_te_model_layers_0_self_attn_q_proj"
    with_text = forms["kohya-bfl"] | {f"{text}.lora_down.weight": torch.zeros(4, 2 * width),
                                      f"{text}.lora_up.weight": torch.zeros(2 * width, 4)}  # fmt: skip
    save_file(with_text, str(tmp_path / "with-text.safetensors"))
    assert inspect_lora(read_safetensors_header(tmp_path / "with-text.safetensors")).transformer_width == width
    # A LoRA of a wider FLUX.3 is refused by its width before diffusers is asked to load it.
    wider = {key: torch.cat([value, value], dim=1) if key.endswith("lora_down.weight") else value
             for key, value in forms["kohya-bfl"].items()}  # fmt: skip
    save_file(wider, str(loras / "wider.safetensors"))
    with pytest.raises(ModelError, match=rf"The LoRA 'wider' does not fit the selected model: its transformer layers "
                                         rf"have width {2 * width}, .*'s have {width}"):  # fmt: skip
        run(make_backend(paths), replace(request, prompt=request.prompt + " <lora:wider:1>"))
    # kohya's names of the single blocks alone are FLUX.3's (Flux.1's there say `linear1`), in either naming.
    for name in ("kohya-bfl", "kohya-diffusers"):
        single = {key: value for key, value in forms[name].items() if "single_" in key}
        save_file(single, str(tmp_path / f"{name}-single.safetensors"))
        assert inspect_lora(read_safetensors_header(tmp_path / f"{name}-single.safetensors")).family == "flux3"


def test_the_shipped_configs(flux3):
    from accelerate import init_empty_weights

    from desktop.engine.backends.families import transformer_class
    from desktop.engine.resources import Resources

    cls = transformer_class("flux3")
    for name, flow_map in (("flux3", False), ("flux3-distilled", True)):
        folder = Resources.default().config_folder(name)
        config = cls.load_config(str(folder), subfolder="transformer")
        with init_empty_weights():
            model = cls.from_config(config)
        # diffusers' class defaults (5 picture, text and reference blocks, 28 single blocks, 3072 wide).
        assert sum(p.numel() for p in model.parameters()) == (5_548_681_984 if flow_map else 5_538_458_368)
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        assert (scheduler["shift"], scheduler["use_dynamic_shifting"]) == (6.93, False)


def test_a_file_runs_with_a_qwen3_vl_and_the_flux2_vae_from_the_library(flux3, tmp_path):
    """ComfyUI's Qwen3-VL file (its language model read alone) and BFL's Flux.2 VAE file from the libraries, with
    Marble's own Qwen tokenizer (or the folder's): the folder's picture."""
    from safetensors.torch import save_file

    from desktop.engine.library.index import Library
    from tests.support.tiny_flux2 import flux2_vae_to_bfl
    from tests.support.tiny_krea2 import comfy_qwen3_vl

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    pipe = flux3["pipe"]
    save_file(comfy_qwen3_vl(pipe.text_encoder.model), str(tmp_path / "qwen3vl_4b.safetensors"))
    save_file(flux2_vae_to_bfl(pipe.vae), str(tmp_path / "flux2-vae.safetensors"))
    library = Library(paths)
    record = library.import_path(tmp_path / "qwen3vl_4b.safetensors", "encoder")
    library.import_path(tmp_path / "flux2-vae.safetensors", "vae")
    assert record.family == "qwen3vl"
    from desktop.engine.library.encoder import fits_model  # what the window offers a FLUX.3 model

    assert fits_model("qwen3vl", "flux3") and fits_model("qwen3vl", "flux3-distilled")
    assert not fits_model("qwen3", "flux3") and not fits_model("mistral3", "flux3")
    # The config folder says the tiny encoder's sizes (Marble ships Qwen3-VL 4B's); the tokenizer is the folder's.
    request = request_for(flux3["comfy"], steps=2, cfg_scale=3.0, model_config=str(flux3["folder"]),
                          text_encoders="qwen3vl_4b", vae="flux2-vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(pipe, request))
    with pytest.raises(ModelError, match=r"choose its VAE too .*the Flux\.2 VAE, flux2-vae\.safetensors"):
        run(make_backend(paths), replace(request, vae=""))


@pytest.mark.parametrize("count", [1, 2])
def test_reference_pictures_give_the_modular_pipelines_pixels(flux3, count):
    """FLUX.3's editing: references read beside the noise through their own blocks (one kept whole and padded, two
    each cropped), the size given, as Marble gives the job's."""
    pipe = flux3["pipe"]
    rng = np.random.default_rng(4)
    pictures = [Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)),
                Image.fromarray(rng.integers(0, 255, (48, 32, 3), dtype=np.uint8))][:count]  # fmt: skip
    call = dict(prompt="the fox from the picture in the snow", height=32, width=48, num_inference_steps=2,
                output_type="np", negative_prompt="")  # fmt: skip
    reference = modular(pipe, 3.0)
    reference.update_components(image_processor=Flux3ImageProcessor(vae_scale_factor=pipe.vae_scale_factor * 2,
                                                                     vae_latent_channels=LATENT_CHANNELS))  # fmt: skip
    expected = reference(**call, image=pictures, generator=torch.Generator().manual_seed(7), output="images")
    ours = pipe(**call, image=pictures, guidance_scale=3.0, generator=torch.Generator().manual_seed(7)).images
    assert np.array_equal(ours, expected)
    plain = pipe(**call, guidance_scale=3.0, generator=torch.Generator().manual_seed(7)).images
    assert not np.array_equal(ours, plain)


def test_references_through_marble(paths, flux3, tmp_path):
    from desktop.engine.library.dit import reference_image_limit

    # Up to 10, as diffusers' FLUX.3 blocks take (the request, the window and the backend ask this one rule).
    assert reference_image_limit(detect_model(flux3["folder"]).dit) == 10
    assert reference_image_limit(detect_model(flux3["distilled_bfl"]).dit) == 10
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    request = request_for(flux3["folder"], steps=2, cfg_scale=3.0, reference_images=(str(tmp_path / "ref.png"),))
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(flux3["pipe"], request,
                                                              image=[Image.open(tmp_path / "ref.png")]))  # fmt: skip
    # With a source too (image to image): the references go with the prompt.
    from desktop.engine.backends.families import own_edit_pipeline

    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "source.png")
    edit_request = replace(request, init_image=str(tmp_path / "source.png"), strength=0.6)
    edited, _ = run(make_backend(paths), edit_request)
    edit = own_edit_pipeline(flux3["pipe"], "flux3")
    expected = pixels(edit(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=2,
                           width=64, height=64, guidance_scale=3.0, image=Image.open(tmp_path / "source.png"),
                           strength=0.6, references=[Image.open(tmp_path / "ref.png")],
                           generator=torch.Generator().manual_seed(request.seed)).images[0])  # fmt: skip
    assert np.array_equal(pixels(edited.images[0]), expected)
    without = pixels(edit(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=2,
                          width=64, height=64, guidance_scale=3.0, image=Image.open(tmp_path / "source.png"),
                          strength=0.6, generator=torch.Generator().manual_seed(request.seed)).images[0])  # fmt: skip
    assert not np.array_equal(without, expected)


def test_a_modular_pipelines_folder_runs(paths, flux3, tmp_path):
    """A folder diffusers' modular FLUX.3 pipeline saved holds `modular_model_index.json` only (each entry
    [library, class, spec]): it is found in the library, detected and run as a folder with model_index.json is."""
    import shutil

    from desktop.engine.library.catalog import ModelCatalog

    folder = paths.models / "FLUX.3-modular"
    shutil.copytree(flux3["folder"], folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    (folder / "model_index.json").unlink()
    modular = {"_class_name": "Flux3ModularPipeline", "_blocks_class_name": "Flux3AutoBlocks",
               "_diffusers_version": "0.42.1"} | {
        part: [*entry, {"repo": str(folder), "subfolder": part, "type_hint": entry}]
        for part, entry in index.items() if not part.startswith("_")}  # fmt: skip
    (folder / "modular_model_index.json").write_text(json.dumps(modular), encoding="utf-8")
    arch = detect_model(folder)
    assert (arch.family, arch.label, arch.dit.layout) == ("flux3", "FLUX.3", "diffusers")
    assert "FLUX.3-modular" in ModelCatalog(paths.models).names()
    request = request_for("FLUX.3-modular", steps=2, cfg_scale=3.0)
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(flux3["pipe"], request))


def test_an_fp8_file_stays_fp8_and_computes_as_diffusers_layerwise_casting_does(paths, flux3, tmp_path):
    from diffusers import Flux3Transformer2DModel

    from desktop.engine.backends.families_flux3 import pipeline_class
    from tests.engine.test_fp8_files import fp8_file

    state = dict(flux3["pipe"].transformer.state_dict())
    path = fp8_file({PREFIX + k: v for k, v in to_bfl(state).items()}, tmp_path / "flux3-fp8.safetensors",
                    "float8_e4m3fn")  # fmt: skip
    assert detect_model(path).dit.fp8_storage == "float8_e4m3fn"
    backend = make_backend(paths)
    request = request_for(path, steps=2, cfg_scale=3.0, text_encoders=str(flux3["folder"]))
    batch, _ = run(backend, request)
    assert backend._pipe.transformer.single_transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    # diffusers' own loading of the same fp8 weights with the same layer-wise casting: the same pixels.
    bare_path = fp8_file(state, tmp_path / "diffusers-fp8.safetensors", "float8_e4m3fn")
    transformer = Flux3Transformer2DModel.from_single_file(
        str(bare_path), config=str(flux3["folder"]), subfolder="transformer", local_files_only=True,
        dtype=torch.float32,
    )  # fmt: skip
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    pipe = flux3["pipe"]
    bare = pipeline_class()(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                            tokenizer=pipe.tokenizer, transformer=transformer)  # fmt: skip
    got = pixels(batch.images[0])
    assert np.array_equal(got, bare_image(bare, request))
    full = bare_image(pipe, request)
    assert 0 < np.abs(got.astype(float) - full.astype(float)).mean() < 4


def test_the_command_line_gives_each_kind_its_defaults_and_the_png_its_recipe(flux3, tmp_path):
    """`marble generate` with no --steps or --cfg: the base model's 50 steps at CFG 3.5, the distilled model's 16
    without CFG; the picture is the pipeline's for the recipe the PNG records."""
    from desktop.engine.library.native_size import family_defaults, model_family
    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    assert (model_family(flux3["folder"]), model_family(flux3["distilled_bfl"])) == ("flux3", "flux3-distilled")
    assert family_defaults("flux3") == {"steps": 50, "cfg_scale": 3.5}
    assert family_defaults("flux3-distilled") == {"steps": 16, "cfg_scale": 1.0}
    base = ["generate", "--prompt", "a fox", "--seed", "1", "--width", "64", "--height", "64", "--device", "cpu",
            "--no-preview", "--home", str(tmp_path / "home")]  # fmt: skip
    out = tmp_path / "distilled.png"
    code, _, err = in_process([*base, "--model", str(flux3["distilled_bfl"]), "--text-encoders",
                               str(flux3["distilled_folder"]), "--negative", "", "--out", str(out)])  # fmt: skip
    assert code == 0, err
    recorded = read_image_metadata(out).request
    assert (recorded.steps, recorded.cfg_scale) == (16, 1.0)
    with Image.open(out) as image:
        assert np.array_equal(pixels(image), bare_image(flux3["distilled"], recorded))
    out = tmp_path / "base.png"
    code, _, err = in_process([*base, "--model", str(flux3["folder"]), "--steps", "2", "--out", str(out)])
    assert code == 0, err
    recorded = read_image_metadata(out).request
    assert (recorded.steps, recorded.cfg_scale) == (2, 3.5)
    with Image.open(out) as image:
        assert np.array_equal(pixels(image), bare_image(flux3["pipe"], recorded))
