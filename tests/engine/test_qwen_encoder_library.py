"""Qwen-Image's Qwen2.5-VL and Z-Image's Qwen3 text encoders as library components: ComfyUI-style single
files imported once, named beside a transformer-only file with a library VAE and a tokenizer folder, and
run pixel-identical to the same tiny model loaded from its diffusers folder."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline
from safetensors.torch import save_file

from desktop.engine.errors import ModelError
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_qwen_zimage import PREFIX, bare_image
from tests.support.tiny_components import save_ae, save_t5
from tests.support.tiny_dit import config_folder
from tests.support.tiny_qwen_encoders import comfy_qwen_state, save_comfy_qwen, save_tokenizer_folder, wan_vae_names
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, build_tiny_z_image, save_transformer_file


@pytest.fixture(scope="module")
def zimage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zimage-parts")
    pipe = build_tiny_z_image()
    folder = tmp / "zimage"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return {
        "pipe": pipe,
        "folder": folder,
        "config": config_folder(pipe, tmp / "config"),  # no tokenizer in it
        "model": save_transformer_file(dict(pipe.transformer.state_dict()), tmp / "z-only.safetensors", prefix=PREFIX),
        "encoder": save_comfy_qwen(pipe.text_encoder, tmp / "qwen_3_4b.safetensors"),
        "ae": save_ae(pipe.vae, tmp / "ae.safetensors"),
        "tokenizer": save_tokenizer_folder(pipe, tmp / "qwen3-tokenizer"),
        "tmp": tmp,
    }


@pytest.fixture
def home(tmp_path, zimage):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(zimage["encoder"], "encoder")
    library.import_path(zimage["ae"], "vae")
    return paths


def z_request(parts, encoders="qwen_3_4b", **changes):
    values = dict(steps=2, cfg_scale=4.0, model_config=str(parts["config"]), text_encoders=encoders, vae="ae",
                  tokenizer_folder=str(parts["tokenizer"]))  # fmt: skip
    return request_for(parts["model"], **(values | changes))


def z_expected(parts, request):
    return bare_image(ZImagePipeline, parts["folder"], request, negative_prompt=request.negative_prompt,
                      guidance_scale=request.cfg_scale)  # fmt: skip


def test_a_z_image_file_runs_with_its_qwen3_encoder_and_vae_from_the_library(home, zimage):
    record = Library(home).get("encoder", "qwen_3_4b")
    assert (record.family, record.format, record.components) == ("qwen3", "transformers", ("qwen3",))
    assert "Qwen3 text encoder (width 16)" in record.shown_architecture
    assert guess_kind(zimage["encoder"]) == "encoder"
    request = z_request(zimage)
    batch, _ = run(make_backend(home), request)
    assert np.array_equal(pixels(batch.images[0]), z_expected(zimage, request))


def test_wrong_missing_and_damaged_parts_are_refused_by_name(home, zimage, tmp_path):
    library = Library(home)
    library.import_path(save_t5(build_tiny_flux_t5(), tmp_path / "t5xxl.safetensors"), "encoder")
    backend = make_backend(home)
    # A T5 given to Z-Image: the slot and what fits it are named.
    with pytest.raises(ModelError, match=r"z-only\.safetensors needs a Qwen3 \(width 16\) text encoder for its "
                                         r"text_encoder .*chosen: t5xxl \(T5 text encoder"):  # fmt: skip
        run(backend, z_request(zimage, encoders="t5xxl"))
    # No --config: the shipped z-image folder wants the published Qwen3 4B.
    with pytest.raises(ModelError, match=r"needs a Qwen3 4B text encoder for its text_encoder .*chosen: qwen_3_4b"):
        run(backend, z_request(zimage, model_config=None))
    # A tokenizer folder without a tokenizer: which files are needed, and where they come from. (With no
    # folder, Marble's own Qwen tokenizer serves: test_qwen_tokenizer.py.)
    with pytest.raises(ModelError, match=r"tokenizer folder .*empty holds no tokenizer\.json .*Point "
                                         r"--tokenizer-folder .*Z-Image-Turbo"):  # fmt: skip
        (tmp_path / "empty").mkdir()
        run(backend, z_request(zimage, tokenizer_folder=str(tmp_path / "empty")))
    with pytest.raises(ModelError, match=r"choose its VAE too"):
        run(backend, z_request(zimage, vae=""))
    # A truncated file is refused at import, naming it; one that lacks a tensor, at load, naming entry and tensor.
    broken = tmp_path / "qwen3_broken.safetensors"
    broken.write_bytes(zimage["encoder"].read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"qwen3_broken\.safetensors"):
        library.import_path(broken, "encoder")
    state = comfy_qwen_state(zimage["pipe"].text_encoder)
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(tmp_path / "qwen3_short.safetensors"))
    library.import_path(tmp_path / "qwen3_short.safetensors", "encoder")
    with pytest.raises(ModelError, match=r"'qwen3_short' \(qwen3_short\.safetensors\) does not fit .*layers\.1\.mlp"):
        run(backend, z_request(zimage, encoders="qwen3_short"))
    # A file with a layer gone from the middle is refused at import.
    del state["model.layers.0.self_attn.q_proj.weight"]
    state = {k: v for k, v in state.items() if ".layers.0." not in k}
    save_file(state, str(tmp_path / "qwen3_gap.safetensors"))
    with pytest.raises(ModelError, match=r"qwen3_gap\.safetensors .*layer\(s\) \[0\] missing"):
        library.import_path(tmp_path / "qwen3_gap.safetensors", "encoder")


def build_tiny_flux_t5():
    from tests.support.tiny_dit import build_tiny_flux

    return build_tiny_flux(latent_channels=16).text_encoder_2


def z_with_encoder(parts, request, weights):
    """The diffusers folder's pipeline with its Qwen3 holding `weights` (ComfyUI names), as bare diffusers runs."""
    encoder = type(parts["pipe"].text_encoder)(parts["pipe"].text_encoder.config).eval()
    encoder.load_state_dict({k.removeprefix("model."): v.float() for k, v in weights.items()})
    pipe = ZImagePipeline.from_pretrained(str(parts["folder"]), text_encoder=encoder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=request.prompt, negative_prompt=request.negative_prompt, guidance_scale=request.cfg_scale,
                 num_inference_steps=request.steps, width=request.width, height=request.height,
                 generator=torch.Generator("cpu").manual_seed(request.seed)).images[0]  # fmt: skip
    return pixels(image)


def test_an_fp8_qwen3_stays_stored_in_fp8_and_computes_its_own_weights(home, zimage):
    path = save_comfy_qwen(zimage["pipe"].text_encoder, zimage["tmp"] / "qwen_3_4b_fp8_e4m3fn.safetensors",
                           torch.float8_e4m3fn)  # fmt: skip
    record = Library(home).import_path(path, "encoder")
    assert record.dtype == "F8_E4M3" and "fp8 e4m3fn" in record.shown_architecture, record.shown_architecture
    backend = make_backend(home)
    request = z_request(zimage, encoders=record.name)
    batch, _ = run(backend, request)
    assert backend._pipe.text_encoder.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fn
    state = comfy_qwen_state(zimage["pipe"].text_encoder)
    rounded = {k: v.to(torch.float8_e4m3fn) if v.ndim >= 2 else v for k, v in state.items()}
    assert np.array_equal(pixels(batch.images[0]), z_with_encoder(zimage, request, rounded))


def test_a_scaled_fp8_qwen3_loads_as_its_dequantised_weights(home, zimage):
    from tests.engine.test_scaled_fp8 import scaled_fp8

    file, exact, unscaled = scaled_fp8(comfy_qwen_state(zimage["pipe"].text_encoder))
    path = zimage["tmp"] / "qwen_3_4b_fp8_scaled.safetensors"
    save_file(file, str(path))
    record = Library(home).import_path(path, "encoder")
    assert (record.dtype, record.family) == ("F8_E4M3_SCALED", "qwen3"), (record.dtype, record.family)
    request = z_request(zimage, encoders=record.name)
    backend = make_backend(home)
    batch, _ = run(backend, request)
    # Kept in fp8 (scaled_fp8_layers.py): each layer's projections hold the file's fp8 bytes.
    from desktop.engine.backends.scaled_fp8_layers import stored_fp8

    q = stored_fp8(backend._pipe.text_encoder.layers[0].self_attn.q_proj)
    assert q.dtype == torch.float8_e4m3fn
    assert torch.equal(q.view(torch.uint8), file["model.layers.0.self_attn.q_proj.weight"].view(torch.uint8))
    expected = z_with_encoder(zimage, request, exact)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, z_with_encoder(zimage, request, unscaled))  # the scales mattered


def build_tiny_qwen_with_wan_vae(shipped: bool = False):
    """The tiny Qwen-Image with a VAE of Wan 2.1's block layout (four levels, two residual blocks each): the
    layout ComfyUI's qwen_image_vae.safetensors names follow. `shipped`: with Marble's Qwen tokenizer."""
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline

    pipe = build_tiny_qwen_image(shipped=shipped)
    torch.manual_seed(1)
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    return QwenImagePipeline(**(pipe.components | {"vae": vae}))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwen-parts")
    pipe = build_tiny_qwen_with_wan_vae()
    folder = tmp / "qwen"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    state = dict(pipe.transformer.state_dict())
    vae = pipe.vae.state_dict()
    save_file({k: v.contiguous() for k, v in vae.items()}, str(tmp / "qwen_vae_diffusers.safetensors"))
    save_file(wan_vae_names(vae), str(tmp / "qwen_image_vae.safetensors"))
    return {
        "pipe": pipe,
        "folder": folder,
        "config": config_folder(pipe, tmp / "config"),  # no tokenizer in it
        "model": save_transformer_file(state, tmp / "qwen-only.safetensors", prefix=PREFIX),
        "encoder": save_comfy_qwen(pipe.text_encoder, tmp / "qwen_2.5_vl_7b.safetensors"),
        # The text-only file: no vision tower and no lm_head, as some ComfyUI files are.
        "text_only": save_comfy_qwen(pipe.text_encoder, tmp / "qwen_2.5_vl_text.safetensors", vision=False,
                                     head=False),  # fmt: skip
        "vae": tmp / "qwen_image_vae.safetensors",
        "vae_diffusers": tmp / "qwen_vae_diffusers.safetensors",
        "tokenizer": save_tokenizer_folder(pipe, tmp / "qwen25-tokenizer"),
        "tmp": tmp,
    }


def qwen_request(parts, encoders="qwen_2.5_vl_7b", vae="qwen_image_vae", model=None, **changes):
    values = dict(steps=2, cfg_scale=4.0, model_config=str(parts["config"]), text_encoders=encoders, vae=vae,
                  tokenizer_folder=str(parts["tokenizer"]))  # fmt: skip
    return request_for(model or parts["model"], **(values | changes))


def test_a_qwen_image_file_runs_with_its_qwen25_vl_encoder_and_vae_from_the_library(qwen, tmp_path):
    from tests.engine.test_qwen_zimage import qwen_expected

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    full = library.import_path(qwen["encoder"], "encoder")
    text = library.import_path(qwen["text_only"], "encoder")
    assert (full.family, text.family) == ("qwen2.5-vl", "qwen2.5-vl")
    assert "with its vision tower" in full.shown_architecture and "vision" not in text.shown_architecture
    for file in (qwen["vae"], qwen["vae_diffusers"]):
        record = library.import_path(file, "vae")
        assert "Qwen-Image VAE" in record.shown_architecture, record.shown_architecture
    request = qwen_request(qwen)
    batch, _ = run(make_backend(paths), request)
    expected = qwen_expected(qwen["folder"], request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # The text-only encoder and the VAE in diffusers' names: the same picture (the vision tower and the
    # logits take no part in a text prompt).
    other = qwen_request(qwen, encoders="qwen_2.5_vl_text", vae="qwen_vae_diffusers")
    batch, _ = run(make_backend(paths), other)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # A Qwen-Image VAE that lacks a tensor is detected, and refused at load naming the entry and its file.
    from safetensors.torch import load_file

    short = {k: v for k, v in load_file(str(qwen["vae"])).items() if k != "decoder.middle.1.proj.weight"}
    save_file(short, str(tmp_path / "vae_short.safetensors"))
    library.import_path(tmp_path / "vae_short.safetensors", "vae")
    with pytest.raises(ModelError, match=r"The VAE 'vae_short' \(vae_short\.safetensors\) does not fit qwen-only"):
        run(make_backend(paths), qwen_request(qwen, vae="vae_short"))
    # Z-Image's VAE kind is no Qwen-Image VAE.
    library.import_path(save_ae(build_tiny_z_image().vae, tmp_path / "ae.safetensors"), "vae")
    with pytest.raises(ModelError, match=r"'ae' \(ae\.safetensors\) is a SD 1\.x .*decodes with the Qwen-Image VAE"):
        run(make_backend(paths), qwen_request(qwen, vae="ae"))


def test_an_edit_model_refuses_the_text_only_qwen25_vl(qwen, tmp_path):
    from PIL import Image

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(qwen["text_only"], "encoder")
    library.import_path(qwen["vae"], "vae")
    state = {PREFIX + k: v.contiguous() for k, v in qwen["pipe"].transformer.state_dict().items()}
    edit = tmp_path / "qwen-edit.safetensors"
    save_file(state, str(edit), metadata={"modelspec.architecture": "qwen-image-edit"})
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    request = qwen_request(qwen, encoders="qwen_2.5_vl_text", model=edit, init_image=str(source))
    with pytest.raises(ModelError, match=r"'qwen_2\.5_vl_text' .* is the text-only Qwen2\.5-VL .*vision tower"):
        run(make_backend(paths), request)


@pytest.mark.parametrize(("folder", "class_name", "parameters"), [
    ("qwen-image", "Qwen2_5_VLForConditionalGeneration", 8_292_166_656),  # Qwen2.5-VL 7B, vision tower included
    ("z-image", "Qwen3Model", 4_022_468_096),  # Qwen3 4B (its lm_head is the embedding)
    ("flux2-klein-4b", "Qwen3ForCausalLM", 4_022_468_096),  # the same Qwen3 4B, lm_head tied
    ("flux2-klein-9b", "Qwen3ForCausalLM", 8_190_735_360),  # Qwen3 8B, its own lm_head
])  # fmt: skip
def test_shipped_text_encoder_configs_have_the_published_sizes(folder, class_name, parameters):
    import transformers
    from accelerate import init_empty_weights

    from desktop.engine.resources import Resources

    cls = getattr(transformers, class_name)
    config = cls.config_class.from_pretrained(str(Resources.default().config_folder(folder) / "text_encoder"))
    with init_empty_weights():
        model = cls(config)
    model.tie_weights()  # a tied head counts once, as in the published figures
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_cli_runs_a_z_image_file_with_library_parts_and_a_tokenizer_folder(zimage, tmp_path):
    from PIL import Image

    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    home = ["--home", str(tmp_path / "home")]
    assert in_process(["encoders", "import", str(zimage["encoder"]), *home])[0] == 0
    assert in_process(["vaes", "import", str(zimage["ae"]), *home])[0] == 0
    code, out, _ = in_process(["encoders", "list", *home])
    assert code == 0 and out.startswith("qwen_3_4b\t") and "Qwen3 text encoder (width 16)" in out, out
    image = tmp_path / "z.png"
    args = ["generate", "--model", str(zimage["model"]), "--prompt", "a red circle on a blue background", "--seed",
            "42", "--width", "64", "--height", "64", "--steps", "2", "--cfg", "4", "--negative", "blurry",
            "--device", "cpu", "--config", str(zimage["config"]), "--text-encoders", "qwen_3_4b", "--vae", "ae",
            "--no-preview", *home]  # fmt: skip
    code, _, err = in_process([*args, "--tokenizer-folder", str(zimage["tokenizer"]), "--out", str(image)])
    assert code == 0, err
    request = read_image_metadata(image).request
    assert request.tokenizer_folder == str(zimage["tokenizer"].resolve())
    assert np.array_equal(np.asarray(Image.open(image).convert("RGB")), z_expected(zimage, z_request(zimage)))
    # Without the flag, Marble's own Qwen tokenizer: its 151,669 ids do not fit this tiny encoder's 259 rows,
    # which is said before the encoder loads, naming the flag.
    code, _, err = in_process([*args, "--out", str(tmp_path / "none.png")])
    assert code != 0 and "151,669 tokens" in err and "only 259 embedding rows" in err, err
    assert "--tokenizer-folder" in err and "Traceback" not in err, err
    # The window's Tokenizer folder setting serves the command line too, when the flag is absent.
    from desktop.engine.paths import AppPaths
    from desktop.engine.settings import SettingsStore

    settings = SettingsStore.open(AppPaths.for_root(tmp_path / "home").settings_file)
    settings.set("tokenizer_folder", str(zimage["tokenizer"]))
    settings.save()
    from_setting = tmp_path / "setting.png"
    code, _, err = in_process([*args, "--out", str(from_setting)])
    assert code == 0, err
    pictures = [np.asarray(Image.open(path).convert("RGB")) for path in (from_setting, image)]
    assert np.array_equal(*pictures)


def test_the_settings_tokenizer_folder_serves_a_request_that_names_none(home, zimage):
    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.resources import Resources
    from desktop.engine.settings import SETTINGS

    assert "tokenizer_folder" in {setting.key for setting in SETTINGS}
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models),
                               tokenizer_folder=str(zimage["tokenizer"]))  # fmt: skip
    request = z_request(zimage, tokenizer_folder=None)  # as the window sends it
    batch, _ = run(backend, request)
    assert np.array_equal(pixels(batch.images[0]), z_expected(zimage, request))


def test_an_edit_model_runs_with_the_full_encoder_and_the_processor_from_the_tokenizer_folder(tmp_path,
                                                                                             monkeypatch):
    from diffusers import QwenImageEditPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

    from tests.engine.test_qwen_edit import _SHRINK, _image, bare
    from tests.support.tiny_qwen_edit import build_tiny_qwen_edit, save_edit_folder

    # As test_qwen_edit does: the pipeline's ~1 MP conditioning size shrunk to the tiny model's 64 x 64.
    original = pipeline_qwenimage_edit.calculate_dimensions
    monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions",
                        lambda area, ratio: original(area / _SHRINK, ratio))  # fmt: skip
    pipe = build_tiny_qwen_edit()
    folder = save_edit_folder(pipe, tmp_path / "qwen-edit")
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(save_comfy_qwen(pipe.text_encoder, tmp_path / "qwen_2.5_vl_7b.safetensors"), "encoder")
    save_file({k: v.contiguous() for k, v in pipe.vae.state_dict().items()}, str(tmp_path / "qwen_vae.safetensors"))
    library.import_path(tmp_path / "qwen_vae.safetensors", "vae")
    state = {PREFIX + k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}
    model = tmp_path / "qwen-edit.safetensors"
    save_file(state, str(model), metadata={"modelspec.architecture": "qwen-image-edit"})
    source, path = _image(tmp_path, "source.png")
    request = request_for(model, steps=2, cfg_scale=4.0, init_image=str(path), text_encoders="qwen_2.5_vl_7b",
                          vae="qwen_vae", tokenizer_folder=str(folder), model_config=str(folder))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare(QwenImageEditPipeline, folder, request, image=source))
    # Its scaled-fp8 file, the vision tower's layers kept in fp8 too: the dequantised encoder's edit.
    import shutil

    from tests.engine.test_scaled_fp8 import scaled_fp8

    file, exact, _ = scaled_fp8(comfy_qwen_state(pipe.text_encoder))
    save_file(file, str(tmp_path / "qwen_2.5_vl_7b_fp8_scaled.safetensors"))
    library.import_path(tmp_path / "qwen_2.5_vl_7b_fp8_scaled.safetensors", "encoder")
    backend = make_backend(paths)
    batch, _ = run(backend, replace(request, text_encoders="qwen_2.5_vl_7b_fp8_scaled"))
    assert hasattr(backend._pipe.text_encoder.model.visual.blocks[0].mlp.up_proj, "fp8_bits")
    dequantised = shutil.copytree(folder, tmp_path / "qwen-edit-dequantised")
    shutil.rmtree(dequantised / "text_encoder")
    qwen25_with(pipe.text_encoder, exact).save_pretrained(str(dequantised / "text_encoder"))
    assert np.array_equal(pixels(batch.images[0]), bare(QwenImageEditPipeline, dequantised, request, image=source))
    # A tokenizer folder without the image processor is refused, saying which file it lacks.
    tokenizer_only = save_tokenizer_folder(pipe, tmp_path / "tokenizer-only")
    with pytest.raises(ModelError, match=r"needs the Qwen2VL image processor too, and .*tokenizer-only holds no "
                                         r"preprocessor_config\.json"):  # fmt: skip
        run(make_backend(paths), replace(request, tokenizer_folder=str(tokenizer_only)))


def test_a_qwen3_gguf_loads_as_its_stored_weights(home, zimage):
    from tests.support.tiny_qwen_encoders import save_qwen_gguf

    path = save_qwen_gguf(zimage["pipe"].text_encoder, zimage["tmp"] / "Qwen3-4B-F16.gguf")
    assert guess_kind(path) == "encoder"
    record = Library(home).import_path(path, "encoder")
    assert (record.family, record.format, record.dtype) == ("qwen3", "gguf", "F16"), record
    request = z_request(zimage, encoders=record.name)
    batch, _ = run(make_backend(home), request)
    state = comfy_qwen_state(zimage["pipe"].text_encoder)
    stored = {k: v.half().float() if v.ndim == 2 else v for k, v in state.items()}
    assert np.array_equal(pixels(batch.images[0]), z_with_encoder(zimage, request, stored))


def test_a_q8_0_qwen3_gguf_keeps_its_blocks_and_computes_their_dequantised_weights(tmp_path):
    """A Qwen3 wide enough for Q8_0's 32-weight blocks: its quantised linear layers stay blocks in memory and
    the encoder computes what a Qwen3Model holding gguf's own dequantisation of the same file computes."""
    import gguf
    from transformers import Qwen3Config, Qwen3Model

    from desktop.engine.backends.encoder_components import Component, inspect_component, load_encoder
    from desktop.engine.backends.gguf_layers import read_gguf
    from desktop.engine.library.encoder_qwen import gguf_name
    from tests.support.tiny_qwen_encoders import save_qwen_gguf

    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3Model(config).eval()
    path = save_qwen_gguf(model, tmp_path / "Qwen3-Q8_0.gguf", quant="Q8_0")
    config.save_pretrained(tmp_path / "config")
    component = Component("qwen-q8", path)
    info = inspect_component(component)
    assert (info.kind, info.width, info.layers, info.layout) == ("qwen3", 32, 2, "gguf")
    loaded = load_encoder(tmp_path / "config", "Qwen3Model", component, info, dtype=torch.float32)
    blocks = {name: module for name, module in loaded.named_modules() if hasattr(module, "blocks")}
    assert len(blocks) == 2 * 7  # q, k, v, o, gate, up, down in each layer: all rows 32 or 64 wide
    reader = gguf.GGUFReader(str(path))
    quantised = {gguf_name(t.name) for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0}
    # The embedding is Q8_0 in the file too, dequantised at load (no linear layer).
    assert {f"model.{name}.weight" for name in blocks} | {"model.embed_tokens.weight"} == quantised
    # The reference: every tensor dequantised by gguf's numpy code, in a plain Qwen3Model.
    reference = Qwen3Model(config).eval()
    dequantised = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(list(tensor.shape)))
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        dequantised[gguf_name(tensor.name).removeprefix("model.")] = torch.from_numpy(np.array(values, np.float32))
    reference.load_state_dict(dequantised, strict=True)
    assert not torch.equal(dequantised["layers.0.self_attn.q_proj.weight"], model.layers[0].self_attn.q_proj.weight)
    ids = torch.tensor([[3, 9, 27, 1, 14, 5]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).last_hidden_state, reference(ids).last_hidden_state)
    assert read_gguf(path, gguf_name)["model.layers.0.mlp.down_proj.weight"].quant_type == int(
        gguf.GGMLQuantizationType.Q8_0
    )


def test_a_config_folder_that_is_the_whole_diffusers_folder_serves_its_tokenizer(home, zimage):
    request = z_request(zimage, tokenizer_folder=None, model_config=str(zimage["folder"]))
    batch, _ = run(make_backend(home), request)
    assert np.array_equal(pixels(batch.images[0]), z_expected(zimage, request))


def test_a_scaled_fp8_qwen25_vl_stays_in_fp8_and_draws_its_dequantised_weights(qwen, tmp_path):
    from diffusers import QwenImagePipeline

    from desktop.engine.backends.scaled_fp8_layers import stored_fp8
    from tests.engine.test_scaled_fp8 import scaled_fp8

    file, exact, unscaled = scaled_fp8(comfy_qwen_state(qwen["pipe"].text_encoder))
    path = tmp_path / "qwen_2.5_vl_7b_fp8_scaled.safetensors"
    save_file(file, str(path))
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    record = library.import_path(path, "encoder")
    assert (record.dtype, record.family) == ("F8_E4M3_SCALED", "qwen2.5-vl"), (record.dtype, record.family)
    library.import_path(qwen["vae"], "vae")
    request = qwen_request(qwen, encoders=record.name)
    backend = make_backend(paths)
    batch, _ = run(backend, request)
    encoder = backend._pipe.text_encoder
    # The language model's, the vision tower's and lm_head's linear layers hold the file's fp8 bytes.
    for layer, key in ((encoder.model.language_model.layers[0].mlp.down_proj, "model.layers.0.mlp.down_proj.weight"),
                       (encoder.model.visual.blocks[0].attn.qkv, "visual.blocks.0.attn.qkv.weight"),
                       (encoder.lm_head, "lm_head.weight")):  # fmt: skip
        assert torch.equal(stored_fp8(layer).view(torch.uint8), file[key].view(torch.uint8))

    def expected(weights):
        reference = qwen25_with(qwen["pipe"].text_encoder, weights)
        pipe = QwenImagePipeline.from_pretrained(str(qwen["folder"]), text_encoder=reference, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        image = pipe(prompt=request.prompt, negative_prompt=request.negative_prompt or " ",
                     true_cfg_scale=request.cfg_scale, num_inference_steps=request.steps, width=request.width,
                     height=request.height, generator=torch.Generator("cpu").manual_seed(request.seed))  # fmt: skip
        return pixels(image.images[0])

    want = expected(exact)
    assert np.array_equal(pixels(batch.images[0]), want)
    assert not np.array_equal(want, expected(unscaled))  # the scales mattered


def qwen25_with(encoder, weights):
    """A Qwen2_5_VLForConditionalGeneration like `encoder` holding `weights` (ComfyUI's names)."""
    reference = type(encoder)(encoder.config).eval()
    names = {("model.language_model." + k.removeprefix("model.") if k.startswith("model.") else
              "model." + k if k.startswith("visual.") else k): v for k, v in weights.items()}  # fmt: skip
    reference.load_state_dict(names)
    return reference
