"""Text encoders saved with bitsandbytes (transformers' load_in_4bit / load_in_8bit: packed nf4/fp4 `weight`
beside `weight.absmax`, `weight.quant_map`, `weight.nested_*`, `weight.quant_state.bitsandbytes__nf4`; int8
`weight` beside `SCB`) as library components: named by their quantisation, dequantised at load by the code that
reads bitsandbytes model files, and run pixel-identical to the same job with the dequantised weights saved as a
plain float32 file. The files are quantised here by bitsandbytes' own functional API, on the CPU.

bitsandbytes is optional (pyproject's `quant` extra; in `test`): without it these tests skip."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from desktop.engine.backends.bnb_layers import stored_tensors
from desktop.engine.errors import ModelError
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, run
from tests.engine.test_encoder_library import PROMPT_ARGS, bare, flux_request
from tests.engine.test_model_families import bare_image
from tests.engine.test_qwen_encoder_library import z_expected, z_request, zimage  # noqa: F401 - a fixture, by name
from tests.support.tiny_components import save_ae, save_clip_l, save_t5
from tests.support.tiny_dit import build_tiny_flux, config_folder, save_bfl_file
from tests.support.tiny_qwen_encoders import comfy_qwen_state

pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")

# What transformers leaves unquantised: embeddings, T5's `wo` (kept in float32), the LM head; CLIP's projection
# is no layer of the un-projected CLIP-L.
KEPT = ("embed", "shared", "relative_attention_bias", ".wo.", "lm_head", "text_projection")
SHOWN = {"nf4": "nf4 (bitsandbytes)", "fp4": "fp4 (bitsandbytes)", "int8": "int8 (bitsandbytes)"}


def bitsandbytes_file(state, kind, kept=KEPT):
    """(the file's tensors as transformers saves a bitsandbytes-quantised encoder, the weights bitsandbytes
    dequantises them to): each linear weight quantised by bitsandbytes' functional API (4-bit with
    double-quantised absmax, as load_in_4bit's default), the rest as it was; `kept`: name parts left as they are."""
    import bitsandbytes.functional as F

    file, exact = {}, {}
    for key, value in state.items():
        if value.ndim != 2 or not key.endswith(".weight") or any(part in key for part in kept):
            file[key] = exact[key] = value.contiguous()
            continue
        weight = value.float().contiguous()
        if kind == "int8":
            rows, scale, _ = F.int8_vectorwise_quant(weight)
            layer = key.removesuffix("weight")
            file |= {key: rows, layer + "SCB": scale, layer + "weight_format": torch.tensor(0, dtype=torch.uint8)}
            exact[key] = F.int8_vectorwise_dequant(rows, scale)
        else:
            packed, quant_state = F.quantize_4bit(weight, quant_type=kind, compress_statistics=True)
            file[key] = packed
            file |= {f"{key}.{part}": tensor for part, tensor in quant_state.as_dict(packed=True).items()}
            exact[key] = F.dequantize_4bit(packed, quant_state)
    return file, exact


def assert_packed(layer, kind):
    """`layer` holds its file's codes (uint8 for 4-bit, int8 rows for LLM.int8), not a plain weight."""
    stored = stored_tensors(layer)
    assert stored is not None and not hasattr(layer, "weight"), layer
    assert stored["weight"].dtype == (torch.int8 if kind == "int8" else torch.uint8)


def save(state, path):
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bnb-encoders")
    pipe = build_tiny_flux(latent_channels=16)
    pipe.set_progress_bar_config(disable=True)
    return {
        "pipe": pipe,
        "config": config_folder(pipe, tmp / "config"),
        "model": save_bfl_file(pipe, tmp / "flux-only.safetensors", prefix="model.diffusion_model."),
        "clip_l": load_file(str(save_clip_l(pipe.text_encoder, tmp / "clip_l.safetensors"))),
        "t5": load_file(str(save_t5(pipe.text_encoder_2, tmp / "t5xxl_fp32.safetensors"))),
        "ae": save_ae(pipe.vae, tmp / "ae.safetensors"),
        "tmp": tmp,
    }


@pytest.fixture
def home(tmp_path, flux):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    Library(paths).import_path(flux["ae"], "vae")
    return paths


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_bitsandbytes_encoders_are_named_and_run_as_their_dequantised_copy(home, flux, kind, tmp_path):
    library = Library(home)
    names = []
    for encoder in ("clip_l", "t5"):
        file, exact = bitsandbytes_file(flux[encoder], kind)
        path = save(file, tmp_path / f"{encoder}_{kind}.safetensors")
        assert guess_kind(path) == "encoder"  # a dropped file goes to the text encoders
        quantised = library.import_path(path, "encoder")
        assert quantised.dtype == f"BNB_{kind.upper()}", quantised.dtype
        assert quantised.shown_architecture.endswith(SHOWN[kind]), quantised.shown_architecture
        # Counted unpacked, without the quantisation states: the plain file's count.
        assert quantised.parameters == sum(value.numel() for value in flux[encoder].values())
        library.import_path(save(exact, tmp_path / f"{encoder}_{kind}_dequantised.safetensors"), "encoder")
        names.append(quantised.name)
    request = flux_request(flux["model"], flux, encoders=",".join(names))
    backend = make_backend(home)
    got = pixels(run(backend, request)[0].images[0])
    # T5 ran packed (bnb_layers.py); CLIP-L was dequantised at load, plain for LoRAs.
    assert_packed(backend._pipe.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q, kind)
    assert not any(stored_tensors(module) is not None for module in backend._pipe.text_encoder.modules())
    plain = flux_request(flux["model"], flux, encoders=",".join(f"{name}_dequantised" for name in names))
    assert np.array_equal(got, pixels(run(make_backend(home), plain)[0].images[0]))
    # The quantisation was used: the original weights give another picture.
    assert not np.array_equal(got, bare_image(bare(flux["pipe"]), request, **PROMPT_ARGS))


def test_a_z_image_runs_with_an_nf4_qwen3_as_with_its_dequantised_copy(zimage, tmp_path):  # noqa: F811
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(zimage["ae"], "vae")
    state = comfy_qwen_state(zimage["pipe"].text_encoder)
    file, exact = bitsandbytes_file(state, "nf4")
    path = save(file, tmp_path / "qwen_3_4b_bnb_nf4.safetensors")
    assert guess_kind(path) == "encoder"
    record = library.import_path(path, "encoder")
    assert (record.family, record.dtype) == ("qwen3", "BNB_NF4"), (record.family, record.dtype)
    assert record.parameters == sum(value.numel() for value in state.values())
    library.import_path(save(exact, tmp_path / "qwen_3_4b_dequantised.safetensors"), "encoder")
    request = z_request(zimage, encoders=record.name)
    backend = make_backend(paths)
    got = pixels(run(backend, request)[0].images[0])
    assert_packed(backend._pipe.text_encoder.layers[0].self_attn.q_proj, "nf4")
    plain = z_request(zimage, encoders="qwen_3_4b_dequantised")
    assert np.array_equal(got, pixels(run(make_backend(paths), plain)[0].images[0]))
    assert not np.array_equal(got, z_expected(zimage, request))  # the nf4 weights were used


def test_damaged_bitsandbytes_encoders_are_refused_by_name(home, flux, tmp_path, monkeypatch):
    library = Library(home)
    t5 = "encoder.block.0.layer.0.SelfAttention.q.weight"
    nf4, _ = bitsandbytes_file(flux["t5"], "nf4")
    int8, _ = bitsandbytes_file(flux["t5"], "int8")
    damaged = {
        # A state that lost a part: bitsandbytes cannot read it back.
        "t5_no_absmax": ({k: v for k, v in nf4.items() if k != t5 + ".absmax"}, rf"{t5} does not dequantise"),
        # Statistics cut short (bitsandbytes would read past their end and run on noise), and compressed
        # statistics without their second level: refused from their sizes, before anything runs.
        "t5_short_absmax": ({**nf4, t5 + ".absmax": nf4[t5 + ".absmax"][:-1]},
                            rf"{t5} does not dequantise \(absmax holds \d+ statistics where shape"),  # fmt: skip
        "t5_no_second_level": ({k: v for k, v in nf4.items() if k != t5 + ".nested_absmax"},
                               rf"{t5} does not dequantise \(its statistics are compressed but"),  # fmt: skip
        "t5_short_codes": ({**nf4, t5: nf4[t5][:-1]}, rf"{t5} does not dequantise \(weight holds"),
        # Packed codes with no state at all: not weights to cast.
        "t5_no_state": ({k: v for k, v in nf4.items() if not k.startswith(t5 + ".")},
                        rf"{t5} is packed 4-bit without its quantisation state"),  # fmt: skip
        # An int8 row without its scale.
        "t5_no_scb": ({k: v for k, v in int8.items() if k != t5.removesuffix("weight") + "SCB"},
                      rf"{t5} is int8 without its scale"),  # fmt: skip
    }
    backend = make_backend(home)
    library.import_path(save(flux["clip_l"], tmp_path / "clip_l.safetensors"), "encoder")
    for name, (state, message) in damaged.items():
        library.import_path(save(state, tmp_path / f"{name}.safetensors"), "encoder")
        shown = rf"The text encoder '{name}' \({name}\.safetensors\)"
        with pytest.raises(ModelError, match=rf"{shown}: {message}.* damaged"):
            run(backend, flux_request(flux["model"], flux, encoders=f"clip_l,{name}"))
    # Without bitsandbytes a 4-bit encoder says what to install (int8 is read without it).
    library.import_path(save(nf4, tmp_path / "t5_nf4.safetensors"), "encoder")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ModelError, match=r"'t5_nf4' \(t5_nf4\.safetensors\) holds nf4 \(bitsandbytes\) weights, "
                                         r"which need the bitsandbytes package: install"):  # fmt: skip
        run(backend, flux_request(flux["model"], flux, encoders="clip_l,t5_nf4"))


def test_an_nf4_qwen25_vl_with_its_vision_tower_loads_as_its_dequantised_copy(tmp_path):
    from desktop.engine.backends.encoder_components import Component, inspect_component, load_encoder
    from tests.support.tiny_qwen_zimage import build_tiny_qwen_image

    pipe = build_tiny_qwen_image()
    state = comfy_qwen_state(pipe.text_encoder)  # with `visual.*` and lm_head beside the `model.` level
    file, exact = bitsandbytes_file(state, "nf4")
    record = Library(AppPaths.for_root(tmp_path / "home").ensure()).import_path(
        save(file, tmp_path / "qwen_2.5_vl_7b_bnb_nf4.safetensors"), "encoder"
    )
    assert (record.family, record.dtype) == ("qwen2.5-vl", "BNB_NF4"), (record.family, record.dtype)
    assert record.parameters == sum(value.numel() for value in state.values())
    assert "with its vision tower" in record.shown_architecture, record.shown_architecture
    config = config_folder(pipe, tmp_path / "config") / "text_encoder"
    loaded = []
    for path in (tmp_path / "qwen_2.5_vl_7b_bnb_nf4.safetensors", save(exact, tmp_path / "plain.safetensors")):
        component = Component(path.stem, path)
        loaded.append(load_encoder(config, "Qwen2_5_VLForConditionalGeneration", component,
                                   inspect_component(component), dtype=torch.float32))  # fmt: skip
    packed, plain = loaded
    # The linear layers the file quantised run packed, the vision tower's too, and compute as the dequantised
    # copy's; every other tensor is the copy's.
    kept = {name: module for name, module in packed.named_modules() if stored_tensors(module) is not None}
    assert any(name.startswith("model.visual.") for name in kept)
    layers = dict(plain.named_modules())
    torch.manual_seed(0)
    for name, layer in kept.items():
        x = torch.randn(3, layers[name].in_features)
        assert torch.equal(layer(x), layers[name](x)), name
    rest = {key: value for key, value in packed.state_dict().items() if ".bnb_" not in key}
    want = plain.state_dict()
    assert rest.keys() == want.keys() - {f"{name}.weight" for name in kept}
    assert all(torch.equal(rest[key], want[key]) for key in rest)
    # The vision tower's linear layers were quantised too.
    assert any(key.startswith("visual.") and key.endswith(".weight.absmax") for key in file)


def test_the_cli_runs_sd3_with_bitsandbytes_encoders_as_with_their_dequantised_copies(tmp_path):
    from PIL import Image

    from tests.e2e.test_cli import in_process
    from tests.support.tiny_dit import build_tiny_sd3
    from tests.support.tiny_models import open_clip_to_ldm

    pipe = build_tiny_sd3()
    model = save({k: v for k, v in pipe.transformer.state_dict().items()}, tmp_path / "sd3-transformer.safetensors")
    config = config_folder(pipe, tmp_path / "config")
    home = ["--home", str(tmp_path / "home")]
    encoders = {
        "clip_l_bnb_nf4": (load_file(str(save_clip_l(pipe.text_encoder, tmp_path / "clip_l.safetensors"))), "nf4"),
        # OpenCLIP's layout (as cut from an SDXL checkpoint): dequantised before diffusers' converter reads it.
        "clip_g_bnb_int8": (open_clip_to_ldm(pipe.text_encoder_2.state_dict(), ""), "int8"),
        "t5xxl_bnb_fp4": (load_file(str(save_t5(pipe.text_encoder_3, tmp_path / "t5.safetensors"))), "fp4"),
    }
    for name, (state, kind) in encoders.items():
        file, exact = bitsandbytes_file(state, kind)
        for path in (save(file, tmp_path / f"{name}.safetensors"), save(exact, tmp_path / f"{name}_plain.safetensors")):
            code, _, err = in_process(["encoders", "import", str(path), *home])
            assert code == 0, err
    code, out, _ = in_process(["encoders", "list", *home])
    shown = {line.split("\t")[0]: line for line in out.splitlines()}
    assert "nf4 (bitsandbytes)" in shown["clip_l_bnb_nf4"] and "int8 (bitsandbytes)" in shown["clip_g_bnb_int8"]
    assert "fp4 (bitsandbytes)" in shown["t5xxl_bnb_fp4"] and "bitsandbytes" not in shown["t5xxl_bnb_fp4_plain"]
    assert in_process(["vaes", "import", str(save_ae(pipe.vae, tmp_path / "sd3-vae.safetensors")), *home])[0] == 0
    images = []
    for suffix in ("", "_plain"):
        image = tmp_path / f"sd3{suffix}.png"
        code, _, err = in_process([
            "generate", "--model", str(model), "--prompt", "a red circle", "--seed", "42", "--width", "64",
            "--height", "64", "--steps", "2", "--cfg", "5", "--device", "cpu", "--config", str(config),
            "--text-encoders", ",".join(name + suffix for name in encoders), "--vae", "sd3-vae",
            "--out", str(image), "--no-preview", *home,
        ])  # fmt: skip
        assert code == 0, err
        images.append(np.asarray(Image.open(image).convert("RGB")))
    assert np.array_equal(images[0], images[1])


def test_chroma_runs_with_an_nf4_t5_from_the_library_as_with_its_dequantised_copy(tmp_path):
    # Chroma's own path (one T5, true CFG, no pooled CLIP) reads library encoders through its own assembly.
    from tests.engine.test_chroma import bare_chroma, chroma_request
    from tests.engine.test_chroma import bare_image as bare_chroma_image
    from tests.support.tiny_chroma import build_tiny_chroma, save_chroma_file
    from tests.support.tiny_dit import save_pipeline

    pipe = build_tiny_chroma()
    chroma = {"config": config_folder(pipe, tmp_path / "config")}
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    file, exact = bitsandbytes_file(load_file(str(save_t5(pipe.text_encoder, tmp_path / "t5.safetensors"))), "nf4")
    assert library.import_path(save(file, tmp_path / "t5xxl_nf4.safetensors"), "encoder").dtype == "BNB_NF4"
    library.import_path(save(exact, tmp_path / "t5xxl_dequantised.safetensors"), "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "ae.safetensors"), "vae")
    model = save_chroma_file(pipe, tmp_path / "chroma-only.safetensors", prefix="model.diffusion_model.")
    request = chroma_request(model, chroma, text_encoders="t5xxl_nf4", vae="ae", steps=2)
    backend = make_backend(paths)
    got = pixels(run(backend, request)[0].images[0])
    assert_packed(backend._pipe.text_encoder.encoder.block[0].layer[1].DenseReluDense.wi_0, "nf4")
    plain = chroma_request(model, chroma, text_encoders="t5xxl_dequantised", vae="ae", steps=2)
    assert np.array_equal(got, pixels(run(make_backend(paths), plain)[0].images[0]))
    assert not np.array_equal(got, bare_chroma_image(bare_chroma(save_pipeline(pipe, tmp_path / "chroma")), request))
