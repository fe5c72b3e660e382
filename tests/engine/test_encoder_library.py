"""Text encoders as library components: ComfyUI-style clip_l / t5xxl / T5 GGUF files and a Flux VAE in BFL
names, imported once, named by the request beside a transformer-only Flux (and SD3) file, and loaded
pixel-identical to bare diffusers built from the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from desktop.engine.backends.scaled_fp8_layers import stored_fp8
from desktop.engine.errors import ModelError
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_image
from tests.support.tiny_components import save_ae, save_clip_l, save_t5, save_t5_gguf
from tests.support.tiny_dit import build_tiny_flux, build_tiny_sd3, config_folder, save_bfl_file
from tests.support.tiny_models import open_clip_to_ldm

PROMPT_ARGS = {"guidance_scale": 3.5, "max_sequence_length": 512}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encoders")
    pipe = build_tiny_flux(latent_channels=16)
    pipe.set_progress_bar_config(disable=True)
    other = build_tiny_flux(latent_channels=16, seed=1)  # a second model: another transformer, same encoders
    return {
        "pipe": pipe,
        "config": config_folder(pipe, tmp / "config"),
        # Transformer-only files in ComfyUI's prefixed BFL layout.
        "model": save_bfl_file(pipe, tmp / "flux-a.safetensors", prefix="model.diffusion_model."),
        "model_b": save_bfl_file(other, tmp / "flux-b.safetensors", prefix="model.diffusion_model."),
        "other": other,
        "clip_l": save_clip_l(pipe.text_encoder, tmp / "clip_l.safetensors"),
        "t5": save_t5(pipe.text_encoder_2, tmp / "t5xxl_fp16.safetensors"),
        "t5_fp8": save_t5(pipe.text_encoder_2, tmp / "t5xxl_fp8_e4m3fn.safetensors", torch.float8_e4m3fn),
        "t5_gguf": save_t5_gguf(pipe.text_encoder_2, tmp / "t5-v1_1-xxl-encoder-Q8_0.gguf"),
        "ae": save_ae(pipe.vae, tmp / "ae.safetensors"),
        "tmp": tmp,
    }


@pytest.fixture
def home(tmp_path, parts):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    for key in ("clip_l", "t5", "t5_fp8", "t5_gguf"):
        library.import_path(parts[key], "encoder")
    library.import_path(parts["ae"], "vae")
    return paths


def flux_request(model, parts, encoders="clip_l,t5xxl_fp16", **changes):
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, model_config=str(parts["config"]), steps=2,
                  text_encoders=encoders, vae="ae")  # fmt: skip
    return request_for(model, **(values | changes))


def bare(pipe, **swap):
    """A bare FluxPipeline from the tiny model's own modules (those the component files were saved from)."""
    modules = {k: v for k, v in pipe.components.items()} | swap
    for module in modules.values():
        if hasattr(module, "eval"):
            module.eval()  # as from_pretrained leaves them: no dropout
    built = FluxPipeline(**modules)
    built.set_progress_bar_config(disable=True)
    return built


def test_library_encoders_and_vae_match_bare_diffusers_and_are_stored_once(home, parts):
    records = {r.name: r for r in Library(home).records("encoder")}
    assert (records["clip_l"].family, records["clip_l"].format) == ("clip", "transformers")
    assert (records["t5xxl_fp8_e4m3fn"].dtype, records["t5-v1_1-xxl-encoder-Q8_0"].dtype) == ("F8_E4M3", "Q8_0")
    assert "fp8 e4m3fn" in records["t5xxl_fp8_e4m3fn"].shown_architecture
    request = flux_request(parts["model"], parts)
    batch, _ = run(make_backend(home), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare(parts["pipe"]), request, **PROMPT_ARGS))
    # A second model names the same encoders: still one file each on disk, one row each in the library.
    request_b = flux_request(parts["model_b"], parts, encoders="t5xxl_fp16,clip_l")  # any order
    batch_b, _ = run(make_backend(home), request_b)
    reference = bare(parts["pipe"], transformer=parts["other"].transformer)
    assert np.array_equal(pixels(batch_b.images[0]), bare_image(reference, request_b, **PROMPT_ARGS))
    assert sorted(p.name for p in home.text_encoders.iterdir()) == sorted(r.file for r in records.values())
    # Importing the same file again, under any name, is refused: it is stored once.
    with pytest.raises(ModelError, match=r"clip_l\.safetensors is already in the library as the text encoder 'clip_l'"):
        Library(home).import_path(parts["clip_l"], "encoder", name="clip-copy")
    with pytest.raises(ModelError, match=r"already in the library as the VAE 'ae'"):
        Library(home).import_path(parts["ae"], "vae", name="flux-vae")
    assert len(Library(home).records("encoder")) == 4 and len(list(home.text_encoders.iterdir())) == 4


def gguf_rounded(t5, quant):
    """The reference: `t5` with every weight a GGUF file quantises (save_t5_gguf's rule) rounded through
    `quant` by gguf itself."""
    import gguf

    kind = gguf.GGMLQuantizationType[quant]
    reference = type(t5)(t5.config).eval()
    state = {}
    for key, value in t5.state_dict().items():
        data = value.float().numpy()
        if data.ndim == 2 and data.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0] == 0:
            data = gguf.quants.dequantize(gguf.quants.quantize(data, kind), kind)
        state[key] = torch.from_numpy(np.array(data, dtype=np.float32))
    reference.load_state_dict(state)
    return reference


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "Q5_1"])
def test_a_t5_gguf_stays_packed_and_computes_its_dequantised_weights(home, parts, quant, tmp_path):
    path = parts["t5_gguf"]
    if quant != "Q8_0":
        path = save_t5_gguf(parts["pipe"].text_encoder_2, tmp_path / f"t5-v1_1-xxl-encoder-{quant}.gguf", quant)
        Library(home).import_path(path, "encoder")
    request = flux_request(parts["model"], parts, encoders=f"clip_l,{path.stem}")
    backend = make_backend(home)
    batch, _ = run(backend, request)
    # Kept packed in memory: the linear layers hold the file's blocks (uint8), dequantised as they run; only
    # T5's `wo` (whose dtype T5 casts its input to) and the non-linear tensors are dequantised at load.
    t5 = backend._pipe.text_encoder_2
    attention = t5.encoder.block[0].layer[0].SelfAttention
    assert attention.q.blocks.dtype == torch.uint8 and not attention.q.blocks.requires_grad
    assert [name for name, _ in attention.q.named_parameters()] == ["blocks"]  # no plain weight beside them
    assert t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    packed = {name: module.blocks for name, module in t5.named_modules() if hasattr(module, "blocks")}
    assert len(packed) == 6 * t5.config.num_layers  # q, k, v, o, wi_0, wi_1 per block
    plain = dict(parts["pipe"].text_encoder_2.named_modules())
    stored = sum(blocks.numel() for blocks in packed.values())
    full = sum(plain[name].weight.numel() * 4 for name in packed)  # float32
    assert stored <= full * {"Q8_0": 34 / 32, "Q4_0": 18 / 32, "Q5_1": 24 / 32}[quant] / 4, (stored, full)
    reference = gguf_rounded(parts["pipe"].text_encoder_2, quant)
    expected = bare_image(bare(parts["pipe"], text_encoder_2=reference), request, **PROMPT_ARGS)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(bare(parts["pipe"]), request, **PROMPT_ARGS))  # the quant was used


def test_sequential_offload_moves_a_gguf_t5s_blocks_off_the_device(home, parts):
    """Sequential offload (accelerate's cpu_offload, called as diffusers calls it: buffers offloaded only for a
    module with parameters of its own, which an encoder lacks) moves the packed blocks out between calls, as
    it moves plain weights; they came back for the call, so the encoding is unchanged. (On a CPU the
    execution device is the CPU; offloaded means on the meta device, the weights kept aside.)"""
    from accelerate import cpu_offload

    backend = make_backend(home)
    run(backend, flux_request(parts["model"], parts, encoders="clip_l,t5-v1_1-xxl-encoder-Q8_0"))
    t5 = backend._pipe.text_encoder_2
    ids = torch.tensor([[37, 1, 0, 5, 9]])
    with torch.no_grad():
        before = t5(ids).last_hidden_state
    cpu_offload(t5, torch.device("cpu"), offload_buffers=len(t5._parameters) > 0)
    layer = t5.encoder.block[0].layer[0].SelfAttention.q
    assert layer.blocks.device.type == "meta"
    with torch.no_grad():
        assert torch.equal(t5(ids).last_hidden_state, before)


def test_an_fp8_t5_stays_stored_in_fp8_and_computes_its_own_weights(home, parts):
    request = flux_request(parts["model"], parts, encoders="clip_l,t5xxl_fp8_e4m3fn")
    backend = make_backend(home)
    batch, _ = run(backend, request)
    t5 = backend._pipe.text_encoder_2
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    reference = type(t5)(t5.config).eval()
    own = parts["pipe"].text_encoder_2.state_dict()
    reference.load_state_dict({k: v.to(torch.float8_e4m3fn).float() for k, v in own.items()})
    expected = bare_image(bare(parts["pipe"], text_encoder_2=reference), request, **PROMPT_ARGS)
    assert np.array_equal(pixels(batch.images[0]), expected)


@pytest.mark.parametrize("mixed", [None, "encoder.block.1."], ids=["marker", "comfy_quant"])
def test_a_scaled_fp8_t5_loads_as_its_dequantised_weights(home, parts, mixed):
    from safetensors.torch import save_file

    from tests.engine.test_scaled_fp8 import scaled_fp8

    own = {k: v for k, v in parts["pipe"].text_encoder_2.state_dict().items() if k != "encoder.embed_tokens.weight"}
    file, exact, unscaled = scaled_fp8(own, mixed=mixed)
    path = parts["tmp"] / f"t5xxl_fp8_e4m3fn_scaled_{'mixed' if mixed else 'marker'}.safetensors"
    save_file(file, str(path))
    record = Library(home).import_path(path, "encoder", name="t5_scaled")
    assert record.dtype.endswith("_SCALED") and "scaled" in record.shown_architecture, record.shown_architecture
    request = flux_request(parts["model"], parts, encoders="clip_l,t5_scaled")
    backend = make_backend(home)
    batch, _ = run(backend, request)
    # Kept in fp8 (scaled_fp8_layers.py): every scaled linear layer but T5's `wo` holds the file's fp8 bytes.
    t5 = backend._pipe.text_encoder_2
    kept = {name: stored_fp8(module) for name, module in t5.named_modules() if stored_fp8(module) is not None}
    scaled = {key.removesuffix(".weight") for key in exact if key.removesuffix("weight") + "scale_weight" in file
              or key.removesuffix("weight") + "weight_scale" in file}  # fmt: skip
    plain = ("shared", "relative_attention_bias", ".wo")  # embeddings and `wo`: dequantised at load
    assert set(kept) == {name for name in scaled if not name.endswith(plain)} and kept
    assert all(torch.equal(v.view(torch.uint8), file[f"{k}.weight"].view(torch.uint8)) for k, v in kept.items())

    def t5_with(weights):
        t5 = type(parts["pipe"].text_encoder_2)(parts["pipe"].text_encoder_2.config).eval()
        t5.load_state_dict(weights, strict=False)
        t5.encoder.embed_tokens = t5.shared
        return t5

    expected = bare_image(bare(parts["pipe"], text_encoder_2=t5_with(exact)), request, **PROMPT_ARGS)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # The scales mattered: the stored fp8 values alone give another picture.
    assert not np.array_equal(expected, bare_image(bare(parts["pipe"], text_encoder_2=t5_with(unscaled)), request,
                                                   **PROMPT_ARGS))  # fmt: skip


def test_a_scaled_fp8_clip_l_loads_as_its_dequantised_weights(home, parts):
    from safetensors.torch import load_file, save_file

    from tests.engine.test_scaled_fp8 import scaled_fp8

    # ComfyUI's clip_l_fp8_scaled layout: the tiny CLIP-L's own file, each 2-D weight in e4m3fn beside its scale.
    file, exact, unscaled = scaled_fp8(load_file(str(parts["clip_l"])))
    path = parts["tmp"] / "clip_l_fp8_e4m3fn_scaled.safetensors"
    save_file(file, str(path))
    record = Library(home).import_path(path, "encoder", name="clip_l_scaled")
    assert record.dtype == "F8_E4M3_SCALED" and record.family == "clip", (record.dtype, record.family)
    request = flux_request(parts["model"], parts, encoders="clip_l_scaled,t5xxl_fp16")
    backend = make_backend(home)
    batch, _ = run(backend, request)
    # CLIP stays dequantised at load: Marble's LoRAs patch its nn.Linear layers.
    assert not any(stored_fp8(module) is not None for module in backend._pipe.text_encoder.modules())

    def clip_with(weights):
        clip = type(parts["pipe"].text_encoder)(parts["pipe"].text_encoder.config).eval()
        own = {key.removeprefix("text_model."): value for key, value in weights.items()}
        missing, _ = clip.load_state_dict(own, strict=False)
        assert not [key for key in missing if not key.endswith("position_ids")], missing
        return clip

    expected = bare_image(bare(parts["pipe"], text_encoder=clip_with(exact)), request, **PROMPT_ARGS)
    assert np.array_equal(pixels(batch.images[0]), expected)
    # The scales mattered: the stored fp8 values alone give another picture.
    assert not np.array_equal(expected, bare_image(bare(parts["pipe"], text_encoder=clip_with(unscaled)), request,
                                                   **PROMPT_ARGS))  # fmt: skip


def test_sd3_takes_two_clips_and_a_t5_from_the_library(tmp_path):
    from safetensors.torch import save_file

    pipe = build_tiny_sd3()
    pipe.set_progress_bar_config(disable=True)
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    model = tmp_path / "sd3-transformer.safetensors"
    save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, str(model))
    library.import_path(save_clip_l(pipe.text_encoder, tmp_path / "clip_l.safetensors"), "encoder")
    # CLIP-G in OpenCLIP's layout, as cut from an SDXL checkpoint (fused in_proj, resblocks, x @ P projection).
    clip_g = open_clip_to_ldm(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model.")
    save_file({k: v.contiguous() for k, v in clip_g.items()}, str(tmp_path / "clip_g.safetensors"))
    record = library.import_path(tmp_path / "clip_g.safetensors", "encoder")
    assert (record.format, record.family) == ("openclip", "clip")
    library.import_path(save_t5(pipe.text_encoder_3, tmp_path / "t5xxl.safetensors"), "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "sd3-vae.safetensors"), "vae")
    request = request_for(model, model_config=str(config_folder(pipe, tmp_path / "config")), steps=2,
                          cfg_scale=5.0, text_encoders="clip_l,clip_g,t5xxl", vae="sd3-vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    for module in pipe.components.values():
        if hasattr(module, "eval"):
            module.eval()
    # SD3 reads CLIP-L's pooled output unprojected (Stability's reference, ComfyUI, diffusers' single-file
    # loader): the projection clip_l.safetensors holds (random here) takes no part.
    projection = pipe.text_encoder.text_projection.weight
    assert not torch.equal(projection, torch.eye(32))
    with_file_projection = bare_image(StableDiffusion3Pipeline(**pipe.components), request,
                                      negative_prompt=request.negative_prompt, guidance_scale=5.0)  # fmt: skip
    with torch.no_grad():
        projection.copy_(torch.eye(32))
    expected = bare_image(StableDiffusion3Pipeline(**pipe.components), request,
                          negative_prompt=request.negative_prompt, guidance_scale=5.0)  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, with_file_projection)


def test_wrong_files_are_refused_naming_the_file(home, parts, tiny_sd15_single, tmp_path):
    library = Library(home)
    unet, _ = tiny_sd15_single
    with pytest.raises(ModelError, match=r"tiny-sd15\.safetensors is not a text encoder on its own: it holds a diff"):
        library.import_path(unet, "encoder")
    with pytest.raises(ModelError, match=r"ae\.safetensors is not a text encoder: it is a VAE"):
        library.import_path(parts["ae"], "encoder", name="vae-as-encoder")
    truncated = tmp_path / "t5xxl_broken.safetensors"
    truncated.write_bytes(parts["t5"].read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"t5xxl_broken\.safetensors"):
        library.import_path(truncated, "encoder")
    assert guess_kind(parts["clip_l"]) == "encoder" and guess_kind(unet) == "model"
    assert guess_kind(parts["t5_gguf"]) == "encoder"  # a dropped T5 GGUF is no GGUF transformer
    assert [p.name for p in home.text_encoders.iterdir() if p.name.startswith(".")] == []  # no leftovers
    backend = make_backend(home)
    # Two T5s and no CLIP: the missing slot is named.
    with pytest.raises(ModelError, match=r"flux-a\.safetensors needs a CLIP \(width 32\) text encoder for its"):
        run(backend, flux_request(parts["model"], parts, encoders="t5xxl_fp16,t5xxl_fp8_e4m3fn"))
    with pytest.raises(ModelError, match=r"No text encoder named 'clip_x'"):
        run(backend, flux_request(parts["model"], parts, encoders="clip_x,t5xxl_fp16"))
    with pytest.raises(ModelError, match=r"choose its VAE too"):
        run(backend, flux_request(parts["model"], parts, vae=""))
    # A T5 that lacks one tensor is detected as a T5, but its load names the entry, the file and the tensor.
    from safetensors.torch import load_file, save_file

    dropped = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    short = {k: v for k, v in load_file(str(parts["t5"])).items() if k != dropped}
    save_file(short, str(tmp_path / "t5_short.safetensors"))
    library.import_path(tmp_path / "t5_short.safetensors", "encoder")
    with pytest.raises(ModelError, match=r"'t5_short' \(t5_short\.safetensors\) does not fit .*block\.1\.layer\.1"):
        run(backend, flux_request(parts["model"], parts, encoders="clip_l,t5_short"))
    # A library file replaced by a damaged one after import is caught at load, named.
    (home.text_encoders / "t5xxl_fp16.safetensors").unlink()
    (home.text_encoders / "t5xxl_fp16.safetensors").write_bytes(parts["t5"].read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"'t5xxl_fp16' \(t5xxl_fp16\.safetensors\)"):
        run(backend, flux_request(parts["model"], parts))


def test_cli_imports_lists_and_names_library_encoders(parts, tmp_path):
    from PIL import Image

    from desktop.engine.metadata import read_image_metadata
    from tests.e2e.test_cli import in_process

    home = ["--home", str(tmp_path / "home")]
    for key in ("clip_l", "t5"):
        code, out, err = in_process(["encoders", "import", str(parts[key]), *home])
        assert code == 0 and "Imported" in out, err
    assert in_process(["vaes", "import", str(parts["ae"]), *home])[0] == 0
    code, out, _ = in_process(["encoders", "list", *home])
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["clip_l", "t5xxl_fp16"]
    assert "T5 text encoder (width 32)" in out
    image = tmp_path / "fox.png"
    code, _, err = in_process([
        "generate", "--model", str(parts["model"]), "--prompt", "a red circle on a blue background", "--seed", "42",
        "--width", "64", "--height", "64", "--steps", "2", "--device", "cpu", "--config", str(parts["config"]),
        "--text-encoders", "CLIP_L, t5xxl_fp16", "--vae", "ae", "--out", str(image), "--no-preview", *home,
    ])  # fmt: skip
    assert code == 0, err
    request = read_image_metadata(image).request
    assert request.text_encoders == "clip_l,t5xxl_fp16"  # library names, as the library spells them
    expected = bare_image(bare(parts["pipe"]), flux_request(parts["model"], parts), **PROMPT_ARGS)
    assert np.array_equal(np.asarray(Image.open(image).convert("RGB")), expected)
    code, _, err = in_process([
        "generate", "--model", str(parts["model"]), "--prompt", "x", "--device", "cpu",
        "--text-encoders", "clip_l,t5_missing", *home,
    ])  # fmt: skip
    assert code != 0 and "No text encoder named 't5_missing'" in err and "Traceback" not in err


def test_chroma_takes_its_t5_and_vae_from_the_library(tmp_path):
    from tests.engine.test_chroma import bare_chroma, chroma_request
    from tests.engine.test_chroma import bare_image as bare_chroma_image
    from tests.support.tiny_chroma import build_tiny_chroma, save_chroma_file
    from tests.support.tiny_dit import save_pipeline

    pipe = build_tiny_chroma()
    chroma = {"config": config_folder(pipe, tmp_path / "config")}
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(save_t5(pipe.text_encoder, tmp_path / "t5xxl_fp16.safetensors"), "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "ae.safetensors"), "vae")
    model = save_chroma_file(pipe, tmp_path / "chroma-only.safetensors", prefix="model.diffusion_model.")
    request = chroma_request(model, chroma, text_encoders="t5xxl_fp16", vae="ae", steps=2)
    batch, _ = run(make_backend(paths), request)
    expected = bare_chroma_image(bare_chroma(save_pipeline(pipe, tmp_path / "chroma")), request)
    assert np.array_equal(pixels(batch.images[0]), expected)


def test_without_config_the_shipped_configs_say_which_encoders_a_model_needs(home, parts):
    # No --config: the shipped flux-dev folder is read, which wants the published CLIP-L and T5-XXL.
    with pytest.raises(ModelError, match=r"needs a CLIP-L text encoder for its text_encoder .*chosen: clip_l \(CLIP"):
        run(make_backend(home), flux_request(parts["model"], parts, model_config=None))


def test_forge_module_keys_are_written_and_restored(home, parts):
    from dataclasses import replace

    from desktop.engine.backends.base import VaeHash
    from desktop.engine.metadata import format_parameters, parse_parameters, request_from_parameters

    request = flux_request(parts["model"], parts)
    text = format_parameters(request, 42, None, "0.1", vae=VaeHash("ae", "0123456789"))
    assert "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16" in text
    restored = request_from_parameters(parse_parameters(text), "m")
    assert (restored.text_encoders, restored.vae) == ("clip_l,t5xxl_fp16", "ae")
    # Forge's own infotext: no VAE key, the VAE among the modules, a file name with its extension.
    forge = ("a red circle on a blue background\nSteps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
             "Distilled CFG Scale: 3.5, Seed: 42, Size: 64x64, Model hash: 0123456789, Model: flux-a, "
             "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16.safetensors, Version: f2.0.1v1.10.1")  # fmt: skip
    restored = request_from_parameters(parse_parameters(forge), "m")
    assert (restored.text_encoders, restored.vae) == ("ae,clip_l,t5xxl_fp16", "")
    # The backend tells the VAE from the encoders by the library: the same image as naming them apart.
    again = replace(request, text_encoders=restored.text_encoders, vae="")
    batch, _ = run(make_backend(home), again)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare(parts["pipe"]), request, **PROMPT_ARGS))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_t5_file_keeps_the_modules_transformers_keeps_in_float32(parts, dtype):
    from transformers import T5EncoderModel

    from desktop.engine.backends.encoder_components import Component, inspect_component, load_encoder

    component = Component("t5xxl_fp16", parts["t5"])
    loaded = load_encoder(parts["config"] / "text_encoder_2", "T5EncoderModel", component,
                          inspect_component(component), dtype=dtype)  # fmt: skip
    folder = parts["tmp"] / "t5-folder"
    if not folder.exists():
        parts["pipe"].text_encoder_2.save_pretrained(str(folder))
    reference = T5EncoderModel.from_pretrained(str(folder), dtype=dtype)
    assert {k: v.dtype for k, v in loaded.state_dict().items()} == {
        k: v.dtype for k, v in reference.state_dict().items()
    }


def test_a_diffusers_text_encoder_folder_imports_its_weights(home, parts):
    folder = parts["tmp"] / "flux-folder" / "text_encoder"
    if not folder.exists():
        parts["pipe"].text_encoder.save_pretrained(str(folder))  # transformers' own names and config
    record = Library(home).import_path(folder, "encoder")
    assert (record.name, record.format, record.family) == ("flux-folder-text_encoder", "transformers", "clip")
    request = flux_request(parts["model"], parts, encoders="flux-folder-text_encoder,t5xxl_fp16")
    batch, _ = run(make_backend(home), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare(parts["pipe"]), request, **PROMPT_ARGS))


def _header(shapes: dict[str, tuple[int, ...]], dtype: str = "F16"):
    from desktop.engine.library.checkpoint import SafetensorsHeader, TensorInfo

    return SafetensorsHeader({name: TensorInfo(dtype, shape, (0, 0)) for name, shape in shapes.items()})


def test_published_sizes_are_named_from_their_shapes():
    from desktop.engine.library.encoder import inspect_encoder

    def clip(width: int, layers: int, prefix: str = "") -> dict[str, tuple[int, ...]]:
        shapes = {f"{prefix}text_model.embeddings.token_embedding.weight": (49408, width)}
        layer = prefix + "text_model.encoder.layers.{}.self_attn.q_proj.weight"
        shapes |= {layer.format(i): (width, width) for i in range(layers)}
        return shapes | {f"{prefix}text_projection.weight": (width, width)}

    t5 = {"shared.weight": (32128, 4096)} | {
        f"encoder.block.{i}.layer.0.SelfAttention.q.weight": (4096, 4096) for i in range(24)
    }
    assert inspect_encoder(_header(clip(768, 12)), "clip_l").label == "CLIP-L text encoder"
    big = inspect_encoder(_header(clip(1280, 32, "text_encoders.clip_g.transformer.")), "clip_g")
    assert (big.label, big.family, big.layers, big.projection) == (
        "CLIP-G (OpenCLIP bigG) text encoder", "clip-g", 32, True
    )  # fmt: skip
    fp8 = inspect_encoder(_header(t5, "F8_E4M3"), "t5xxl_fp8_e4m3fn")
    assert (fp8.label, fp8.family, fp8.fp8_storage) == ("T5-XXL text encoder", "t5-xxl", "float8_e4m3fn")
    with pytest.raises(ModelError, match=r"t5-broken .*layer\(s\) \[3\] missing"):
        inspect_encoder(_header({k: v for k, v in t5.items() if ".block.3." not in k}), "t5-broken")
    scaled = inspect_encoder(_header(t5 | {"scaled_fp8": (0,)}, "F8_E4M3"), "t5_scaled")
    assert (scaled.dtype, scaled.scaled, scaled.fp8_storage) == ("F8_E4M3_SCALED", True, None)
    # ComfyUI's nvfp4 / mxfp8: a scale per block of each row (2-D scales), which Marble does not dequantise.
    block = {"encoder.block.0.layer.0.SelfAttention.q.weight_scale": (4096, 256)}
    with pytest.raises(ModelError, match=r"t5_nvfp4 is block-scaled"):
        inspect_encoder(_header(t5 | block, "F8_E4M3"), "t5_nvfp4")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_t5_gguf_keeps_its_feed_forward_output_plain_as_transformers_needs(tmp_path, dtype):
    # T5 casts the feed-forward's activations to `wo`'s weight dtype (and keeps `wo` in float32 at float16):
    # with a width whose rows fit Q8_0's blocks, `wo` is quantised in the file, yet it must load as a plain layer.
    from transformers import T5Config, T5EncoderModel

    from desktop.engine.backends.encoder_components import Component, inspect_component, load_encoder

    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu")  # fmt: skip
    torch.manual_seed(0)
    original = T5EncoderModel(config).eval()
    original.config.save_pretrained(tmp_path / "text_encoder_2")
    component = Component("t5", save_t5_gguf(original, tmp_path / "t5-Q8_0.gguf"))
    model = load_encoder(tmp_path / "text_encoder_2", "T5EncoderModel", component, inspect_component(component),
                         dtype=dtype)  # fmt: skip
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight.dtype == torch.float32  # kept in float32 at float16, as transformers keeps it
    assert model.encoder.block[0].layer[1].DenseReluDense.wi_0.blocks.dtype == torch.uint8
    ids = torch.tensor([[3, 9, 27, 1]])
    with torch.no_grad():
        got = model(ids).last_hidden_state.float()
        want = gguf_rounded(original, "Q8_0")(ids).last_hidden_state
    if dtype == torch.float32:
        assert torch.equal(got, want)
    else:
        assert torch.allclose(got, want, atol=0.02), (got - want).abs().max()
