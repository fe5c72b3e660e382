"""Quantised safetensors formats told apart from their tensor names, beside plain fp8 (library/dit.py):

- ComfyUI's "scaled fp8": a `scaled_fp8` marker tensor and, per linear layer, an fp8 `weight` with a
  float32 `scale_weight` (the true weight is their product) and sometimes a `scale_input` (used only by
  fp8 matrix multiplication, which Marble does not do: it computes with the dequantised weight). ComfyUI's
  newer mixed-precision files name the same per-tensor scales `weight_scale` / `input_scale` (ComfyUI
  converts the old names to these), with a `comfy_quant` tensor per layer and no marker; their fp8 layers
  may be fewer than the bf16 ones. Its block-scaled formats (nvfp4: `weight_scale_2`; block scales that
  are not one float a tensor or a row) are refused by name.
- ComfyUI's int8 files (its "int8_tensorwise" format, the form Comfy-Org ships Qwen-Image 2.1, Krea 2 and
  others in): per linear layer an int8 `weight` with a float `weight_scale` per row (or one for the tensor)
  beside the `comfy_quant` JSON tensor, which may say `"convrot": true` and a `convrot_groupsize`: the weight
  was rotated group-wise by a regular Hadamard matrix before it was quantised (ConvRot), which Marble undoes
  at load (backends/quantised_weights.py). Code "I8_SCALED".
- bitsandbytes: Forge's NF4/FP4 files (`*.weight` packed in uint8 beside `*.weight.absmax`,
  `*.weight.quant_map`, `*.weight.quant_state.bitsandbytes__nf4`) and LLM.int8 files (`*.weight` in int8
  beside `*.SCB`).

The result is a weight-format code stored in the library record's `dtype` ("F8_E4M3_SCALED", "BNB_NF4"),
shown by `shown_format`. Header-only: no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Protocol

SCALED_FP8_MARKER = "scaled_fp8"
SCALE_WEIGHT = ".scale_weight"
SCALE_INPUT = ".scale_input"
WEIGHT_SCALES = (SCALE_WEIGHT, ".weight_scale")
SKIPPED_AT_LOAD = (SCALE_INPUT, ".input_scale", ".comfy_quant")
SCALED_SUFFIX = "_SCALED"
# Scaled fp8 layers beside more bf16/fp16 weights than fp8 ones ("fp8mixed" files).
MIXED_SCALED = "MIXED" + SCALED_SUFFIX
_FLOAT_SCALES = ("F32", "F16", "BF16")
BNB_NF4, BNB_FP4, BNB_INT8 = "BNB_NF4", "BNB_FP4", "BNB_INT8"
# bitsandbytes' serialised 4-bit quantisation state: tensors stored after `<layer>.weight.`.
BNB_4BIT_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_BNB_STATE = ".quant_state.bitsandbytes__"
INT8_SCALED = "I8" + SCALED_SUFFIX
SHOWN = {BNB_NF4: "nf4 (bitsandbytes)", BNB_FP4: "fp4 (bitsandbytes)", BNB_INT8: "int8 (bitsandbytes)",
         INT8_SCALED: "int8 scaled (ComfyUI)"}  # fmt: skip
BITSANDBYTES = (BNB_NF4, BNB_FP4, BNB_INT8)


class _Shaped(Protocol):
    dtype: str
    shape: tuple[int, ...]


def is_scaled_fp8(names: Iterable[str]) -> bool:
    return any(name.endswith(WEIGHT_SCALES) or name.rsplit(".", 1)[-1] == SCALED_FP8_MARKER for name in names)


def block_scaled(tensors: Mapping[str, _Shaped]) -> str | None:
    """The first tensor of a block-scaled quantisation Marble cannot dequantise (ComfyUI's nvfp4, mxfp8), or None."""
    for name, info in tensors.items():
        if name.endswith(".weight_scale_2"):
            return name
        if name.endswith(WEIGHT_SCALES) and (info.dtype not in _FLOAT_SCALES or sum(d > 1 for d in info.shape) > 1):
            return name
    return None


def bitsandbytes_kind(names: Iterable[str]) -> str | None:
    """BNB_NF4 / BNB_FP4 / BNB_INT8 when the tensors are bitsandbytes-serialised weights, else None."""
    int8 = False
    for name in names:
        if _BNB_STATE + "nf4" in name:
            return BNB_NF4
        if _BNB_STATE + "fp4" in name:
            return BNB_FP4
        int8 = int8 or name.endswith(".SCB")
    return BNB_INT8 if int8 else None


def is_bookkeeping(name: str) -> bool:
    """A tensor that describes how another is stored (a scale, a quantisation state), not a weight."""
    if name.endswith((*WEIGHT_SCALES, *SKIPPED_AT_LOAD, ".SCB", ".weight_format")) or name.endswith(SCALED_FP8_MARKER):
        return True
    return ".weight." in name and name.rsplit(".weight.", 1)[1].startswith((*BNB_4BIT_PARTS, "quant_state"))


def weight_format(tensors: Mapping[str, _Shaped], common_dtype: str) -> str:
    """The code the library stores as a DiT's dtype: the most common tensor type, or the quantised format."""
    kind = bitsandbytes_kind(tensors)
    if kind is not None:
        return kind
    if is_scaled_fp8(tensors):
        if any(_int8_weight(tensors, name) for name in tensors):
            return INT8_SCALED
        return common_dtype + SCALED_SUFFIX if common_dtype.startswith("F8_") else MIXED_SCALED
    return common_dtype


def _int8_weight(tensors: Mapping[str, _Shaped], name: str) -> bool:
    """An int8 weight beside its scale (ComfyUI's int8 layers)."""
    if not name.endswith(".weight") or tensors[name].dtype != "I8":
        return False
    return any(name.removesuffix(".weight") + suffix in tensors for suffix in WEIGHT_SCALES)


def parameters(tensors: Mapping[str, _Shaped], kind: str | None) -> int:
    """Weight elements, without the bookkeeping tensors; a 4-bit weight holds two a byte."""
    count = 0
    for name, info in tensors.items():
        if is_bookkeeping(name):
            continue
        elements = math.prod(info.shape)
        count += 2 * elements if kind in (BNB_NF4, BNB_FP4) and info.dtype == "U8" else elements
    return count


def shown_format(code: str) -> str | None:
    """How library rows name a bitsandbytes code; None for the other codes."""
    return SHOWN.get(code)


def folder_format(transformer_config: Mapping[str, object]) -> str | None:
    """The bitsandbytes code of a diffusers folder saved quantised (its transformer/config.json's
    `quantization_config`), else None."""
    config = transformer_config.get("quantization_config")
    if not isinstance(config, Mapping) or config.get("quant_method") != "bitsandbytes":
        return None
    if config.get("load_in_8bit"):
        return BNB_INT8
    return BNB_FP4 if config.get("bnb_4bit_quant_type") == "fp4" else BNB_NF4
