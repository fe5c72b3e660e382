"""bitsandbytes-saved T5 / Qwen3 / Qwen2.5-VL / Mistral text encoders stay packed in memory (backends/bnb_layers.py) and
compute exactly what dequantising them at load computed: the load-time path is the reference, reached through
the same load_encoder with the packing switched off, at float32, bfloat16 and float16. The files are written
with bitsandbytes' functional API on the CPU (test_bnb_encoders.bitsandbytes_file), whose pixel tests check the
pipelines; CLIP stays dequantised there."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from desktop.engine.backends import bnb_layers
from desktop.engine.backends.encoder_components import Component
from tests.engine.test_bnb_encoders import KEPT, bitsandbytes_file
from tests.engine.test_scaled_fp8_encoders import (
    _file_key,
    load,
    outputs,
    packed_and_reference,
    parameter_bytes,
    tiny_mistral3,
    tiny_qwen3,
    tiny_qwen25_vl,
    tiny_t5,
)

# (encoder, quantisation, whether T5's `wo` is quantised in the file too: transformers leaves it in float32,
# other tools may not).
CASES = {
    "t5-nf4": (tiny_t5, "nf4", False), "t5-fp4": (tiny_t5, "fp4", False), "t5-int8": (tiny_t5, "int8", False),
    "t5-nf4-wo": (tiny_t5, "nf4", True), "t5-int8-wo": (tiny_t5, "int8", True),
    "qwen3-nf4": (tiny_qwen3, "nf4", False), "qwen2.5-vl-nf4": (tiny_qwen25_vl, "nf4", False),
    "mistral3-nf4": (tiny_mistral3, "nf4", False),
}  # fmt: skip
# load_in_4bit's defaults, which bitsandbytes_file quantises with: 64 weights a block, their absmax as uint8
# codes of 256-value blocks (double quantisation).
BLOCK, NESTED_BLOCK = 64, 256


@pytest.fixture(scope="module", params=list(CASES))
def bnb_file(request, tmp_path_factory):
    """(case, class name, config folder, the library component, the file's tensors) of a tiny encoder."""
    tmp = tmp_path_factory.mktemp(f"bnb-{request.param}")
    build, kind, wo = CASES[request.param]
    model, class_name, state = build()
    model.config.save_pretrained(tmp / "config")
    file, _ = bitsandbytes_file(state, kind, kept=tuple(part for part in KEPT if not (wo and part == ".wo.")))
    save_file(file, str(tmp / f"encoder_{kind}.safetensors"))
    return request.param, class_name, tmp / "config", Component("enc", tmp / f"encoder_{kind}.safetensors"), file


def packed_layers(model):
    return {name: module for name, module in model.named_modules() if bnb_layers.stored_tensors(module) is not None}


def stored_bytes(kind, n, rows):
    """What a packed layer of `n` weights in `rows` rows holds, by the formats' definitions."""
    if kind == "int8":
        return n + 4 * rows  # one byte a weight, a float32 scale a row
    blocks = math.ceil(n / BLOCK)
    # Two codes a byte, a uint8 absmax a block, the 16-value code table, a float32 absmax per 256 blocks and
    # the 256-value table they decode with.
    return math.ceil(n / 2) + blocks + 16 * 4 + 4 * math.ceil(blocks / NESTED_BLOCK) + 256 * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_bitsandbytes_encoders_stay_packed_and_compute_the_dequantised_numbers(bnb_file, dtype, monkeypatch):
    case, _, _, _, file = bnb_file
    kind = case.split("-")[-2] if case.endswith("-wo") else case.split("-")[-1]
    model, reference = packed_and_reference(bnb_file, dtype, monkeypatch, layers=bnb_layers)

    # Every linear layer the file quantised holds the file's tensors, but T5's `wo`.
    layers = packed_layers(model)
    plain = dict(reference.named_modules())
    linears = {name for name, module in plain.items() if isinstance(module, torch.nn.Linear)}
    quantised = {name for name in linears if not file.get(_file_key(case, name), torch.zeros(0)).is_floating_point()}
    assert set(layers) == {name for name in quantised if not name.endswith(".wo")} and layers
    for name, layer in layers.items():
        key = _file_key(case, name)
        stored = bnb_layers.stored_tensors(layer)
        assert stored["weight"].dtype == (torch.int8 if kind == "int8" else torch.uint8)
        assert torch.equal(stored["weight"], file[key])
        if kind == "int8":
            assert torch.equal(stored["scale"].flatten(), file[key.removesuffix("weight") + "SCB"].float())
        else:
            parts = {"absmax", "quant_map", "nested_absmax", "nested_quant_map"}
            assert set(stored) == {"weight"} | parts
            assert all(torch.equal(stored[part], file[f"{key}.{part}"]) for part in parts)
    if case.startswith("t5"):
        wo = model.encoder.block[0].layer[1].DenseReluDense.wo
        assert type(wo) is torch.nn.Linear  # dequantised at load when quantised in the file
        assert wo.weight.dtype == (torch.float32 if dtype == torch.float16 else dtype)  # as transformers keeps it
        assert ("encoder.block.0.layer.1.DenseReluDense.wo" in quantised) == case.endswith("-wo")

    # Memory: the file's codes and statistics in place of the dtype's bytes a weight.
    size = torch.finfo(dtype).bits // 8
    weights = sum(plain[name].weight.numel() * size for name in layers)
    held = sum(stored_bytes(kind, plain[name].weight.numel(), plain[name].out_features) for name in layers)
    assert parameter_bytes(model) == parameter_bytes(reference) - weights + held


def test_the_packed_tensors_survive_the_pipelines_to_calls(bnb_file):
    model = load(bnb_file, torch.bfloat16, layers=bnb_layers)
    layers = packed_layers(model)
    before = {name: {part: t.clone() for part, t in bnb_layers.stored_tensors(layer).items()}
              for name, layer in layers.items()}  # fmt: skip
    want = outputs(model)
    model.to(torch.float16).to("cpu").to(torch.bfloat16)  # float statistics cast so would be rounded
    assert packed_layers(model).keys() == layers.keys()
    for name, layer in packed_layers(model).items():
        stored = bnb_layers.stored_tensors(layer)
        assert all(torch.equal(stored[part], tensor) and stored[part].dtype == tensor.dtype
                   for part, tensor in before[name].items())  # fmt: skip
        # Held as integers (float32 statistics as their bits), which .to(dtype) leaves alone.
        assert not any(p.is_floating_point() for n, p in layer.named_parameters() if n.startswith("bnb_"))
    for got, expected in zip(outputs(model), want, strict=True):
        assert (got is None and expected is None) or torch.equal(got, expected)
    # transformers reads a model's dtype from its first floating parameter: never the packed bytes.
    assert model.dtype == torch.bfloat16


def test_a_packed_encoder_is_not_dequantised_at_load(bnb_file, monkeypatch):
    """A 4-bit weight's parts are checked by size at load (a damaged one refused: test_bnb_encoders), not
    dequantised; an int8 one's rows are kept as they are: each format's dequantiser (bitsandbytes' for 4-bit,
    Marble's rows-times-scales for LLM.int8) runs first when the encoder does (at load only for what stays
    plain: T5's `wo` where the file quantised it)."""
    import bitsandbytes.functional as F

    from desktop.engine.backends import quantised_weights

    case, file = bnb_file[0], bnb_file[4]
    calls = []

    def counted(real):
        return lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs)

    monkeypatch.setattr(F, "dequantize_4bit", counted(F.dequantize_4bit))
    monkeypatch.setattr(quantised_weights, "_int8_values", counted(quantised_weights._int8_values))
    model = load(bnb_file, torch.float32, layers=bnb_layers)
    quantised_wo = sum(1 for key in file if key.endswith((".wo.weight.absmax", ".wo.SCB")))
    assert packed_layers(model) and len(calls) == quantised_wo and case.endswith("-wo") == bool(calls)
    calls.clear()
    outputs(model)
    text_layers = [name for name in packed_layers(model) if ".visual." not in name]  # no picture goes in
    assert len(calls) >= len(text_layers)  # each packed layer dequantises as it runs
