"""LoRAs on the nf4 / int8 memory modes' bitsandbytes layers (quantised_weights.quantise_linear_layers).

PEFT wraps each bitsandbytes layer in its generic LoRA layer (the model is not marked as loaded in 4/8 bits):
the quantised base layer's output plus the LoRA computed in full precision. Checked on the tiny Flux (64x64,
2 steps) through the backend, job after job as a user switches LoRAs: a LoRA changes the quantised image,
weight 0 is the image without it, a second LoRA does not carry the first one along, and each image is the
same LoRA's on the dequantised model (bare diffusers); kohya and XLabs Flux LoRAs, which diffusers converts
and shape-checks, land on the quantised layers as on full-precision ones. On a CPU bitsandbytes 0.50
multiplies by the dequantised weights in float32, so the tolerance there is none: pixel-identical. On CUDA
(skipped here) the kernels differ: see the tolerances of the CUDA test.

bitsandbytes is optional (pyproject's `quant` extra; in `test`): the tests skip without it."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from desktop.engine.backends.quantised_weights import quantise_linear_layers
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_flux, bare_image
from tests.support.tiny_dit import build_tiny_flux, save_pipeline
from tests.support.tiny_dit_loras import flux_kohya_lora, flux_xlabs_lora, peft_lora
from tests.support.tiny_loras import save_lora

pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")

LAYER = {"nf4": "Linear4bit", "int8": "Linear8bitLt"}
# 1/127 as bitsandbytes multiplies an int8 row's scale by it (quantised_weights._INT8_STEP).
INT8_STEP = 7.874015718698502e-3


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bnb-loras")
    pipe = build_tiny_flux()
    loras = {
        name: save_lora(peft_lora(pipe.transformer, seed=seed, scale=1.0), tmp / "loras" / f"{name}.safetensors")
        for name, seed in (("style", 1), ("other", 2))
    }
    return {"pipe": pipe, "folder": save_pipeline(pipe, tmp / "flux"), "loras": loras}


@pytest.fixture
def paths(tmp_path, flux):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    for path in flux["loras"].values():
        (paths.loras / path.name).write_bytes(path.read_bytes())
    return paths


def dequantised(original: torch.nn.Module, quantised: torch.nn.Module, kind: str) -> torch.nn.Module:
    """A copy of `original` whose linear weights are those `quantised`'s bitsandbytes layers hold, read back."""
    import bitsandbytes.functional as F

    layers = dict(quantised.named_modules())
    copied = copy.deepcopy(original)
    for name, linear in copied.named_modules():
        if type(linear) is not torch.nn.Linear:
            continue
        layer = layers[name]
        layer = getattr(layer, "base_layer", layer)  # under PEFT's LoRA wrapper
        assert type(layer).__name__ == LAYER[kind], name
        if kind == "nf4":
            weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        else:
            # The row scales move from the weight to the layer's matmul state at its first call.
            rows = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
            # On the CPU (after model offload the weight and its scales need not share a device), in the order
            # the layer's CPU matmul computes it: each row's scale over 127 first, then times the int8 codes.
            weight = layer.weight.data.cpu().float() * (rows.cpu().float() * INT8_STEP)[:, None]
        linear.weight.data = weight.to("cpu", linear.weight.dtype)
    return copied


def with_lora(pipe, path):
    pipe.load_lora_weights(str(path), adapter_name="lora", use_safetensors=True)
    return pipe


def flux_inputs(transformer):
    config = transformer.config
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, 16, config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(1, 8, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([0.5]), "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(8, 3),
        "guidance": torch.tensor([3.5]) if config.guidance_embeds else None,
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_lora_loaded_before_the_swap_is_kept_in_full_precision(flux, kind):
    # The backend loads LoRAs after entering the mode; should one be there already, the swap quantises the
    # model's layers under it and leaves the LoRA's own: the same transformer output either way.
    after = copy.deepcopy(flux["pipe"])
    quantise_linear_layers(after.transformer, kind, "cpu", torch.float32)
    with_lora(after, flux["loras"]["style"])
    before = with_lora(copy.deepcopy(flux["pipe"]), flux["loras"]["style"])
    swapped = quantise_linear_layers(before.transformer, kind, "cpu", torch.float32)
    inputs = flux_inputs(flux["pipe"].transformer)
    with torch.inference_mode():
        expected = after.transformer(**inputs).sample
        got = before.transformer(**inputs).sample
    assert torch.equal(got, expected)
    assert swapped == sum(type(m) is torch.nn.Linear for m in flux["pipe"].transformer.modules())
    wrapped = before.transformer.transformer_blocks[0].attn.to_q
    assert type(wrapped.base_layer).__name__ == LAYER[kind]
    assert type(wrapped.lora_A["lora"]) is torch.nn.Linear and type(wrapped.lora_B["lora"]) is torch.nn.Linear


@pytest.mark.parametrize("layout", [flux_kohya_lora, flux_xlabs_lora])
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_kohya_and_xlabs_flux_loras_load_on_quantised_layers(flux, tmp_path, kind, layout):
    # diffusers converts these (kohya's fused qkv split three ways) and checks each layer's shape, which a
    # packed NF4 weight hides (it reads the quantisation state's): the converted LoRA lands on every layer
    # it names and computes as on the dequantised model.
    path = save_lora(layout(flux["pipe"].transformer, seed=3), tmp_path / "lora.safetensors")
    quantised = copy.deepcopy(flux["pipe"])
    quantise_linear_layers(quantised.transformer, kind, "cpu", torch.float32)
    model = dequantised(flux["pipe"].transformer, quantised.transformer, kind)
    with_lora(quantised, path)
    # The pipeline's other components are shared, unchanged: these LoRAs hold transformer layers only.
    reference = with_lora(type(flux["pipe"])(**(flux["pipe"].components | {"transformer": model})), path)
    wrapped = {name for name, module in quantised.transformer.named_modules() if hasattr(module, "base_layer")}
    assert wrapped == {name for name, module in reference.transformer.named_modules() if hasattr(module, "base_layer")}
    assert wrapped
    inputs = flux_inputs(flux["pipe"].transformer)
    with torch.inference_mode():
        assert torch.equal(quantised.transformer(**inputs).sample, model(**inputs).sample)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_loras_switch_on_quantised_layers_as_on_the_dequantised_model(flux, paths, kind):
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=2, memory_mode=kind)
    backend = make_backend(paths)

    def image(prompt):
        return pixels(run(backend, request_for(flux["folder"], prompt=prompt, **values))[0].images[0])

    plain = image("a red circle")
    styled = image("a red circle <lora:style:1>")
    transformer = backend._pipe.transformer
    wrapped = transformer.transformer_blocks[0].attn.to_q
    assert type(wrapped.base_layer).__name__ == LAYER[kind] and type(wrapped.lora_A).__name__ == "ModuleDict"
    other = image("a red circle <lora:other:1>")  # the next job, another LoRA: "style" stays loaded, unused
    weight_zero = image("a red circle <lora:style:0>")
    without = image("a red circle")
    assert backend.memory_mode == kind and backend._pipe.transformer is transformer  # never loaded again

    effect = np.abs(styled.astype(float) - plain.astype(float)).mean()
    assert effect > 5, effect  # measured 22 levels (nf4 and int8)
    assert np.array_equal(weight_zero, plain) and np.array_equal(without, plain)
    # The same LoRAs on the model the quantised layers stand for. Tolerance: none. On a CPU the layers
    # multiply by their dequantised weights in float32 (quantise_linear_layers leaves them in training mode
    # for this) and the LoRA adds its full-precision product, as on the dequantised model.
    request = request_for(flux["folder"], prompt="a red circle", steps=2)
    model = dequantised(flux["pipe"].transformer, transformer, kind)
    for got, lora in ((styled, "style"), (other, "other")):
        expected = bare_image(with_lora(bare_flux(flux["folder"], copy.deepcopy(model)), flux["loras"][lora]),
                              request, guidance_scale=3.5, max_sequence_length=512)  # fmt: skip
        assert np.array_equal(got, expected), (lora, np.abs(got.astype(float) - expected.astype(float)).mean())


# On CUDA in fp16: nf4 layers dequantise to fp16 and multiply (as the dequantised fp16 model does), and the
# LoRA runs in float32 (PEFT leaves it in the dtype it was made in beside a packed base layer, rather than the
# model's fp16): expected within a level of the dequantised model with the same LoRA. int8 layers quantise
# their inputs too, row by row (LLM.int8, inputs over 6 in fp16): expected within the int8 mode's distance
# from full precision (MODE_TOLERANCE in test_bitsandbytes.py), stated before a GPU has run it.
CUDA_TOLERANCE = {"nf4": 1.0, "int8": 2.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the nf4/int8 modes' CUDA kernels need a CUDA GPU")
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_on_cuda_loras_switch_on_quantised_layers_as_on_the_dequantised_model(flux, paths, kind):
    values = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=2, memory_mode=kind, device="cuda",
                  precision="fp16")  # fmt: skip
    backend = make_backend(paths)
    request = request_for(flux["folder"], prompt="a red circle", **values)

    def image(prompt):
        return pixels(run(backend, replace(request, prompt=prompt))[0].images[0])

    plain = image("a red circle")
    styled = image("a red circle <lora:style:1>")
    other = image("a red circle <lora:other:1>")
    weight_zero = image("a red circle <lora:style:0>")
    assert type(backend._pipe.transformer.proj_out).__name__ == LAYER[kind]
    assert np.abs(styled.astype(float) - plain.astype(float)).mean() > 5
    # A disabled LoRA layer calls its base layer alone: the same kernels, the same pixels.
    assert np.array_equal(weight_zero, plain)
    model = dequantised(flux["pipe"].transformer, backend._pipe.transformer, kind)
    for got, lora in ((styled, "style"), (other, "other")):
        pipe = with_lora(bare_flux(flux["folder"], copy.deepcopy(model)), flux["loras"][lora])
        expected = bare_image(pipe.to("cuda", torch.float16), request, guidance_scale=3.5, max_sequence_length=512)
        error = np.abs(got.astype(float) - expected.astype(float)).mean()
        assert error < CUDA_TOLERANCE[kind], (lora, error)


def test_leaving_the_nf4_mode_brings_the_lora_back_on_the_full_precision_model(flux, paths):
    # nf4 is sticky (dit_memory.STICKY): the model is loaded again, and the job's LoRA with it, not the
    # adapters of the quantised model (which went with it).
    values = dict(prompt="a red circle <lora:style:1>", negative_prompt="", distilled_cfg_scale=3.5, steps=2)
    backend = make_backend(paths)
    run(backend, request_for(flux["folder"], memory_mode="nf4", **values))
    got = pixels(run(backend, request_for(flux["folder"], memory_mode="full", **values))[0].images[0])
    assert type(backend._pipe.transformer.transformer_blocks[0].attn.to_q.base_layer) is torch.nn.Linear
    request = request_for(flux["folder"], prompt="a red circle", steps=2)
    pipe = with_lora(bare_flux(flux["folder"]), flux["loras"]["style"])
    assert np.array_equal(got, bare_image(pipe, request, guidance_scale=3.5, max_sequence_length=512))
