"""Flux.1 and SD3: tiny random models in each layout, detected from their tensors and run offline through
Marble, pixel-identical to bare diffusers with the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig, StableDiffusion3Pipeline

from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import (
    build_tiny_flux,
    build_tiny_sd3,
    config_folder,
    flux_to_bfl,
    save_bfl_file,
    save_gguf,
    save_pipeline,
)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux")
    pipe = build_tiny_flux()
    return {
        "pipe": pipe,
        "folder": save_pipeline(pipe, tmp / "flux"),
        "config": config_folder(pipe, tmp / "config"),
        # ComfyUI's prefix on BFL names, under a name that says nothing true.
        "bfl": save_bfl_file(pipe, tmp / "sdxl-model.safetensors", prefix="model.diffusion_model."),
        "gguf": save_gguf(flux_to_bfl(pipe.transformer.state_dict()), tmp / "flux-Q8_0.gguf"),
        "gguf_diffusers": save_gguf(dict(pipe.transformer.state_dict()), tmp / "diffusers-names.gguf"),
        "tmp": tmp,
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def flux_request(model, flux, **changes):
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, model_config=str(flux["config"]))
    return request_for(model, **(values | changes))


def bare_flux(folder, transformer=None):
    extra = {"transformer": transformer} if transformer is not None else {}
    pipe = FluxPipeline.from_pretrained(
        str(folder), local_files_only=True, **shipped_tokenizers(Resources.default(), folder, "flux"), **extra
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(pipe, request, **extra):
    return pixels(
        pipe(
            prompt=request.prompt, num_inference_steps=request.steps, width=request.width, height=request.height,
            generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
        ).images[0]
    )  # fmt: skip


def test_flux_folder_is_detected_and_matches_bare_diffusers(paths, flux):
    arch = detect_model(flux["folder"])
    assert (arch.family, arch.dit.variant, arch.dit.layout) == ("flux", "dev", "diffusers")
    request = flux_request(flux["folder"], flux)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(bare_flux(flux["folder"]), request, guidance_scale=3.5, max_sequence_length=512)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == request.steps
    # The distilled guidance reaches the transformer: another value, another image.
    other, _ = run(make_backend(paths), flux_request(flux["folder"], flux, distilled_cfg_scale=1.0))
    assert not np.array_equal(pixels(other.images[0]), expected)


def test_flux_bfl_single_file_with_text_encoders_from_a_folder_matches(paths, flux):
    arch = detect_model(flux["bfl"])
    assert (arch.family, arch.dit.variant, arch.dit.layout, arch.dit.components) == (
        "flux", "dev", "bfl", ("transformer",)
    )
    request = flux_request(flux["bfl"], flux, text_encoders=str(flux["folder"]))
    batch, _ = run(make_backend(paths), request)
    expected = bare_image(bare_flux(flux["folder"]), request, guidance_scale=3.5, max_sequence_length=512)
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_a_transformer_only_file_without_text_encoders_is_refused_clearly(paths, flux):
    with pytest.raises(ModelError, match=r"sdxl-model\.safetensors holds the Flux.1 dev transformer only"):
        run(make_backend(paths), flux_request(flux["bfl"], flux))


def test_flux_gguf_is_detected_and_matches_diffusers_gguf_loading(paths, flux):
    arch = detect_model(flux["gguf"])
    assert (arch.family, arch.dit.variant, arch.dit.quantization, arch.dit.layout) == ("flux", "dev", "Q8_0", "bfl")
    request = flux_request(flux["gguf"], flux, text_encoders=str(flux["folder"]))
    batch, _ = run(make_backend(paths), request)
    transformer = FluxTransformer2DModel.from_single_file(
        str(flux["gguf_diffusers"]), config=str(flux["config"]), subfolder="transformer", local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), dtype=torch.float32,
    )  # fmt: skip
    expected = bare_image(
        bare_flux(flux["folder"], transformer), request, guidance_scale=3.5, max_sequence_length=512
    )
    assert np.array_equal(pixels(batch.images[0]), expected)
    unquantised = bare_image(bare_flux(flux["folder"]), request, guidance_scale=3.5, max_sequence_length=512)
    assert not np.array_equal(expected, unquantised)  # Q8_0 really was used


def test_schnell_is_told_from_dev_by_its_tensors_not_its_name(flux, tmp_path):
    from safetensors.torch import save_file

    state = {k: v for k, v in flux_to_bfl(flux["pipe"].transformer.state_dict()).items() if "guidance_in" not in k}
    save_file(state, str(tmp_path / "flux1-dev.safetensors"))
    arch = detect_model(tmp_path / "flux1-dev.safetensors")
    assert (arch.config_name, arch.label) == ("flux-schnell", "Flux.1 schnell")


def test_a_flux_file_with_a_missing_block_names_the_file(flux, tmp_path):
    broken = save_bfl_file(flux["pipe"], tmp_path / "my-flux.safetensors", drop="double_blocks.0")
    with pytest.raises(ModelError, match=r"my-flux\.safetensors .*double_blocks\.0 is missing"):
        detect_model(broken)
    last = save_bfl_file(flux["pipe"], tmp_path / "short-flux.safetensors", drop="single_blocks.1")
    with pytest.raises(ModelError, match=r"short-flux\.safetensors has 1 single blocks but .* has 2"):
        run(make_backend(AppPaths.for_root(tmp_path / "h").ensure()),
            flux_request(last, flux, text_encoders=str(flux["folder"])))  # fmt: skip


def test_a_gguf_file_with_a_wrong_tensor_type_names_the_file(flux, tmp_path):
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "flux")
    for name, tensor in flux_to_bfl(flux["pipe"].transformer.state_dict()).items():
        writer.add_tensor(name, tensor.float().numpy())
    writer.add_tensor("img_in.extra", np.zeros((4, 4), dtype=np.int32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match=r"odd\.gguf: tensor 'img_in\.extra' has GGUF type I32"):
        detect_model(path)


def test_a_gguf_that_is_no_diffusion_transformer_names_the_families_marble_knows(tmp_path):
    """A language model's GGUF (llama.cpp's names) chosen as the model: said so, with every family listed."""
    import gguf

    path = tmp_path / "Qwen3-4B-Q8_0.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    said = r"Qwen3-4B-Q8_0\.gguf: a GGUF file, but not a diffusion transformer Marble knows \(Flux\.1, SD3, "
    families = r".*ERNIE-Image, LongCat-Image, Ovis-Image, HiDream-I1, AuraFlow, Sana, PixArt\)"
    with pytest.raises(ModelError, match=said + families):
        detect_model(path)


def test_library_rows_show_family_parameters_and_quantisation(flux, tmp_path):
    library = Library(AppPaths.for_root(tmp_path / "lib").ensure())
    gguf_record = library.import_path(flux["gguf"], "model")
    assert gguf_record.file.endswith(".gguf") and gguf_record.format == "gguf"
    assert (gguf_record.family, gguf_record.dtype, gguf_record.layout) == ("flux", "Q8_0", "bfl")
    assert gguf_record.parameters == sum(p.numel() for p in flux["pipe"].transformer.parameters())
    assert gguf_record.shown_architecture.startswith("Flux.1 dev (Q8_0), ")
    record = library.import_path(flux["bfl"], "model", name="flux-bfl")
    assert (record.family, record.dtype, record.architecture) == ("flux", "F32", "Flux.1 dev")
    assert [r.name for r in library.records("model")] == ["flux-bfl", gguf_record.name]


def test_sd3_folder_is_detected_and_matches_bare_diffusers(paths, tmp_path):
    pipe = build_tiny_sd3()
    folder = save_pipeline(pipe, tmp_path / "sd3")
    arch = detect_model(folder)
    assert (arch.family, arch.dit.variant, arch.config_name) == ("sd3.5", "medium", "sd3.5-medium")
    request = request_for(folder, cfg_scale=5.0)
    batch, _ = run(make_backend(paths), request)
    bare = StableDiffusion3Pipeline.from_pretrained(
        str(folder), local_files_only=True, **shipped_tokenizers(Resources.default(), folder, "sd3")
    )
    bare.set_progress_bar_config(disable=True)
    expected = bare_image(bare, request, negative_prompt=request.negative_prompt, guidance_scale=5.0)
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_distilled_cfg_is_checked():
    with pytest.raises(InvalidRequest, match="Distilled CFG scale"):
        request_for("m", distilled_cfg_scale=-1.0)


def test_flux_all_in_one_file_uses_its_own_text_encoders_and_vae(paths, flux):
    from tests.support.tiny_dit import save_all_in_one

    path = save_all_in_one(flux["pipe"], flux["tmp"] / "flux-aio.safetensors")
    arch = detect_model(path)
    assert arch.dit.components == ("transformer", "clip_l", "t5xxl", "vae") and not arch.dit.needs_components
    request = flux_request(path, flux)  # no --text-encoders
    batch, _ = run(make_backend(paths), request)
    expected = bare_image(bare_flux(flux["folder"]), request, guidance_scale=3.5, max_sequence_length=512)
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_flux_file_with_clip_but_no_t5_still_needs_a_text_encoder_folder(paths, flux):
    from tests.support.tiny_dit import save_all_in_one

    path = save_all_in_one(flux["pipe"], flux["tmp"] / "flux-clip-only.safetensors", encoders=("clip_l",))
    assert detect_model(path).dit.needs_components
    with pytest.raises(ModelError, match=r"flux-clip-only\.safetensors holds the Flux.1 dev transformer only"):
        run(make_backend(paths), flux_request(path, flux))
