"""ComfyUI's scaled-fp8 text encoders kept in fp8 in memory: each linear layer holds the file's fp8 weight and
its float32 scale and computes `(weight.float() * scale).to(dtype)` when it runs.

Why: `t5xxl_fp8_e4m3fn_scaled` is 4.9 GB, dequantised at load 9.5 GB in bf16 and 19 GB in float32 (kept so,
about 5.9 and 8.2 GB: its `wo` layers, 1.0B of its 4.8B weights, and the embedding stay at the dtype, below);
Qwen2.5-VL 7B's 8.3B weights are 16.6 GB in bf16, about half that in fp8. Plain fp8 encoders stay small through
diffusers' layer-wise casting, which casts a layer up without a scale; GGUF encoders keep their blocks
(gguf_layers.py). This does the same for the scaled files, with the packed-layer swap gguf_layers.keep_packed
makes.

Same numbers as dequantising at load (quantised_weights.dequantise_scaled_fp8): the product is taken in
float32 and rounded once to the activations' dtype, which is the job's dtype every layer here runs in, so the
weight each layer multiplies by is the one the load-time product gave, bit for bit, and so is the picture.

What stays dequantised at load, as before: tensors that are no linear weight (embeddings, norms, biases), T5's
feed-forward output `wo` (T5 reads `wo.weight.dtype` and casts its input to it; at float16 transformers keeps
`wo` in float32) and CLIP encoders (load_encoder decides): Marble puts LoRAs on CLIP (PEFT wraps nn.Linear
layers only; LyCORIS files add to `weight`), never on T5 or Qwen, and a CLIP-L gains 0.12 GB.

Storage: the fp8 bytes (as uint8) and the scale's bits (as int32) are frozen parameters, not buffers and not
float tensors. Integer tensors are left alone by `.to(dtype)` (a float8 or float32 tensor would be cast: the
scale rounded to bf16 changes the numbers), and as parameters the offload hooks move them as weights
(diffusers' sequential offload leaves the buffers of a text encoder, which holds no parameter of its own at
its top level, on the GPU; GGUF blocks are buffers). `stored_fp8(layer)` views the fp8 weight back.

Runs on the generation thread; torch is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from desktop.engine.backends.gguf_layers import Packed, packed_linear


@dataclass(frozen=True)
class ScaledWeight(Packed):
    """A scaled-fp8 weight as its file stores it: the fp8 tensor, its float32 scale (a scalar, or a column of
    one per output row) and the dtype the model computes in."""

    weight: Any  # torch.Tensor, float8_e4m3fn or float8_e5m2
    scale: Any  # torch.Tensor, float32, broadcasting over `weight`
    dtype: Any  # torch.dtype

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(self.weight.shape)

    def linear(self, plain: Any) -> Any:
        import torch

        storage = self.weight.dtype
        stored = {"fp8_bits": self.weight.view(torch.uint8), "scale_bits": self.scale.contiguous().view(torch.int32)}

        def unpack(layer: Any) -> Any:
            return layer.fp8_bits.view(storage).to(torch.float32) * layer.scale_bits.view(torch.float32)

        layer = packed_linear(plain, stored, unpack, f"scaled {str(storage).removeprefix('torch.')}")
        layer.storage = storage
        return layer

    def unpacked(self) -> Any:
        import torch

        return (self.weight.to(torch.float32) * self.scale).to(self.dtype)


def keeper(dtype: Any) -> Any:
    """The `keep` argument of quantised_weights.dequantise_scaled_fp8 that keeps each scaled weight in fp8."""

    def keep(weight: Any, scale: Any) -> ScaledWeight:
        return ScaledWeight(weight, scale, dtype)

    return keep


def stored_fp8(layer: Any) -> Any | None:
    """The fp8 weight a layer made here holds (a view of its bytes), or None for any other layer."""
    bits = getattr(layer, "fp8_bits", None)
    return None if bits is None else bits.view(layer.storage)
