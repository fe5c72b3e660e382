"""Quantised safetensors formats told apart from their tensor names, beside plain fp8 (library/dit.py):

- ComfyUI's "scaled fp8": a `scaled_fp8` marker tensor and, per linear layer, an fp8 `weight` with a
  float32 `scale_weight` (the true weight is their product) and sometimes a `scale_input` (used only by
  fp8 matrix multiplication, which Marble does not do: it computes with the dequantised weight).
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
SCALED_SUFFIX = "_SCALED"
BNB_NF4, BNB_FP4, BNB_INT8 = "BNB_NF4", "BNB_FP4", "BNB_INT8"
# bitsandbytes' serialised 4-bit quantisation state: tensors stored after `<layer>.weight.`.
BNB_4BIT_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_BNB_STATE = ".quant_state.bitsandbytes__"
SHOWN = {BNB_NF4: "nf4 (bitsandbytes)", BNB_FP4: "fp4 (bitsandbytes)", BNB_INT8: "int8 (bitsandbytes)"}
BITSANDBYTES = (BNB_NF4, BNB_FP4, BNB_INT8)


class _Shaped(Protocol):
    dtype: str
    shape: tuple[int, ...]


def is_scaled_fp8(names: Iterable[str]) -> bool:
    return any(name.endswith(SCALE_WEIGHT) or name.rsplit(".", 1)[-1] == SCALED_FP8_MARKER for name in names)


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
    if name.endswith((SCALE_WEIGHT, SCALE_INPUT, ".SCB", ".weight_format")) or name.endswith(SCALED_FP8_MARKER):
        return True
    return ".weight." in name and name.rsplit(".weight.", 1)[1].startswith((*BNB_4BIT_PARTS, "quant_state"))


def weight_format(tensors: Mapping[str, _Shaped], common_dtype: str) -> str:
    """The code the library stores as a DiT's dtype: the most common tensor type, or the quantised format."""
    kind = bitsandbytes_kind(tensors)
    if kind is not None:
        return kind
    if common_dtype.startswith("F8_") and is_scaled_fp8(tensors):
        return common_dtype + SCALED_SUFFIX
    return common_dtype


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
