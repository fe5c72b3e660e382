"""Scaled-fp8 T5 / Qwen3 / Qwen2.5-VL / Mistral text encoders stay stored in fp8 (backends/scaled_fp8_layers.py) and
compute exactly what dequantising them at load computed: the load-time path is the reference, reached through
the same load_encoder with the packing switched off, at float32, bfloat16 and float16. CLIP stays dequantised
(LoRAs patch its layers). The pipelines' pictures are checked in test_encoder_library.py and
test_qwen_encoder_library.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from desktop.engine.backends import scaled_fp8_layers
from desktop.engine.backends.encoder_components import Component, inspect_component, load_encoder
from tests.engine.test_scaled_fp8 import scaled_fp8
from tests.support.tiny_qwen_encoders import comfy_qwen_state

IDS = torch.tensor([[3, 9, 27, 1, 14, 5]])


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu")  # fmt: skip
    torch.manual_seed(0)
    model = T5EncoderModel(config).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return model, "T5EncoderModel", state


def tiny_qwen3():
    from tests.support.tiny_qwen_zimage import build_tiny_z_image

    encoder = build_tiny_z_image().text_encoder
    return encoder, "Qwen3Model", comfy_qwen_state(encoder)


def tiny_qwen25_vl():
    from tests.support.tiny_qwen_zimage import build_tiny_qwen_image

    encoder = build_tiny_qwen_image().text_encoder
    return encoder, "Qwen2_5_VLForConditionalGeneration", comfy_qwen_state(encoder)


def tiny_mistral3():
    """Flux.2 dev's Mistral in ComfyUI's names (mistral_3_small_flux2_fp8): 31 layers, of which Marble loads
    the 30 Flux.2 reads."""
    from tests.support.tiny_flux2 import comfyui_mistral_state, tiny_mistral3

    encoder = tiny_mistral3()
    return encoder, "Mistral3ForConditionalGeneration", comfyui_mistral_state(encoder)


BUILDERS = {"t5": tiny_t5, "t5-rows": tiny_t5, "qwen3": tiny_qwen3, "qwen2.5-vl": tiny_qwen25_vl,
            "mistral3": tiny_mistral3}  # fmt: skip


def row_scaled_fp8(state):
    """As scaled_fp8, with one scale per output row (a 1-D `scale_weight`), which ComfyUI's loader also reads."""
    file = {}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight"):
            scale = value.abs().amax(dim=1).float() / torch.finfo(torch.float8_e4m3fn).max
            file[key] = (value.float() / scale[:, None]).to(torch.float8_e4m3fn)
            file[key.removesuffix("weight") + "scale_weight"] = scale
        else:
            file[key] = value.contiguous()
    return file | {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}


@pytest.fixture(scope="module", params=list(BUILDERS))
def scaled_file(request, tmp_path_factory):
    """(kind, class name, config folder, the library component, the file's tensors) of a scaled tiny encoder."""
    tmp = tmp_path_factory.mktemp(f"scaled-{request.param}")
    model, class_name, state = BUILDERS[request.param]()
    model.config.save_pretrained(tmp / "config")
    file = row_scaled_fp8(state) if request.param == "t5-rows" else scaled_fp8(state)[0]
    save_file(file, str(tmp / "encoder_fp8_scaled.safetensors"))
    return request.param, class_name, tmp / "config", Component("enc", tmp / "encoder_fp8_scaled.safetensors"), file


def load(scaled_file, dtype, *, packed=True, monkeypatch=None, layers=scaled_fp8_layers):
    """The encoder load_encoder makes of the file; `packed=False`: with `layers.keeper` switched off."""
    _, class_name, config, component, _ = scaled_file
    if not packed:
        # The load-time dequantisation Marble did before (and still does for CLIP): no keeper.
        monkeypatch.setattr(layers, "keeper", lambda *args: None)
    try:
        return load_encoder(config, class_name, component, inspect_component(component), dtype=dtype)
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()


def packed_and_reference(encoder_file, dtype, monkeypatch, layers=scaled_fp8_layers):
    """(the encoder kept packed, the same file dequantised at load), checked to compute the same outputs."""
    model = load(encoder_file, dtype, layers=layers)
    reference = load(encoder_file, dtype, packed=False, monkeypatch=monkeypatch, layers=layers)
    for got, want in zip(outputs(model), outputs(reference), strict=True):
        assert (got is None and want is None) or torch.equal(got, want)
    return model, reference


def outputs(model):
    with torch.no_grad():
        result = model(IDS, output_hidden_states=True)
    logits = getattr(result, "logits", None)
    return [result.last_hidden_state if logits is None else result.hidden_states[-1], logits]


def packed_layers(model):
    return {name: module for name, module in model.named_modules() if scaled_fp8_layers.stored_fp8(module) is not None}


def parameter_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_scaled_fp8_encoders_stay_in_fp8_and_compute_the_dequantised_numbers(scaled_file, dtype, monkeypatch):
    kind, _, _, _, file = scaled_file
    model, reference = packed_and_reference(scaled_file, dtype, monkeypatch)

    # Every linear layer the file scales holds the file's fp8 bytes and its scale, but T5's `wo`.
    layers = packed_layers(model)
    plain = dict(reference.named_modules())
    scaled_linears = {
        name for name, module in plain.items()
        if isinstance(module, torch.nn.Linear) and not name.endswith(".wo") and _file_key(kind, name) in file
    }  # fmt: skip
    assert set(layers) == scaled_linears and layers
    for name, layer in layers.items():
        stored = scaled_fp8_layers.stored_fp8(layer)
        assert stored.dtype == torch.float8_e4m3fn
        assert torch.equal(stored.view(torch.uint8), file[_file_key(kind, name)].view(torch.uint8))
        scale = file[_file_key(kind, name).removesuffix("weight") + "scale_weight"]
        assert torch.equal(layer.scale_bits.view(torch.float32).flatten(), scale.float().flatten())
    if kind.startswith("t5"):
        wo = model.encoder.block[0].layer[1].DenseReluDense.wo
        assert type(wo) is torch.nn.Linear
        assert wo.weight.dtype == (torch.float32 if dtype == torch.float16 else dtype)  # as transformers keeps it

    # Memory: one byte a packed weight and four a scale (one a layer, or one a row), in place of the dtype's
    # bytes a weight.
    weights = sum(plain[name].weight.numel() for name in layers)
    scales = sum(layer.scale_bits.numel() for layer in layers.values())
    assert scales == (weights // 32 if kind == "t5-rows" else len(layers))  # the tiny T5's rows are 32 wide
    size = torch.finfo(dtype).bits // 8
    assert parameter_bytes(model) == parameter_bytes(reference) - weights * (size - 1) + 4 * scales


def test_the_fp8_weights_and_scales_survive_the_pipelines_to_calls(scaled_file):
    model = load(scaled_file, torch.bfloat16)
    before = {name: (layer.fp8_bits.clone(), layer.scale_bits.clone()) for name, layer in packed_layers(model).items()}
    want = outputs(model)
    model.to(torch.float32).to("cpu").to(torch.bfloat16)  # a float32 round trip would round a bf16 scale
    for name, layer in packed_layers(model).items():
        assert (layer.fp8_bits.dtype, layer.scale_bits.dtype) == (torch.uint8, torch.int32)
        assert torch.equal(layer.fp8_bits, before[name][0]) and torch.equal(layer.scale_bits, before[name][1])
    for got, expected in zip(outputs(model), want, strict=True):
        assert (got is None and expected is None) or torch.equal(got, expected)
    # transformers reads a model's dtype from its first floating parameter: never the packed bytes.
    assert model.dtype == torch.bfloat16


def _file_key(kind, name):
    """The file's name of a loaded layer's weight (comfy_qwen_state's names)."""
    if kind.startswith("t5"):
        return f"{name}.weight"
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.") + ".weight"
    if name.startswith("model.visual."):
        return name.removeprefix("model.") + ".weight"
    return f"{name}.weight" if name == "lm_head" else f"model.{name}.weight"
