"""bitsandbytes NF4/int8: Forge's pre-quantised files (`flux1-dev-bnb-nf4`) and diffusers folders saved with a
`quantization_config` are named in the library ("nf4 (bitsandbytes)"); a Forge file loads, dequantised by
bitsandbytes itself, where the package is installed (it runs on the CPU too), and without it the error says
what to install. The nf4/int8 memory modes quantise a full-precision transformer's linear layers as loaded.

bitsandbytes is optional (pyproject's `quant` extra; in `test`): the tests that run it skip without it."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from desktop.engine.backends import families
from desktop.engine.backends.dit_memory import DitSizes, choose_dit_mode, fallback_mode, needs_reload, peak_bytes
from desktop.engine.backends.families import convert_flux_bfl
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_flux, bare_image
from tests.engine.test_scaled_fp8 import with_weights
from tests.support.tiny_dit import build_tiny_flux, config_folder, flux_to_bfl, save_pipeline

PREFIX = "model.diffusion_model."
# The nf4 image against the full-precision one, mean difference per channel in 0-255 levels: NF4 keeps 16 levels
# a 64-weight block. The tiny random model's nf4 image is about 4 levels away (a Forge file and the nf4 mode
# alike), its int8 image 0.14; another seed 43.
NF4_MEAN_TOLERANCE = 8.0
MODE_TOLERANCE = {"nf4": NF4_MEAN_TOLERANCE, "int8": 1.0}
NF4_NAME = "flux1-dev-bnb-nf4.safetensors"


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bnb")
    pipe = build_tiny_flux()
    return {"pipe": pipe, "folder": save_pipeline(pipe, tmp / "flux"), "config": config_folder(pipe, tmp / "config")}


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def forge_nf4(state):
    """(Forge's file tensors, the dequantised weights): each 2-D weight packed by bitsandbytes with its
    quantisation state beside it (double-quantised absmax, as Forge's files hold), the rest as it was."""
    import bitsandbytes.functional as F

    file, exact = {}, {}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight"):
            weight = value.float().contiguous()
            packed, quant_state = F.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
            file[PREFIX + key] = packed
            for part, tensor in quant_state.as_dict(packed=True).items():
                file[f"{PREFIX}{key}.{part}"] = tensor
            exact[key] = F.dequantize_4bit(packed, quant_state)
        else:
            file[PREFIX + key] = exact[key] = value.contiguous()
    return file, exact


def fake_forge_file(path, state):
    """Forge's tensor names with placeholder contents: enough to detect, built without bitsandbytes."""
    file = {}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight"):
            file[PREFIX + key] = torch.zeros((value.numel() // 2, 1), dtype=torch.uint8)
            file[f"{PREFIX}{key}.absmax"] = torch.ones(max(1, value.numel() // 64))
            file[f"{PREFIX}{key}.quant_map"] = torch.zeros(16)
            file[f"{PREFIX}{key}.quant_state.bitsandbytes__nf4"] = torch.zeros(8, dtype=torch.uint8)
        else:
            file[PREFIX + key] = value.contiguous()
    save_file(file, str(path))
    return path


def test_a_forge_nf4_file_is_named_in_the_library(flux, tmp_path):
    path = fake_forge_file(tmp_path / NF4_NAME, flux_to_bfl(flux["pipe"].transformer.state_dict()))
    arch = detect_model(path)
    assert (arch.family, arch.dit.variant, arch.dit.bitsandbytes) == ("flux", "dev", "BNB_NF4")
    assert arch.dit.parameters == sum(v.numel() for v in flux["pipe"].transformer.state_dict().values())
    record = Library(AppPaths.for_root(tmp_path / "lib").ensure()).import_path(path, "model", name="nf4")
    assert record.shown_architecture.endswith(", nf4 (bitsandbytes)"), record.shown_architecture


def test_a_forge_nf4_file_without_bitsandbytes_says_what_to_install(flux, paths, tmp_path, monkeypatch):
    path = fake_forge_file(tmp_path / NF4_NAME, flux_to_bfl(flux["pipe"].transformer.state_dict()))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a computer without it: import fails
    request = request_for(path, negative_prompt="", model_config=str(flux["config"]), text_encoders=str(flux["folder"]))
    needs = r"nf4\.safetensors holds nf4 \(bitsandbytes\) weights, which need the bitsandbytes package: install"
    with pytest.raises(ModelError, match=needs + r" it .*\(pip install bitsandbytes\)"):
        run(make_backend(paths), request)


def diffusers_nf4_folder(flux, folder):
    """A diffusers folder whose transformer is saved as diffusers saves a bitsandbytes nf4 model: the
    packed weights with their quantisation states under diffusers' names, and a quantization_config."""
    folder = save_pipeline(flux["pipe"], folder)
    file, exact = forge_nf4(flux["pipe"].transformer.state_dict())
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.unlink()
    save_file({key.removeprefix(PREFIX): value for key, value in file.items()},
              str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))  # fmt: skip
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                     "bnb_4bit_use_double_quant": True}  # fmt: skip
    config_file.write_text(json.dumps(config))
    return folder, {key.removeprefix(PREFIX): value for key, value in exact.items()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA diffusers keeps the folder quantised (below)")
def test_without_cuda_a_diffusers_folder_saved_in_nf4_runs_on_its_dequantised_weights(flux, paths, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    folder, exact = diffusers_nf4_folder(flux, tmp_path / "flux-nf4")
    arch = detect_model(folder)
    assert arch.dit.bitsandbytes == "BNB_NF4"
    request = request_for(folder, negative_prompt="", distilled_cfg_scale=3.5)
    got = pixels(run(make_backend(paths), request)[0].images[0])
    extra = {"guidance_scale": 3.5, "max_sequence_length": 512}
    expected = bare_image(bare_flux(flux["folder"], with_weights(flux["pipe"].transformer, exact)), request, **extra)
    assert np.array_equal(got, expected)
    full = bare_image(bare_flux(flux["folder"]), request, **extra)
    assert 0 < np.abs(got.astype(float) - full.astype(float)).mean() < NF4_MEAN_TOLERANCE
    # A damaged folder (a layer's quantisation state gone) is refused by name, not run on garbage.
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(weights))
    del state[next(key for key in state if key.endswith(".absmax"))]
    save_file(state, str(weights))
    with pytest.raises(ModelError, match=r"flux-nf4: context_embedder\.weight does not dequantise .*damaged"):
        run(make_backend(paths), request)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA diffusers keeps the folder quantised (below)")
def test_without_cuda_a_folder_with_an_nf4_t5_too_runs_on_its_dequantised_weights(flux, paths, tmp_path):
    # diffusers' own bnb-4bit Flux folders quantise T5 as well (saved by transformers, as here). On a CPU,
    # transformers' 4-bit path fails on layers narrower than a block, so Marble dequantises T5 too.
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    import bitsandbytes.functional as F
    from transformers import BitsAndBytesConfig, T5EncoderModel

    folder, exact = diffusers_nf4_folder(flux, tmp_path / "flux-nf4-t5")
    t5 = T5EncoderModel.from_pretrained(str(folder / "text_encoder_2"), quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4"))  # fmt: skip
    t5.save_pretrained(str(folder / "text_encoder_2"))
    request = request_for(folder, negative_prompt="", distilled_cfg_scale=3.5)
    got = pixels(run(make_backend(paths), request)[0].images[0])
    quantised = {name: module for name, module in t5.named_modules() if type(module).__name__ == "Linear4bit"}
    assert quantised
    plain_t5 = T5EncoderModel.from_pretrained(str(flux["folder"] / "text_encoder_2")).eval()
    with torch.no_grad():
        for name, module in quantised.items():
            plain_t5.get_submodule(name).weight.copy_(F.dequantize_4bit(module.weight.data, module.weight.quant_state))
    transformer = with_weights(flux["pipe"].transformer, exact)
    extra = {"guidance_scale": 3.5, "max_sequence_length": 512}
    bare = bare_flux(flux["folder"], transformer)
    bare.text_encoder_2 = plain_t5
    assert np.array_equal(got, bare_image(bare, request, **extra))
    # The T5 weights matter: with the original (unquantised) T5 the picture is another.
    assert not np.array_equal(got, bare_image(bare_flux(flux["folder"], transformer), request, **extra))


def test_a_forge_nf4_file_matches_diffusers_on_the_dequantised_weights(flux, paths, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    pipe = flux["pipe"]
    file, exact = forge_nf4(flux_to_bfl(pipe.transformer.state_dict()))
    path = tmp_path / "flux1-dev-bnb-nf4.safetensors"
    save_file(file, str(path))
    request = request_for(path, negative_prompt="", distilled_cfg_scale=3.5, model_config=str(flux["config"]),
                          text_encoders=str(flux["folder"]))  # fmt: skip
    backend = make_backend(paths)
    got = pixels(run(backend, request)[0].images[0])
    assert families.memory_sizes(backend._pipe, backend._dit).nf4_file  # auto would pick nf4 before fp8
    extra = {"guidance_scale": 3.5, "max_sequence_length": 512}
    dequantised = with_weights(pipe.transformer, convert_flux_bfl(exact))
    assert np.array_equal(got, bare_image(bare_flux(flux["folder"], dequantised), request, **extra))
    full = bare_image(bare_flux(flux["folder"]), request, **extra)
    difference = np.abs(got.astype(float) - full.astype(float)).mean()
    assert 0 < difference < NF4_MEAN_TOLERANCE, difference
    # The nf4 mode quantises the dequantised weights again: every 4-bit code comes back as the file held it.
    run(backend, replace(request, memory_mode="nf4"))
    again = backend._pipe.transformer.transformer_blocks[0].attn.to_out[0].weight
    held = file[PREFIX + "double_blocks.0.img_attn.proj.weight"]
    assert torch.equal(again.data.view(torch.uint8).flatten(), held.flatten())


# A 12B transformer in bf16 beside small text encoders (1 GB): the transformer decides the mode.
BIG_TRANSFORMER = DitSizes(transformer=24 * 10**9, transformer_blocks=57, encoders=(10**9,), vae=160 * 10**6)
GIB = 2**30


@pytest.mark.parametrize(
    ("card", "bitsandbytes", "mode"),
    [(16, True, "fp8"), (12, True, "nf4"), (12, False, "group"), (10, True, "nf4"), (8, True, "group")],
)
def test_auto_picks_nf4_on_cuda_with_bitsandbytes_when_fp8_does_not_fit(card, bitsandbytes, mode):
    sizes = replace(BIG_TRANSFORMER, bitsandbytes_possible=bitsandbytes)
    free = int((card - 0.5) * GIB)
    assert choose_dit_mode("auto", "cuda", free, sizes, 1024 * 1024) == mode
    assert choose_dit_mode("auto", "cpu", free, sizes, 1024 * 1024) == "full"  # never off CUDA
    # Quantised already (GGUF, a folder diffusers loaded in nf4): no second quantisation.
    assert choose_dit_mode("auto", "cuda", free, replace(sizes, fp8_possible=False), 1024 * 1024) != "nf4"


def test_a_forge_nf4_file_prefers_the_nf4_mode_to_fp8():
    sizes = replace(BIG_TRANSFORMER, bitsandbytes_possible=True)
    free = int(23.5 * GIB)  # fp8 and nf4 both fit; full and offload do not
    assert choose_dit_mode("auto", "cuda", free, sizes, 1024 * 1024) == "fp8"
    assert choose_dit_mode("auto", "cuda", free, replace(sizes, nf4_file=True), 1024 * 1024) == "nf4"


def test_nf4_and_int8_fall_back_and_are_fallen_back_to_on_cuda_only():
    assert fallback_mode("fp8", "cuda", True, True) == "nf4"
    assert fallback_mode("fp8", "cuda", True, False) == "group"
    assert fallback_mode("int8", "cuda", True, True) == "nf4"
    assert fallback_mode("nf4", "cuda", True, True) == "group"
    assert fallback_mode("fp8", "cpu", True, True) is None
    assert peak_bytes("nf4", BIG_TRANSFORMER, 0) < peak_bytes("int8", BIG_TRANSFORMER, 0) / 1.8
    assert needs_reload("nf4", "full") and needs_reload("int8", "fp8")


@pytest.mark.parametrize(("mode", "layer"), [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_the_nf4_and_int8_modes_quantise_the_transformer_and_stay_close_to_full_precision(flux, paths, mode, layer):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    request = request_for(flux["folder"], negative_prompt="", distilled_cfg_scale=3.5, memory_mode=mode)
    backend = make_backend(paths)
    got = pixels(run(backend, request)[0].images[0])
    transformer = backend._pipe.transformer
    assert type(transformer.transformer_blocks[0].attn.to_q).__name__ == layer
    assert type(transformer.proj_out).__name__ == layer  # every linear layer, as diffusers' quantizer does
    assert backend.memory_mode == mode
    full = bare_image(bare_flux(flux["folder"]), request, guidance_scale=3.5, max_sequence_length=512)
    difference = np.abs(got.astype(float) - full.astype(float)).mean()
    assert 0 < difference < MODE_TOLERANCE[mode], difference


def test_the_nf4_mode_without_bitsandbytes_says_what_to_install(flux, paths, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    request = request_for(flux["folder"], negative_prompt="", memory_mode="nf4")
    with pytest.raises(ModelError, match=r"The nf4 memory mode needs the bitsandbytes package: install it .*"
                                         r"\(pip install bitsandbytes\), or choose another memory mode"):  # fmt: skip
        run(make_backend(paths), request)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="diffusers' bitsandbytes quantizer needs a CUDA GPU")
def test_on_cuda_a_diffusers_folder_saved_in_nf4_loads_through_diffusers(flux, paths, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    from diffusers import BitsAndBytesConfig, FluxTransformer2DModel

    folder = save_pipeline(flux["pipe"], tmp_path / "flux-nf4")
    quantised = FluxTransformer2DModel.from_pretrained(
        str(folder), subfolder="transformer", quantization_config=BitsAndBytesConfig(load_in_4bit=True,
        bnb_4bit_quant_type="nf4"), torch_dtype=torch.float16,
    )  # fmt: skip
    quantised.save_pretrained(str(folder / "transformer"))
    assert detect_model(folder).dit.bitsandbytes == "BNB_NF4"
    request = request_for(folder, negative_prompt="", device="cuda", precision="fp16", memory_mode="full")
    backend = make_backend(paths)
    got = pixels(run(backend, request)[0].images[0])
    assert backend._pipe.transformer.hf_quantizer is not None
    full = bare_image(bare_flux(flux["folder"]), replace(request, device="cpu"), guidance_scale=3.5)
    assert np.abs(got.astype(float) - full.astype(float)).mean() < NF4_MEAN_TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the nf4 mode's CUDA path needs a CUDA GPU")
def test_on_cuda_the_nf4_mode_runs_with_model_offload(flux, paths):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    request = request_for(flux["folder"], negative_prompt="", device="cuda", precision="fp16", memory_mode="nf4")
    backend = make_backend(paths)
    got = pixels(run(backend, request)[0].images[0])
    assert type(backend._pipe.transformer.proj_out).__name__ == "Linear4bit"
    full = bare_image(bare_flux(flux["folder"]), replace(request, device="cpu"), guidance_scale=3.5)
    assert np.abs(got.astype(float) - full.astype(float)).mean() < NF4_MEAN_TOLERANCE


def test_an_llm_int8_file_is_named_and_matches_diffusers_on_its_dequantised_weights(flux, paths, tmp_path):
    # bitsandbytes' int8 serialisation: int8 rows, each row's absolute maximum (`SCB`), a format byte. Read
    # without bitsandbytes: weight = int8 x SCB x (1/127), in float32 as bitsandbytes computes it.
    pipe = flux["pipe"]
    file, exact = {}, {}
    for key, value in flux_to_bfl(pipe.transformer.state_dict()).items():
        if value.ndim == 2 and key.endswith(".weight"):
            rows = value.float().abs().amax(dim=1).clamp(min=1e-8)
            stored = torch.round(value.float() * 127 / rows[:, None]).to(torch.int8)
            layer = PREFIX + key.removesuffix("weight")
            file |= {PREFIX + key: stored, layer + "SCB": rows}
            file[layer + "weight_format"] = torch.tensor(0, dtype=torch.uint8)
            exact[key] = stored.float() * rows[:, None] * 7.874015718698502e-3
        else:
            file[PREFIX + key] = exact[key] = value.contiguous()
    path = tmp_path / "flux1-dev-int8.safetensors"
    save_file(file, str(path))
    arch = detect_model(path)
    assert arch.dit.bitsandbytes == "BNB_INT8"
    assert arch.dit.parameters == sum(v.numel() for v in pipe.transformer.state_dict().values())
    record = Library(AppPaths.for_root(tmp_path / "lib").ensure()).import_path(path, "model", name="int8")
    assert record.shown_architecture.endswith(", int8 (bitsandbytes)"), record.shown_architecture
    request = request_for(path, negative_prompt="", distilled_cfg_scale=3.5, model_config=str(flux["config"]),
                          text_encoders=str(flux["folder"]))  # fmt: skip
    got = pixels(run(make_backend(paths), request)[0].images[0])
    expected = bare_image(bare_flux(flux["folder"], with_weights(pipe.transformer, convert_flux_bfl(exact))), request,
                          guidance_scale=3.5, max_sequence_length=512)  # fmt: skip
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_a_lora_applies_on_the_quantised_layers(flux, paths, mode):
    layer_names = {"nf4": "Linear4bit", "int8": "Linear8bitLt"}
    # PEFT wraps bitsandbytes' layers (they are torch Linear layers) as it wraps full-precision ones: the LoRA
    # changes the image, and the quantised image with the LoRA stays close to the full-precision one with it.
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    from tests.support.tiny_dit_loras import peft_lora
    from tests.support.tiny_loras import save_lora

    save_lora(peft_lora(flux["pipe"].transformer, seed=1, scale=1.0), paths.loras / "style.safetensors")
    values = dict(negative_prompt="", distilled_cfg_scale=3.5)
    backend = make_backend(paths)
    tagged = request_for(flux["folder"], prompt="a red circle <lora:style:1>", memory_mode=mode, **values)
    # Full precision with the LoRA first: entering the mode then drops the LoRA's layers and loads them again,
    # so they are not quantised with the model's.
    full = pixels(run(backend, replace(tagged, memory_mode="full"))[0].images[0])
    quantised = pixels(run(backend, tagged)[0].images[0])
    wrapped = backend._pipe.transformer.transformer_blocks[0].attn.to_q
    assert type(wrapped.base_layer).__name__ == layer_names[mode]
    assert all(type(down) is torch.nn.Linear for down in wrapped.lora_A.values())  # the LoRA kept as it is
    plain = pixels(run(backend, replace(tagged, prompt="a red circle"))[0].images[0])
    effect = np.abs(quantised.astype(float) - plain.astype(float)).mean()
    error = np.abs(quantised.astype(float) - full.astype(float)).mean()
    assert effect > 2 * MODE_TOLERANCE[mode] and error < MODE_TOLERANCE[mode], (effect, error)


def test_forges_all_in_one_nf4_file_runs_with_its_own_fp8_t5_clip_and_vae(flux, paths, tmp_path):
    # lllyasviel's flux1-dev-bnb-nf4 files: the nf4 transformer beside CLIP-L, an fp8 (e4m3fn) T5 and the VAE.
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    from safetensors.torch import load_file

    from tests.support.tiny_dit import save_all_in_one

    pipe = flux["pipe"]
    whole = load_file(str(save_all_in_one(pipe, tmp_path / "aio.safetensors")))
    file, exact = forge_nf4(flux_to_bfl(pipe.transformer.state_dict()))
    t5 = {k: v.to(torch.float8_e4m3fn) for k, v in whole.items() if k.startswith("text_encoders.t5xxl.")}
    rest = {k: v for k, v in whole.items() if k.startswith(("text_encoders.clip_l.", "vae."))}
    path = tmp_path / "flux1-dev-bnb-nf4-v2.safetensors"
    save_file(file | t5 | rest, str(path))
    arch = detect_model(path)
    assert arch.dit.bitsandbytes == "BNB_NF4" and not arch.dit.needs_components
    request = request_for(path, negative_prompt="", distilled_cfg_scale=3.5, model_config=str(flux["config"]))
    got = pixels(run(make_backend(paths), request)[0].images[0])
    bare = bare_flux(flux["folder"], with_weights(pipe.transformer, convert_flux_bfl(exact)))
    rounded = {k: v.to(torch.float8_e4m3fn).float() for k, v in pipe.text_encoder_2.state_dict().items()}
    bare.text_encoder_2 = with_weights(pipe.text_encoder_2, rounded).eval()  # the built T5 is in training mode
    extra = {"guidance_scale": 3.5, "max_sequence_length": 512}
    assert np.array_equal(got, bare_image(bare, request, **extra))
    # The T5 was read from the file in fp8: its full-precision weights give another picture.
    assert not np.array_equal(got, bare_image(bare_flux(flux["folder"], bare.transformer), request, **extra))
