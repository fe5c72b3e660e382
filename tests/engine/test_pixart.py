"""PixArt-Σ and PixArt-α: a tiny random model as a diffusers folder, as a transformer-only file in its makers' names
(bare and under ComfyUI's prefix) and in diffusers', and as a GGUF; detected from its tensors (the release too) and run
offline through Marble, pixel-identical to bare diffusers with the same seed, its text encoder and VAE from a folder or
from the libraries; image to image and inpainting by Marble's own edit over its pipeline."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.dit import variant_choices
from desktop.engine.library.native_size import family_defaults, model_family
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import cancel_at_step_two, make_backend, pixels, request_for, run
from tests.support.flow_edit_checks import (
    check_edits_through_marble,
    check_inpainting_keeps_the_source,
    check_schedule_tail,
)
from tests.support.tiny_dit import save_gguf
from tests.support.tiny_pixart import build_tiny_pixart, original_names
from tests.support.tiny_qwen_zimage import save_transformer_file

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def pixart(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pixart")
    pipe = build_tiny_pixart()
    folder = tmp / "PixArt-Sigma-XL-2-1024-MS"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    alpha = build_tiny_pixart(seed=1, alpha=True)
    alpha_folder = tmp / "PixArt-XL-2-1024-MS"
    alpha.save_pretrained(str(alpha_folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    alpha_state = dict(alpha.transformer.state_dict())
    return {
        "pipe": pipe,
        "folder": folder,
        "alpha": alpha_folder,
        "state": state,
        "alpha_state": alpha_state,
        "comfy": save_transformer_file(original_names(dict(state)), tmp / "pixart.safetensors", prefix=PREFIX),
        "original": save_transformer_file(original_names(dict(state)), tmp / "PixArt-Sigma-XL-2-1024-MS.safetensors"),
        "diffusers": save_transformer_file(state, tmp / "pixart-diffusers.safetensors"),
        "alpha_original": save_transformer_file(original_names(dict(alpha_state), caption_tokens=120),
                                                tmp / "PixArt-XL-2-1024-MS.safetensors"),  # fmt: skip
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipeline(folder, transformer=None, alpha=False):
    parts = {"transformer": transformer} if transformer is not None else {}
    cls = PixArtAlphaPipeline if alpha else PixArtSigmaPipeline
    pipe = cls.from_pretrained(str(folder), local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(folder, request, transformer=None, alpha=False):
    pipe = bare_pipeline(folder, transformer, alpha)
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        width=request.width, height=request.height, guidance_scale=request.cfg_scale, use_resolution_binning=False,
        clean_caption=False, max_sequence_length=120 if alpha else 300,
        generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0])  # fmt: skip


def test_a_sigma_folder_is_detected_and_matches_bare_diffusers(paths, pixart):
    arch = detect_model(pixart["folder"])
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.config_name, arch.label) == (
        "pixart", "sigma", "diffusers", "pixart-sigma", "PixArt Sigma")  # fmt: skip
    assert model_family(pixart["folder"]) == "pixart-sigma"
    assert family_defaults("pixart-sigma") == {"steps": 20, "cfg_scale": 4.5}
    assert variant_choices("pixart") == {}  # its tensors or its folder say the release
    request = request_for(pixart["folder"], steps=3, cfg_scale=4.5)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(pixart["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # Its pipeline reports steps through its old callback: Marble's previews come every step all the same.
    assert len(steps) == 3 and all(step.preview is not None for step in steps)
    assert not batch.notes
    other, _ = run(make_backend(paths), replace(request, negative_prompt="dark"))
    assert not np.array_equal(pixels(other.images[0]), expected)
    # The size asked is drawn (diffusers' pipeline would snap 96x64 to a trained aspect ratio and resize back).
    wide = replace(request, width=96, height=64)
    drawn, _ = run(make_backend(paths), wide)
    assert drawn.images[0].size == (96, 64)
    assert np.array_equal(pixels(drawn.images[0]), bare_image(pixart["folder"], wide))


def test_an_alpha_folder_runs_alphas_pipeline(paths, pixart, monkeypatch):
    from desktop.engine.backends import diffusers_backend

    arch = detect_model(pixart["alpha"])
    assert (arch.dit.variant, arch.config_name, arch.label) == ("alpha", "pixart-alpha", "PixArt Alpha")
    assert model_family(pixart["alpha"]) == "pixart-alpha"
    request = request_for(pixart["alpha"], steps=3, cfg_scale=4.5)
    tables = []  # the colour table each preview was drawn with
    drawn = diffusers_backend.latents_to_rgb
    monkeypatch.setattr(diffusers_backend, "latents_to_rgb",
                        lambda x, table: tables.append(table.name) or drawn(x, table))  # fmt: skip
    batch, steps = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(pixart["alpha"], request, alpha=True))
    # Alpha draws SD 1.5's latents: its previews read SD 1.5's colours, Sigma's SDXL's.
    assert len(steps) == 3 and tables == ["pixart-alpha"] * 3
    tables.clear()
    run(make_backend(paths), replace(request, model=str(pixart["folder"])))
    assert tables == ["pixart"] * 3


@pytest.mark.parametrize(("layout", "naming"), [("comfy", "original"), ("original", "original"),
                                                ("diffusers", "diffusers")])  # fmt: skip
def test_transformer_files_match_with_the_folders_encoders(paths, pixart, layout, naming):
    arch = detect_model(pixart[layout])
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.dit.blocks) == ("pixart", "sigma", naming, (2, 0))
    assert arch.dit.needs_components
    request = request_for(pixart[layout], steps=3, cfg_scale=4.5, model_config=str(pixart["folder"]),
                          text_encoders=str(pixart["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(pixart["folder"], request))


def test_an_alpha_file_is_told_by_its_caption_table_and_size_embedders(paths, pixart, tmp_path):
    arch = detect_model(pixart["alpha_original"])
    assert (arch.dit.variant, arch.label, arch.config_name) == ("alpha", "PixArt Alpha", "pixart-alpha")
    # Alpha's 512-pixel model has no size embedders: its 120-token caption table tells it.
    plain = {key: value for key, value in original_names(dict(pixart["state"]), caption_tokens=120).items()}
    assert detect_model(save_transformer_file(plain, tmp_path / "alpha512.safetensors")).dit.variant == "alpha"
    # In diffusers' names the size embedders tell it (no caption table there).
    assert detect_model(save_transformer_file(pixart["alpha_state"], tmp_path / "a.safetensors")).dit.variant == "alpha"
    request = request_for(pixart["alpha_original"], steps=3, cfg_scale=4.5, model_config=str(pixart["alpha"]),
                          text_encoders=str(pixart["alpha"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(pixart["alpha"], request, alpha=True))


def test_a_pixart_gguf_is_dequantised_at_load(paths, pixart, tmp_path):
    from diffusers.models.model_loading_utils import load_gguf_checkpoint
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    path = save_gguf(dict(pixart["state"]), tmp_path / "pixart-Q8_0.gguf", arch="pixart")
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.quantization) == ("pixart", "diffusers", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=4.5, model_config=str(pixart["folder"]),
                          text_encoders=str(pixart["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    # The bare side: the GGUF's tensors dequantised by diffusers' own function into the folder's model.
    state = {key: dequantize_gguf_tensor(value).float() if hasattr(value, "quant_type") else value.float()
             for key, value in load_gguf_checkpoint(str(path)).items()}  # fmt: skip
    transformer = PixArtTransformer2DModel.from_pretrained(str(pixart["folder"]), subfolder="transformer")
    transformer.load_state_dict(state)
    expected = bare_image(pixart["folder"], request, transformer)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(pixart["folder"], request))  # the quantisation shows


def test_damaged_files_and_missing_components_are_refused_by_name(paths, pixart, tmp_path):
    original = original_names(dict(pixart["state"]))
    middle = save_transformer_file(original, tmp_path / "my-pixart.safetensors", prefix=PREFIX, drop="blocks.0")
    with pytest.raises(ModelError, match=r"my-pixart\.safetensors looks like PixArt but blocks\.0 is missing"):
        detect_model(middle)
    cut = {key: value for key, value in original.items() if key != "t_block.1.weight"}
    with pytest.raises(ModelError, match=r"cut\.safetensors looks like PixArt but t_block\.1\.weight is missing"):
        detect_model(save_transformer_file(cut, tmp_path / "cut.safetensors"))
    folder = {"model_config": str(pixart["folder"]), "text_encoders": str(pixart["folder"])}
    last = save_transformer_file(original, tmp_path / "short.safetensors", drop="blocks.1")
    with pytest.raises(ModelError, match=r"short\.safetensors has 1 blocks but the PixArt Sigma configuration has 2"):
        run(make_backend(paths), request_for(last, **folder))
    odd = save_transformer_file(original | {"blocks.0.attn.extra.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(ModelError, match=r"odd\.safetensors: its PixArt Sigma transformer does not load .*'blocks\.0\."
                                         r"attn\.extra\.weight'"):  # fmt: skip
        run(make_backend(paths), request_for(odd, **folder))
    extra = save_transformer_file(pixart["state"] | {"transformer_blocks.1.attn1.extra.weight": torch.zeros(2)},
                                  tmp_path / "extra.safetensors")  # fmt: skip
    with pytest.raises(ModelError, match=r"extra\.safetensors: .*holds 'transformer_blocks\.1\.attn1\.extra\.weight', "
                                         r"which PixArt's transformer has not"):  # fmt: skip
        run(make_backend(paths), request_for(extra, **folder))
    lost = {key: value for key, value in pixart["state"].items() if key != "transformer_blocks.1.attn2.to_k.bias"}
    with pytest.raises(ModelError, match=r"'transformer_blocks\.1\.attn2\.to_k\.bias' is missing"):
        run(make_backend(paths), request_for(save_transformer_file(lost, tmp_path / "lost.safetensors"), **folder))
    wider = dict(pixart["state"])
    wider["proj_out.weight"] = torch.zeros(40, 96)
    with pytest.raises(ModelError, match=r"'proj_out\.weight' is \[40, 96\] where the configuration's model has "
                                         r"\[32, 96\]: a PixArt of other sizes"):  # fmt: skip
        run(make_backend(paths), request_for(save_transformer_file(wider, tmp_path / "wide.safetensors"), **folder))
    with pytest.raises(ModelError, match=r"needs its text encoder \(T5-XXL\) and VAE: .*PixArt-Sigma-XL-2-1024-MS"):
        run(make_backend(paths), request_for(pixart["original"], model_config=str(pixart["folder"])))


def test_a_folder_that_cannot_serve_it_is_refused_before_the_load(paths, pixart, tmp_path):
    folder = tmp_path / "not-pixart"
    shutil.copytree(pixart["folder"], folder)
    shutil.rmtree(folder / "vae")
    index = folder / "model_index.json"
    index.write_text(index.read_text(encoding="utf-8").replace('"T5EncoderModel"', '"CLIPTextModel"'), encoding="utf-8")
    with pytest.raises(ModelError, match=r"not-pixart cannot serve .*: it has no T5 text encoder .*; no VAE"):
        run(make_backend(paths), request_for(pixart["original"], model_config=str(pixart["folder"]),
                                             text_encoders=str(folder)))  # fmt: skip


def test_the_encoder_and_vae_files_run_from_the_libraries(paths, pixart, tmp_path):
    from safetensors.torch import save_file

    from desktop.engine.library.index import Library

    pipe = pixart["pipe"]
    files = {"t5xxl": {key: value for key, value in pipe.text_encoder.state_dict().items()
                       if key != "encoder.embed_tokens.weight"},  # tied to `shared`, which files keep
             "sdxl_vae": pipe.vae.state_dict()}  # fmt: skip
    library = Library(paths)
    for name, state in files.items():
        save_file({key: value.contiguous() for key, value in state.items()}, str(tmp_path / f"{name}.safetensors"))
        library.import_path(tmp_path / f"{name}.safetensors", "vae" if name == "sdxl_vae" else "encoder")
    # The tiny model's configs without weights or tokenizer: the shipped T5 tokenizer serves.
    configs = tmp_path / "configs"
    shutil.copytree(pixart["folder"], configs, ignore=shutil.ignore_patterns("tokenizer*", "*.safetensors"))
    request = request_for(pixart["comfy"], steps=3, cfg_scale=4.5, model_config=str(configs), text_encoders="t5xxl",
                          vae="sdxl_vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    expected = bare_image(pixart["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # A whole model's folder as --config: its own tokenizer serves the library encoder (the pipeline lacked one).
    whole, _ = run(make_backend(paths), replace(request, model_config=str(pixart["folder"])))
    assert np.array_equal(pixels(whole.images[0]), expected)


def test_the_shipped_configs_are_the_published_models():
    import json

    from accelerate import init_empty_weights

    from desktop.engine.resources import Resources

    configs = Resources.default().configs
    for name, scale, conditions in (("pixart-sigma", 0.13025, False), ("pixart-alpha", 0.18215, True)):
        config = json.loads((configs / name / "transformer" / "config.json").read_text(encoding="utf-8"))
        with init_empty_weights():
            model = PixArtTransformer2DModel.from_config(config)
        # PixArt-XL/2: 28 blocks 1152 wide reading T5-XXL's 4096; Alpha's 1024-pixel model embeds the size too.
        count = sum(parameter.numel() for parameter in model.parameters())
        assert count == (611_349_152 if conditions else 610_856_096), count
        vae = json.loads((configs / name / "vae" / "config.json").read_text(encoding="utf-8"))
        assert vae["scaling_factor"] == scale  # Sigma: SDXL's VAE; Alpha: SD 1.5's
        encoder = json.loads((configs / name / "text_encoder" / "config.json").read_text(encoding="utf-8"))
        assert (encoder["d_model"], encoder["num_layers"]) == (4096, 24)


@pytest.fixture(scope="module")
def edits(pixart):
    from desktop.engine.backends.families_pixart import edit_class, pipeline_class

    pipe = pixart["pipe"]
    parts = {key: value for key, value in pipe.components.items()}
    plain = pipeline_class("sigma")(**parts)
    edit = edit_class("sigma")(**parts)
    for one in (plain, edit):
        one.set_progress_bar_config(disable=True)
    return plain, edit


def test_image_to_image_runs_the_tail_of_the_text_to_image_schedule(edits):
    plain, edit = edits
    check_schedule_tail(plain, edit, 4.5)


def test_inpainting_leaves_the_sources_latents_outside_the_mask(edits):
    _, edit = edits
    check_inpainting_keeps_the_source(edit, guidance_scale=4.5)


def test_edits_and_the_hires_fix_run_through_marble(paths, pixart, edits, tmp_path):
    check_edits_through_marble(paths, pixart["folder"], edits[1], 4.5, tmp_path)


def test_image_to_image_noises_the_source_as_its_scheduler_does(pixart, edits):
    # Independent of Marble's own noising: the source's latents noised by the scheduler's add_noise at the first step of
    # the schedule's tail, then bare diffusers' pipeline over that tail (its `timesteps=`).
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    from tests.support.flow_edit_checks import SOURCE_COLOUR, source_latents

    _, edit = edits
    source = Image.new("RGB", (64, 64), SOURCE_COLOUR)
    call = dict(prompt="a cat", negative_prompt="", num_inference_steps=4, width=64, height=64, output_type="np",
                guidance_scale=4.5)  # fmt: skip
    got = edit(**call, image=source, strength=0.5, generator=torch.Generator().manual_seed(7)).images
    bare = bare_pipeline(pixart["folder"])
    bare.scheduler.set_timesteps(4)
    tail = bare.scheduler.timesteps[2:]
    clean = source_latents(edit, source)
    noised = bare.scheduler.add_noise(clean, randn_tensor(clean.shape, generator=torch.Generator().manual_seed(7)),
                                      tail[:1])  # fmt: skip
    del call["num_inference_steps"]
    expected = bare(**call, timesteps=tail.tolist(), latents=noised, use_resolution_binning=False,
                    clean_caption=False).images  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=1e-5)  # float rounding apart


def test_alphas_512_pixel_model_loads_without_size_embedders(paths, pixart, tmp_path):
    # Told Alpha by its 120-token caption table; Alpha's shipped config embeds the size, the file does not: the file's
    # tensors decide.
    path = save_transformer_file(original_names(dict(pixart["state"]), caption_tokens=120),
                                 tmp_path / "PixArt-XL-2-512x512.safetensors")  # fmt: skip
    assert detect_model(path).dit.variant == "alpha"
    request = request_for(path, steps=3, cfg_scale=4.5, model_config=str(pixart["alpha"]),
                          text_encoders=str(pixart["alpha"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    config = dict(PixArtTransformer2DModel.load_config(str(pixart["alpha"]), subfolder="transformer"))
    transformer = PixArtTransformer2DModel.from_config(config | {"use_additional_conditions": False})
    transformer.load_state_dict(pixart["state"])
    assert np.array_equal(pixels(batch.images[0]), bare_image(pixart["alpha"], request, transformer, alpha=True))


def test_alphas_512_pixel_model_in_diffusers_names_follows_the_alpha_folder_lending_its_parts(paths, pixart, tmp_path):
    # diffusers' names carry no caption table and Alpha 512 no size embedders: the file reads as Sigma, and an Alpha
    # folder as --text-encoders says it is Alpha (its pipeline, its 120 tokens, its config).
    path = save_transformer_file(dict(pixart["state"]), tmp_path / "pixart-512-diffusers.safetensors")
    assert (detect_model(path).dit.variant, detect_model(path).dit.layout) == ("sigma", "diffusers")
    request = request_for(path, steps=3, cfg_scale=4.5, text_encoders=str(pixart["alpha"]),
                          model_config=str(pixart["alpha"]))  # the tiny model's sizes  # fmt: skip
    tables = []
    from desktop.engine.backends import diffusers_backend

    drawn = diffusers_backend.latents_to_rgb
    diffusers_backend.latents_to_rgb = lambda x, table: tables.append(table.name) or drawn(x, table)
    try:
        batch, _ = run(make_backend(paths), request)
    finally:
        diffusers_backend.latents_to_rgb = drawn
    config = dict(PixArtTransformer2DModel.load_config(str(pixart["alpha"]), subfolder="transformer"))
    transformer = PixArtTransformer2DModel.from_config(config | {"use_additional_conditions": False})
    transformer.load_state_dict(pixart["state"])
    assert np.array_equal(pixels(batch.images[0]), bare_image(pixart["alpha"], request, transformer, alpha=True))
    assert set(tables) == {"pixart-alpha"}
    # With Sigma's folder it stays Sigma.
    sigma, _ = run(make_backend(paths), replace(request, text_encoders=str(pixart["folder"]),
                                                model_config=str(pixart["folder"])))  # fmt: skip
    assert np.array_equal(pixels(sigma.images[0]), bare_image(pixart["folder"], request))


def test_alphas_512_pixel_model_in_diffusers_names_marked_alpha_runs_with_the_libraries(paths, pixart, tmp_path):
    # With library encoders no folder can say it is Alpha: the user marks the file (`marble models variant NAME alpha`,
    # the Library's Variant…), and it runs Alpha's pipeline, its 120 tokens, its config and SD 1.5's VAE.
    from safetensors.torch import save_file

    from desktop.engine.library.index import Library, record_variant_choices

    library = Library(paths)
    source = save_transformer_file(dict(pixart["state"]), tmp_path / "pixart-512-diffusers.safetensors")
    record = library.import_path(source, "model", "pixart-512")
    assert record_variant_choices(record) == {"": "PixArt (as the file says)", "alpha": "PixArt Alpha"}
    assert record_variant_choices(library.import_path(pixart["alpha_original"], "model", "told")) == {}
    alpha = PixArtAlphaPipeline.from_pretrained(str(pixart["alpha"]), local_files_only=True)
    files = {"t5xxl": {key: value for key, value in alpha.text_encoder.state_dict().items()
                       if key != "encoder.embed_tokens.weight"}, "sd15_vae": alpha.vae.state_dict()}  # fmt: skip
    for name, state in files.items():
        save_file({key: value.contiguous() for key, value in state.items()}, str(tmp_path / f"{name}.safetensors"))
        library.import_path(tmp_path / f"{name}.safetensors", "vae" if name == "sd15_vae" else "encoder")
    configs = tmp_path / "configs"  # the tiny model's sizes, without weights or tokenizer
    shutil.copytree(pixart["alpha"], configs, ignore=shutil.ignore_patterns("tokenizer*", "*.safetensors"))

    assert library.choose_variant("pixart-512", "alpha").architecture == "PixArt Alpha"
    assert model_family(library.path_of(record), "alpha") == "pixart-alpha"
    long = " ".join(["a red fox in the snow"] * 30)  # 241 T5 tokens: Alpha reads 120 of them, Sigma all
    request = request_for("pixart-512", prompt=long, steps=3, cfg_scale=4.5, model_config=str(configs),
                          text_encoders="t5xxl", vae="sd15_vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert any("PixArt Alpha's T5 encoder, which reads the first 120" in note for note in batch.notes), batch.notes
    config = dict(PixArtTransformer2DModel.load_config(str(pixart["alpha"]), subfolder="transformer"))
    transformer = PixArtTransformer2DModel.from_config(config | {"use_additional_conditions": False})
    transformer.load_state_dict(pixart["state"])
    assert np.array_equal(pixels(batch.images[0]), bare_image(pixart["alpha"], request, transformer, alpha=True))


def test_each_release_reads_its_own_prompt_length(paths, pixart):
    long = " ".join(["a red fox in the snow"] * 30)  # 241 T5 tokens: over Alpha's 120, under Sigma's 300
    alpha, _ = run(make_backend(paths), request_for(pixart["alpha"], prompt=long, steps=2, cfg_scale=4.5))
    assert [note for note in alpha.notes if "tokens long" in note] == [
        "The prompt is 241 tokens long for PixArt Alpha's T5 encoder, which reads the first 120: the rest had no "
        "effect. Shorten it, or put what matters first."]  # fmt: skip
    sigma, _ = run(make_backend(paths), request_for(pixart["folder"], prompt=long, steps=2, cfg_scale=4.5))
    assert not sigma.notes
    # Its PNG names the sampler a "default" job ran: its own DPM-Solver++ (second order) is A1111's DPM++ 2M.
    assert sigma.sampler_used == "DPM++ 2M"


def test_its_previews_read_its_autoencoders_latent_colours():
    from desktop.engine.backends.preview import colour_family, latents_to_rgb

    latents = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)
    sigma, alpha = colour_family("pixart", "sigma"), colour_family("pixart", "alpha")
    assert np.array_equal(latents_to_rgb(latents, sigma), latents_to_rgb(latents, "sdxl"))
    assert not np.array_equal(latents_to_rgb(latents, sigma), latents_to_rgb(latents, "sd1"))
    assert np.array_equal(latents_to_rgb(latents, alpha), latents_to_rgb(latents, "sd1"))
    assert colour_family("flux", "dev") == "flux"


def test_control_units_are_refused_by_name(paths, pixart, tmp_path):
    from PIL import Image

    from desktop.engine.errors import InvalidRequest
    from desktop.engine.library.native_size import takes_controls
    from desktop.engine.request import ControlUnit

    assert not takes_controls("pixart-sigma")  # the window offers none
    Image.new("RGB", (64, 64), (90, 30, 200)).save(tmp_path / "edges.png")
    unit = ControlUnit(model="canny", image=str(tmp_path / "edges.png"))
    with pytest.raises(InvalidRequest, match=r"PixArt Sigma has none yet\. Remove the 1 control unit"):
        run(make_backend(paths), request_for(pixart["folder"], steps=2, controls=(unit,)))


def _pixart_lora(naming):
    """A rank-4 LoRA on the tiny model's attentions and feed-forwards, in diffusers' names under `transformer.`, and
    the same as the other namings PixArt LoRAs come in."""
    from tests.support.tiny_dit_loras import lora_on, trainer_form

    layers = ("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
    tensors = lora_on(build_tiny_pixart().transformer, "transformer_blocks.", layers)
    if naming == "trainer":  # diffusers' PixArt trainer: PEFT's names under the UNet's prefix
        return tensors, {key.replace("transformer.", "unet.", 1): value for key, value in tensors.items()}
    native = {key.replace("transformer.", "diffusion_model.", 1): value for key, value in tensors.items()}
    if naming.startswith("onetrainer"):
        return tensors, _onetrainer_form(native, naming)
    written = {"diffusers": tensors, "ai-toolkit": native, "musubi": trainer_form(native, kohya=False),
               "kohya": trainer_form(native, kohya=True)}[naming]  # fmt: skip
    return tensors, written


# The tiny LoRA's layers in PixArt's makers' names, as OneTrainer's OMI files split the fused ones.
_OMI = {"attn1.to_q": "attn.qkv.0", "attn1.to_v": "attn.qkv.2", "attn2.to_k": "cross_attn.kv_linear.0",
        "attn2.to_out.0": "cross_attn.proj", "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2"}  # fmt: skip


def _onetrainer_form(native, naming):
    """OneTrainer's three forms of a LoRA (lora_down / lora_up with alphas): diffusers' modules under
    `lora_transformer.`, the same flattened (its legacy files), or the makers' modules under `transformer.` (OMI)."""
    from tests.support.tiny_dit_loras import trainer_form

    if naming == "onetrainer-legacy":
        flat = trainer_form(native, kohya=True)
        return {"lora_transformer_" + key.removeprefix("lora_unet_"): value for key, value in flat.items()}
    dotted = trainer_form(native, kohya=False)
    if naming == "onetrainer":
        return {"lora_transformer." + key.removeprefix("diffusion_model."): value for key, value in dotted.items()}
    out = {}
    for key, value in dotted.items():
        module, _, part = key.removeprefix("diffusion_model.").partition(".lora_")
        module, part = (module, "lora_" + part) if part else key.removeprefix("diffusion_model.").rsplit(".", 1)
        _, index, layer = module.split(".", 2)
        out[f"transformer.blocks.{index}.{_OMI[layer]}.{part}"] = value
    return out


@pytest.mark.parametrize("naming", ["diffusers", "trainer", "ai-toolkit", "musubi", "kohya", "onetrainer",
                                    "onetrainer-legacy", "onetrainer-omi"])  # fmt: skip
def test_a_pixart_lora_changes_the_picture_as_its_merged_weights_do(paths, pixart, naming):
    # diffusers has no LoRA loader for PixArt: Marble loads it through PEFT onto the transformer. The reference is
    # independent of both: the LoRA's products added into a bare copy of the weights (within float rounding).
    from safetensors.torch import save_file

    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.lora import inspect_lora

    reference, written = _pixart_lora(naming)
    save_file(written, str(paths.loras / "style.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "style.safetensors"), "style")
    if naming != "kohya":
        assert (info.family, info.label) == ("pixart", "PixArt")
    if naming.startswith("onetrainer"):
        assert info.transformer_width == 96 and info.format == ("kohya" if naming.endswith("legacy") else "diffusers")
    request = request_for(pixart["folder"], prompt="a red circle <lora:style:0.8>", steps=3, cfg_scale=4.5)
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    merged = PixArtTransformer2DModel.from_pretrained(str(pixart["folder"]), subfolder="transformer")
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for key, down in reference.items():
            if key.endswith(".lora_A.weight"):
                module = modules[key.removeprefix("transformer.").removesuffix(".lora_A.weight")]
                module.weight += 0.8 * reference[key.replace(".lora_A.", ".lora_B.")] @ down
    expected = bare_image(pixart["folder"], replace(request, prompt="a red circle"), merged)
    got = pixels(batch.images[0]).astype(int)
    assert np.abs(got - expected).max() <= 2, np.abs(got - expected).max()
    plain = bare_image(pixart["folder"], replace(request, prompt="a red circle"))
    assert np.abs(plain.astype(int) - expected).mean() > 2  # the LoRA shows
    # Without the tag the same backend gives the plain picture again.
    again, _ = run(make_backend(paths), replace(request, prompt="a red circle"))
    assert np.array_equal(pixels(again.images[0]), plain)


def test_a_onetrainer_lora_with_t5_layers_is_refused_by_name(paths, pixart):
    # OneTrainer may train T5 too: Marble applies PixArt LoRAs to the transformer, and says so rather than drop them.
    from safetensors.torch import save_file

    _, written = _pixart_lora("onetrainer-legacy")
    written |= {"lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.zeros(4, 32),
                "lora_te_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight": torch.zeros(32, 4)}  # fmt: skip
    save_file(written, str(paths.loras / "both.safetensors"))
    request = request_for(pixart["folder"], prompt="a red circle <lora:both:1>", steps=2, cfg_scale=4.5)
    with pytest.raises(ModelError, match=r"'both'.*its layer 'lora_te_encoder_block_0_layer_0_SelfAttention_q' is not "
                                         r"the transformer's"):  # fmt: skip
        run(make_backend(paths), request)


def test_an_attention_lora_reads_as_sanas_and_runs_but_a_sana_feed_forward_is_refused(paths, pixart):
    from safetensors.torch import save_file

    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.lora import inspect_lora
    from tests.support.tiny_dit_loras import lora_on

    transformer = build_tiny_pixart().transformer
    attention = lora_on(transformer, "transformer_blocks.", ("attn1.to_q", "attn2.to_k"))
    save_file(attention, str(paths.loras / "eyes.safetensors"))
    assert inspect_lora(read_safetensors_header(paths.loras / "eyes.safetensors"), "eyes").family == "sana"
    request = request_for(pixart["folder"], prompt="a red circle <lora:eyes:1>", steps=2, cfg_scale=4.5)
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["eyes"]
    sana = attention | {"transformer.transformer_blocks.0.ff.conv_inverted.lora_A.weight": torch.zeros(4, 96, 1, 1),
                        "transformer.transformer_blocks.0.ff.conv_inverted.lora_B.weight": torch.zeros(8, 4, 1, 1)}
    save_file(sana, str(paths.loras / "sana.safetensors"))
    with pytest.raises(ModelError, match=r"The LoRA 'sana' could not be applied to this model: its layer "
                                         r"'transformer_blocks\.0\.ff\.conv_inverted' is Sana's"):  # fmt: skip
        run(make_backend(paths), replace(request, prompt="a red circle <lora:sana:1>"))


def _scheduler_for(sampler, folder):
    """The scheduler of an A1111 sampler over the folder's schedule, as the sampler table says (schedulers.py)."""
    import diffusers

    from desktop.engine.backends.schedulers import SAMPLERS

    spec = SAMPLERS[sampler]
    base = diffusers.DPMSolverMultistepScheduler.from_pretrained(str(folder), subfolder="scheduler")
    return getattr(diffusers, spec.scheduler_class).from_config(base.config, **dict(spec.overrides))


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras", "DDIM", "PLMS"])
def test_a1111_samplers_run_it_as_bare_diffusers_does(paths, pixart, sampler):
    # A noise-prediction model over SD's kind of schedule: A1111's samplers serve it (the flow-matching DiTs ignore
    # them), nothing said; the default is its own DPM-Solver++.
    request = request_for(pixart["folder"], steps=3, cfg_scale=4.5, sampler=sampler, seed=5)
    batch, _ = run(make_backend(paths), request)
    assert not batch.notes
    pipe = bare_pipeline(pixart["folder"])
    pipe.scheduler = _scheduler_for(sampler, pixart["folder"])
    expected = pixels(pipe(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=3,
                           width=64, height=64, guidance_scale=4.5, use_resolution_binning=False, clean_caption=False,
                           generator=torch.Generator("cpu").manual_seed(5)).images[0])  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(pixart["folder"], request))  # not the default sampler's picture


def test_an_edit_under_euler_is_noised_and_scaled_as_diffusers_does(pixart):
    # Euler holds its latents as x0 + sigma noise and the pipeline multiplies what it is handed by its first sigma:
    # the source noised by the scheduler's add_noise over the same tail, handed over divided by that.
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    from tests.support.flow_edit_checks import SOURCE_COLOUR, source_latents

    edit = _edit_with("Euler", pixart)
    source = Image.new("RGB", (64, 64), SOURCE_COLOUR)
    call = dict(prompt="a cat", negative_prompt="", width=64, height=64, output_type="np", guidance_scale=4.5)
    got = edit(**call, num_inference_steps=4, image=source, strength=0.5,
               generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    bare = bare_pipeline(pixart["folder"])
    bare.scheduler = _scheduler_for("Euler", pixart["folder"])
    bare.scheduler.set_timesteps(4)
    tail = bare.scheduler.timesteps[2:]
    bare.scheduler.set_timesteps(timesteps=tail.tolist())
    clean = source_latents(edit, source)
    noise = randn_tensor(clean.shape, generator=torch.Generator().manual_seed(7))
    noised = bare.scheduler.add_noise(clean, noise, tail[:1]) / bare.scheduler.init_noise_sigma
    expected = bare(**call, timesteps=tail.tolist(), latents=noised, use_resolution_binning=False,
                    clean_caption=False).images  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _edit_with(sampler, pixart):
    from desktop.engine.backends.families_pixart import edit_class

    parts = dict(pixart["pipe"].components) | {"scheduler": _scheduler_for(sampler, pixart["folder"])}
    edit = edit_class("sigma")(**parts)
    edit.set_progress_bar_config(disable=True)
    return edit


def test_a_second_order_sampler_starts_between_its_pairs(pixart):
    # Heun's timesteps come in pairs after the first: an edit starts at diffusers' image-to-image rule's step,
    # t_start times the scheduler's order, never inside a pair.
    from PIL import Image

    edit = _edit_with("Heun", pixart)
    ran: list[list[float]] = []
    indices: list[int] = []

    def step_end(pipe, i, t, tensors):
        ran.append(pipe.scheduler.timesteps.tolist())
        indices.append(i)
        return {}

    edit(prompt="a cat", image=Image.new("RGB", (64, 64), (200, 40, 40)), strength=0.6, num_inference_steps=4, width=64,
         height=64, guidance_scale=4.5, generator=torch.Generator().manual_seed(7), output_type="np",
         callback_on_step_end=step_end)  # fmt: skip
    probe = _scheduler_for("Heun", pixart["folder"])
    probe.set_timesteps(4)
    # The last 60% of 4 steps: from step int(4 - 2.4) = 1 (the flow pipelines' rule), i.e. pass 2 of Heun's 7.
    assert probe.order == 2 and ran[0] == probe.timesteps[1 * probe.order :].tolist()
    # Called after whole steps, with the loop's index (a pair's first pass is Heun's first evaluation).
    assert indices == [1, 3, 4]


def test_the_hires_fix_runs_its_own_sampler(paths, pixart):
    first = request_for(pixart["folder"], steps=2, cfg_scale=4.5, hires_fix=True, hires_scale=1.5, hires_steps=2,
                        hires_upscaler="Lanczos", seed=3)  # fmt: skip
    plain, _ = run(make_backend(paths), first)
    euler, _ = run(make_backend(paths), replace(first, hires_sampler="Euler"))
    assert not plain.notes and not euler.notes
    assert euler.images[0].size == plain.images[0].size == (96, 96)
    assert not np.array_equal(pixels(euler.images[0]), pixels(plain.images[0]))


def test_every_sampler_inpaints_keeping_the_source_outside_the_mask(pixart):
    # Under each A1111 sampler the blend reads the schedule at the loop's index (a second-order sampler's old callback
    # skips passes): after the last step the latents outside the mask are the source's own, inside they are not.
    from desktop.engine.backends.schedulers import SAMPLERS

    for sampler in SAMPLERS:
        check_inpainting_keeps_the_source(_edit_with(sampler, pixart), guidance_scale=4.5)


def test_a_job_is_cancelled_at_the_step_asked(paths, pixart):
    # Through the old callback its pipelines report steps by: cancelling stops the job after the step it came in.
    backend = make_backend(paths)
    request = request_for(pixart["folder"], steps=5, cfg_scale=4.5)
    cancel_at_step_two(backend, request)
    # The next job runs whole, as bare diffusers does.
    batch, _ = run(backend, request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(pixart["folder"], request))
