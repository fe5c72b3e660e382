"""Flux.2 dev from ComfyUI's files: the transformer alone, mistral_3_small_flux2 (the Mistral language model,
whole or cut to 30 layers, carrying its tekken.json) and flux2-vae from the library, pixel-identical to bare
diffusers around the whole Mistral 3 model; the tokenizer Marble builds from a tekken.json gives the ids of
mistral-common, Mistral's own tokenizer, on a real tekken.json."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import replace
from importlib import resources as package_data
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from desktop.engine.backends.tekken_tokenizer import tokenizer_from_tekken
from desktop.engine.errors import ModelError
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_flux2 import dev_image
from tests.support.tiny_flux2 import (
    build_tiny_flux2_dev_tekken,
    comfyui_mistral_file,
    flux2_to_bfl,
    flux2_vae_to_bfl,
    save_transformer_file,
    tiny_tekken,
)
from tests.support.tiny_qwen_zimage import tiny_tokenizer

SYSTEM = "You are an AI that reasons about image descriptions."
TEXTS = (
    "a red fox in the snow, 35mm photo",
    "  leading spaces\n\nnew lines\ttabs",
    "Ünïcödé — 東京の夜景 🌃 1234567 3.14159",
    "CamelCaseWords and snake_case_words, https://example.com/a?b=c",
)


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux2dev_library")
    pipe = build_tiny_flux2_dev_tekken(tmp / "reference-tokenizer")
    # The tiny configs as --config: a diffusers folder without its tokenizer/ (else that would be used).
    folder = tmp / "configs"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    shutil.rmtree(folder / "tokenizer")
    old_form = tiny_tekken(with_specials=False)
    return {
        "pipe": pipe,
        "config": folder,
        "tmp": tmp,
        "transformer": save_transformer_file(flux2_to_bfl(pipe.transformer.state_dict()), tmp / "flux2-dev.safetensors",
                                             prefix="model.diffusion_model."),  # fmt: skip
        "full": comfyui_mistral_file(pipe.text_encoder, tmp / "mistral_3_small_flux2_bf16.safetensors",
                                     tekken=old_form),  # fmt: skip
        "pruned": comfyui_mistral_file(pipe.text_encoder, tmp / "mistral_pruned.safetensors", layers=30,
                                       tekken=tiny_tekken(with_specials=True)),  # fmt: skip
        "bare": comfyui_mistral_file(pipe.text_encoder, tmp / "mistral_no_tokenizer.safetensors"),
        "short": comfyui_mistral_file(pipe.text_encoder, tmp / "mistral_20.safetensors", layers=20, tekken=old_form),
    }


@pytest.fixture
def library(dev, tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    save_file(flux2_vae_to_bfl(dev["pipe"].vae), str(dev["tmp"] / "flux2-vae.safetensors"))
    library.import_path(dev["tmp"] / "flux2-vae.safetensors", "vae")
    return SimpleNamespace(paths=paths, library=library)


def test_a_dev_file_runs_with_comfyuis_mistral_and_its_tokenizer_like_bare_diffusers(dev, library):
    """The whole Mistral (31 layers standing for 40, its tekken.json in the older form) and one cut to the 30
    layers Flux.2 reads (the newer form) give bare diffusers' picture with the whole model and the tokenizer
    transformers converts from the same tekken.json."""
    records = {key: library.library.import_path(dev[key], "encoder") for key in ("full", "pruned")}
    assert {record.family for record in records.values()} == {"mistral3"}
    assert "Mistral text encoder (width 16) with its tokenizer" in records["full"].shown_architecture
    request = request_for(dev["transformer"], steps=2, distilled_cfg_scale=4.0, prompt="the red cat in a circle",
                          model_config=str(dev["config"]), vae="flux2-vae",
                          text_encoders="mistral_3_small_flux2_bf16")  # fmt: skip
    want = dev_image(dev["pipe"], request)
    batch, _ = run(make_backend(library.paths), request)
    assert np.array_equal(pixels(batch.images[0]), want)
    pruned, _ = run(make_backend(library.paths), replace(request, text_encoders="mistral_pruned"))
    assert np.array_equal(pixels(pruned.images[0]), want)
    other, _ = run(make_backend(library.paths), replace(request, prompt="a cat"))
    assert not np.array_equal(pixels(other.images[0]), want)


def test_a_tokenizer_folder_serves_a_mistral_file_without_one(dev, library):
    """A file without `tekken_model` takes the tokenizer from the folder the user names (a Mistral repository's
    tekken.json here); with none named, the message says what to supply. A file with one keeps its own."""
    record = library.library.import_path(dev["bare"], "encoder")
    # Plain attention at an unpublished width, no tekken: a Mistral or a Llama, as far as the file says.
    assert "Mistral / Llama text encoder (width 16)" in record.shown_architecture, record.shown_architecture
    request = request_for(dev["transformer"], steps=2, distilled_cfg_scale=4.0, model_config=str(dev["config"]),
                          vae="flux2-vae", text_encoders="mistral_no_tokenizer")  # fmt: skip
    with pytest.raises(ModelError, match=r"'mistral_no_tokenizer' \(mistral_no_tokenizer\.safetensors\) carries no "
                                         r"tokenizer.*--tokenizer-folder.*FLUX\.2-dev"):  # fmt: skip
        run(make_backend(library.paths), request)
    folder = dev["tmp"] / "reference-tokenizer"  # holds tekken.json
    batch, _ = run(make_backend(library.paths), replace(request, tokenizer_folder=str(folder)))
    want = dev_image(dev["pipe"], request)
    assert np.array_equal(pixels(batch.images[0]), want)
    # A file that carries its tokenizer keeps it whatever folder is set (Settings' may hold Qwen's, for
    # Qwen-Image): a folder with a tokenizer of another vocabulary leaves its picture as it is.
    library.library.import_path(dev["full"], "encoder")
    qwen = dev["tmp"] / "qwen-tokenizer"
    if not qwen.exists():
        tiny_tokenizer().save_pretrained(str(qwen))
    carried, _ = run(make_backend(library.paths), replace(request, tokenizer_folder=str(qwen),
                                                          text_encoders="mistral_3_small_flux2_bf16"))  # fmt: skip
    assert np.array_equal(pixels(carried.images[0]), want)


def test_a_mistral_file_with_too_few_layers_is_refused_before_loading(dev, library):
    library.library.import_path(dev["short"], "encoder")
    request = request_for(dev["transformer"], steps=2, model_config=str(dev["config"]), vae="flux2-vae",
                          text_encoders="mistral_20")  # fmt: skip
    with pytest.raises(ModelError, match=r"'mistral_20' \(mistral_20\.safetensors\) holds 20 layers, but .* reads "
                                         r"the first 30"):  # fmt: skip
        run(make_backend(library.paths), request)


def test_a_damaged_tekken_is_refused_by_name():
    with pytest.raises(ModelError, match=r"The text encoder 'x' carries a tokenizer that is no Mistral tekken\.json"):
        tokenizer_from_tekken(b"\x00\x01not json", source="The text encoder 'x'")


def test_a_mistral_gguf_in_llama_cpps_names_runs_with_a_tokenizer_folder(dev, library):
    """llama.cpp's Mistral GGUF: its names, q and k rows permuted by its converter, F16 storage; the tokenizer
    from the folder. The picture is bare diffusers' with the encoder's weights rounded to float16."""
    import copy

    from diffusers import Flux2Pipeline

    from tests.support.tiny_flux2 import comfyui_mistral_state
    from tests.support.tiny_qwen_encoders import save_llama_gguf

    pipe = dev["pipe"]
    path = save_llama_gguf(comfyui_mistral_state(pipe.text_encoder), dev["tmp"] / "mistral-small-F16.gguf", "llama",
                           heads=(2, 1))  # fmt: skip
    record = library.library.import_path(path, "encoder")
    assert (record.family, record.format) == ("mistral3", "gguf"), record
    request = request_for(dev["transformer"], steps=2, distilled_cfg_scale=4.0, model_config=str(dev["config"]),
                          vae="flux2-vae", text_encoders=record.name)  # fmt: skip
    with pytest.raises(ModelError, match=r"mistral-small-F16\.gguf\) carries no tokenizer"):
        run(make_backend(library.paths), request)
    folder = dev["tmp"] / "reference-tokenizer"
    batch, _ = run(make_backend(library.paths), replace(request, tokenizer_folder=str(folder)))
    rounded = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            if parameter.ndim == 2 and name.startswith("model.language_model."):
                parameter.copy_(parameter.half().float())
    reference = Flux2Pipeline(**(pipe.components | {"text_encoder": rounded}))
    want = dev_image(reference, request)
    assert np.array_equal(pixels(batch.images[0]), want)
    # A GGUF that keeps the tokenizer in its metadata, as llama.cpp writes Mistral's: no folder needed.
    path = save_llama_gguf(comfyui_mistral_state(pipe.text_encoder), dev["tmp"] / "mistral-small-tok-F16.gguf",
                           "llama", heads=(2, 1), tokenizer=pipe.tokenizer)  # fmt: skip
    record = library.library.import_path(path, "encoder")
    carried, _ = run(make_backend(library.paths), replace(request, text_encoders=record.name))
    assert np.array_equal(pixels(carried.images[0]), want)


def test_a_gguf_tokenizer_in_llama_cpps_form_reads_back_as_the_real_tekken(tmp_path):
    """Pixtral's real tekken.json written into a GGUF's metadata as llama.cpp writes a "gpt2" vocabulary, and
    read back: the same 131,072 ids for every text, the control tokens where tekken puts them."""
    from desktop.engine.backends.tekken_tokenizer import gguf_tekken
    from tests.support.tiny_qwen_encoders import save_llama_gguf

    original = tokenizer_from_tekken(_mistral_common_tekken(tmp_path, "v7").read_bytes(), source="test")
    state = {"model.embed_tokens.weight": torch.zeros(4, 32)}
    path = save_llama_gguf(state, tmp_path / "tok.gguf", "llama", tokenizer=original)
    data = gguf_tekken(path)
    assert data is not None
    read = tokenizer_from_tekken(data, source="test")
    assert len(read) == len(original) == 131072
    for text in (*TEXTS, "[SYSTEM_PROMPT]x[/SYSTEM_PROMPT][INST]y[/INST]"):
        assert read(text)["input_ids"] == original(text)["input_ids"], text
    assert read.convert_tokens_to_ids(["<s>", "<pad>", "[SYSTEM_PROMPT]"]) == [1, 11, 17]
    # Not a tekken layout (no control tokens first): None, and the tokenizer folder serves.
    plain = save_llama_gguf(state, tmp_path / "plain.gguf", "llama")
    assert gguf_tekken(plain) is None


def test_a_q8_0_mistral_gguf_keeps_its_blocks_with_their_rows_put_back(tmp_path):
    """A Mistral wide enough for Q8_0's blocks: the q and k weights stay packed, their rows moved back to Hugging
    Face's order, and the encoder computes what a MistralModel of gguf's own dequantisation, unpermuted, does."""
    import gguf
    from transformers import MistralConfig, MistralModel

    from desktop.engine.backends.encoder_components import Component, inspect_component, load_encoder
    from desktop.engine.library.encoder_qwen import gguf_name
    from tests.support.tiny_qwen_encoders import save_llama_gguf

    config = MistralConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None)  # fmt: skip
    torch.manual_seed(0)
    model = MistralModel(config).eval()
    state = {"model." + key: value for key, value in model.state_dict().items()}
    path = save_llama_gguf(state, tmp_path / "mistral-Q8_0.gguf", "llama", quant="Q8_0", heads=(4, 2))
    config.save_pretrained(tmp_path / "config")
    component = Component("mistral-q8", path)
    info = inspect_component(component)
    assert (info.kind, info.layout, info.layers) == ("mistral3", "gguf", 2)
    loaded = load_encoder(tmp_path / "config", "MistralModel", component, info, dtype=torch.float32)
    assert {name for name, module in loaded.named_modules() if hasattr(module, "blocks")} >= {
        "layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.1.mlp.down_proj"
    }  # fmt: skip
    reference = MistralModel(config).eval()
    reference.norm = torch.nn.Identity()
    plain = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(list(tensor.shape)))
        values = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32))
        plain[gguf_name(tensor.name).removeprefix("model.")] = values.reshape(shape)
    for key, heads in (("self_attn.q_proj", 4), ("self_attn.k_proj", 2)):
        for layer in range(2):
            rows = plain[f"layers.{layer}.{key}.weight"]
            unpermuted = rows.reshape(heads, rows.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)
            plain[f"layers.{layer}.{key}.weight"] = unpermuted
    plain.pop("norm.weight")
    reference.load_state_dict(plain, strict=True)
    ids = torch.tensor([[3, 9, 27, 1, 14, 5]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).last_hidden_state, reference(ids).last_hidden_state)


def _mistral_common_tekken(tmp_path, version: str):
    """mistral-common's own copy of a real tekken.json (Pixtral's, 131,072 ids; the older form), as `version`."""
    data = json.loads(package_data.files("mistral_common").joinpath("data/tekken_240911.json").read_text("utf-8"))
    data["config"]["version"] = version
    path = tmp_path / f"tekken-{version}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_the_tokenizer_built_from_a_real_tekken_gives_mistral_commons_ids(tmp_path):
    from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    path = _mistral_common_tekken(tmp_path, "v7")
    ours = tokenizer_from_tekken(path.read_bytes(), source="test")
    theirs = Tekkenizer.from_file(str(path))
    assert len(ours) == theirs.n_words == 131072
    for text in TEXTS:
        assert ours(text, add_special_tokens=False)["input_ids"] == theirs.encode(text, bos=False, eos=False), text
    # The chat form: Mistral's v7 instruct encoding of a system message and a prompt, padded on the left.
    chat = MistralTokenizer.from_file(str(path)).encode_chat_completion(
        ChatCompletionRequest(messages=[SystemMessage(content=SYSTEM), UserMessage(content=TEXTS[0])])
    )
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                {"role": "user", "content": [{"type": "text", "text": TEXTS[0]}]}]  # fmt: skip
    padded = ours.apply_chat_template([messages], tokenize=True, return_dict=True, padding="max_length",
                                      max_length=len(chat.tokens) + 3, truncation=True)  # fmt: skip
    assert padded["input_ids"][0] == [11, 11, 11, *chat.tokens]
    assert padded["attention_mask"][0] == [0, 0, 0] + [1] * len(chat.tokens)


def test_a_tekken_listing_its_special_tokens_reads_the_same(tmp_path):
    """The newer tekken.json form names its special tokens itself: the same ids as the older form's defaults."""
    older = json.loads(_mistral_common_tekken(tmp_path, "v7").read_text("utf-8"))
    newer = dict(older)
    names = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"] + [f"<SPECIAL_{i}>" for i in range(5, 1000)]
    names[11], names[17], names[18] = "<pad>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"
    newer["special_tokens"] = [{"rank": i, "token_str": name, "is_control": True} for i, name in enumerate(names)]
    a = tokenizer_from_tekken(json.dumps(older).encode(), source="older")
    b = tokenizer_from_tekken(json.dumps(newer).encode(), source="newer")
    text = "[SYSTEM_PROMPT]x[/SYSTEM_PROMPT][INST]" + TEXTS[2]
    assert a(text)["input_ids"] == b(text)["input_ids"]
    assert a.convert_tokens_to_ids(["<pad>", "[SYSTEM_PROMPT]"]) == [11, 17]
    # Rank r of the vocabulary is id 1000 + r: the byte "A" is rank 65.
    assert base64.b64decode(older["vocab"][65]["token_bytes"]) == b"A"
    assert a("A", add_special_tokens=False)["input_ids"] == b("A", add_special_tokens=False)["input_ids"] == [1065]


def test_comfyuis_mistral_files_are_named_from_their_shapes():
    """mistral_3_small_flux2_bf16 at its real shapes: the whole 40 layers or the 30-layer cut, the tokenizer
    tensor neither a weight nor a layer; a Qwen3 (q_norm) stays a Qwen3."""
    from desktop.engine.library.checkpoint import SafetensorsHeader, TensorInfo
    from desktop.engine.library.encoder import inspect_encoder

    def header(layers: int, extra: dict) -> SafetensorsHeader:
        shapes = {"model.embed_tokens.weight": (131072, 5120), "model.norm.weight": (5120,)}
        for i in range(layers):
            base = f"model.layers.{i}."
            shapes |= {base + "self_attn.q_proj.weight": (4096, 5120), base + "self_attn.k_proj.weight": (1024, 5120),
                       base + "self_attn.v_proj.weight": (1024, 5120), base + "self_attn.o_proj.weight": (5120, 4096),
                       base + "mlp.gate_proj.weight": (32768, 5120), base + "mlp.up_proj.weight": (32768, 5120),
                       base + "mlp.down_proj.weight": (5120, 32768), base + "input_layernorm.weight": (5120,),
                       base + "post_attention_layernorm.weight": (5120,)}  # fmt: skip
        shapes |= extra
        return SafetensorsHeader({k: TensorInfo("U8" if k == "tekken_model" else "BF16", v, (0, 0))
                                  for k, v in shapes.items()})  # fmt: skip

    whole = inspect_encoder(header(40, {"tekken_model": (19_280_963,)}), "mistral_3_small_flux2_bf16")
    assert (whole.kind, whole.family, whole.width, whole.layers, whole.dtype, whole.tokenizer) == (
        "mistral3", "mistral3", 5120, 40, "BF16", True
    )  # fmt: skip
    assert whole.label == "Mistral Small 24B text encoder with its tokenizer"
    assert round(whole.parameters / 1e9, 2) == 22.90  # the language model without lm_head, as published
    cut = inspect_encoder(header(30, {}), "pruned")
    assert (cut.layers, cut.tokenizer, cut.label) == (30, False, "Mistral Small 24B text encoder")
    with pytest.raises(ModelError, match=r"broken is a mistral3 text encoder with layer\(s\) \[7\] missing"):
        inspect_encoder(SafetensorsHeader({k: v for k, v in header(30, {}).tensors.items()
                                           if not k.startswith("model.layers.7.")}), "broken")  # fmt: skip


def test_only_the_layers_flux2_reads_are_read_from_the_file(dev):
    """The 31st layer (standing for a whole file's last ten), the final norm and the tokenizer bytes stay on
    disk: a whole Mistral Small file is 48 GB in bf16."""
    from safetensors.torch import load_file

    from desktop.engine.backends.mistral_encoder import read_used

    read = read_used([dev["full"]], ("model.",), 30)
    layers = {int(key.split(".")[1]) for key in read if key.startswith("layers.")}
    assert layers == set(range(30))
    assert "embed_tokens.weight" in read
    assert not {"norm.weight", "tekken_model"} & set(read)
    assert set(read) <= {key.removeprefix("model.") for key in load_file(str(dev["full"]))}


def test_a_dev_folders_text_encoder_loads_only_what_flux2_reads(dev, tmp_path):
    """A diffusers folder's whole Mistral3ForConditionalGeneration (transformers' names since 4.52, or the older
    `language_model.model.*`) becomes the 30-layer MistralModel, hidden states 10, 20, 30 unchanged; a
    quantised folder is left to transformers."""
    from safetensors.torch import load_file

    from desktop.engine.backends.mistral_encoder import from_folder

    encoder = dev["pipe"].text_encoder
    folder = tmp_path / "text_encoder"
    encoder.save_pretrained(str(folder))
    ids = torch.tensor([[1, 17, 100, 101, 18, 3, 150, 4]])
    with torch.no_grad():
        want = encoder(input_ids=ids, output_hidden_states=True).hidden_states
    for names in ("new", "old"):
        if names == "old":
            state = load_file(str(folder / "model.safetensors"))
            save_file({k.replace("model.language_model.", "language_model.model."): v for k, v in state.items()},
                      str(folder / "model.safetensors"))  # fmt: skip
        model = from_folder(folder, torch.float32)
        assert (type(model).__name__, len(model.layers), type(model.norm).__name__) == ("MistralModel", 30, "Identity")
        with torch.no_grad():
            got = model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in (10, 20, 30):
            assert torch.equal(got[layer], want[layer]), (names, layer)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"quantization_config": {"load_in_4bit": True}}))
    assert from_folder(folder, torch.float32) is None


def test_a_qwen3_file_chosen_for_dev_is_refused_naming_the_mistral_it_needs(dev, library):
    """Klein's Qwen3 and dev's Mistral share the library: the wrong one is refused before any load."""
    from tests.support.tiny_qwen_encoders import comfy_qwen_state
    from tests.support.tiny_qwen_zimage import build_tiny_z_image

    path = dev["tmp"] / "qwen_3_4b.safetensors"
    save_file(comfy_qwen_state(build_tiny_z_image().text_encoder), str(path))
    library.library.import_path(path, "encoder")
    request = request_for(dev["transformer"], steps=2, model_config=str(dev["config"]), vae="flux2-vae",
                          text_encoders="qwen_3_4b")  # fmt: skip
    wanted = r"needs a Mistral \(width 16\) text encoder for its text_encoder and none of the chosen ones fits"
    with pytest.raises(ModelError, match=wanted + r" \(chosen: qwen_3_4b \(Qwen3 text encoder"):
        run(make_backend(library.paths), request)


def test_comfyuis_fp8_mistral_draws_its_dequantised_weights_picture(dev, library):
    """ComfyUI's `_fp8` Mistral in its mixed layout (fp8 layers beside `weight_scale` and `comfy_quant`, the
    tokenizer carried): kept in fp8, the picture of bare diffusers with the file's weights dequantised."""
    import copy

    from diffusers import Flux2Pipeline

    from tests.engine.test_scaled_fp8 import scaled_fp8
    from tests.support.tiny_flux2 import comfyui_mistral_state

    pipe = dev["pipe"]
    file, exact, _ = scaled_fp8(comfyui_mistral_state(pipe.text_encoder), mixed="model.layers.")
    file["tekken_model"] = torch.frombuffer(bytearray(json.dumps(tiny_tekken(with_specials=False)).encode()),
                                            dtype=torch.uint8)  # fmt: skip
    path = dev["tmp"] / "mistral_3_small_flux2_fp8.safetensors"
    save_file(file, str(path))
    record = library.library.import_path(path, "encoder")
    assert record.dtype.endswith("_SCALED") and record.family == "mistral3", (record.dtype, record.family)
    request = request_for(dev["transformer"], steps=2, distilled_cfg_scale=4.0, model_config=str(dev["config"]),
                          vae="flux2-vae", text_encoders=record.name)  # fmt: skip
    backend = make_backend(library.paths)
    batch, _ = run(backend, request)
    from desktop.engine.backends.scaled_fp8_layers import stored_fp8

    kept = [name for name, module in backend._pipe.text_encoder.named_modules() if stored_fp8(module) is not None]
    assert len(kept) == 30 * 7, len(kept)  # every linear layer of the 30 read, in fp8
    dequantised = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        for key, value in exact.items():
            if key.startswith("model.layers."):
                dequantised.get_parameter("model.language_model." + key.removeprefix("model.")).copy_(value)
    reference = Flux2Pipeline(**(pipe.components | {"text_encoder": dequantised}))
    assert np.array_equal(pixels(batch.images[0]), dev_image(reference, request))
