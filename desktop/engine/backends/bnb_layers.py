"""Text encoders saved with bitsandbytes (nf4 / fp4 / LLM.int8) kept packed in memory: each linear layer holds
the file's codes and statistics and dequantises its weight when it runs.

Why: an nf4 file stores a linear weight in half a byte (an int8 one in a byte), but dequantised at load, as
before, a T5-XXL cost 9.5 GB in bf16 and 19 GB in float32 whatever its file held. transformers loads
bitsandbytes layers only from its own folders (through its quantizer), never from a single file, so the
layers here do what gguf_layers and scaled_fp8_layers do, with the packed-layer swap gguf_layers.keep_packed
makes: the weight is dequantised for each call. The encoder runs once per prompt
(the prompt cache skips repeats), so the extra work is small beside the memory saved.

Same numbers as dequantising at load: each layer calls the very function the load-time reader uses
(quantised_weights: bitsandbytes' dequantize_4bit with the file's quantisation state, or LLM.int8's rows
times their scales in float32) and casts the result to the activations' dtype, which is the job's dtype
every layer here runs in: the weight each layer multiplies by is the one the load gave, bit for bit.

A damaged file is still refused at load, by name: quantised_weights checks each 4-bit weight's parts by their
sizes there (codes, statistics per block, levels) without dequantising it, so a packed encoder loads sooner
than a dequantised one, and a statistic cut short is refused rather than read past its end.

What stays dequantised at load, as before: tensors that are no linear weight (embeddings, norms, biases),
T5's feed-forward output `wo` (T5 casts its input to `wo.weight.dtype`; the files transformers saves leave
it unquantised, in float32, anyway) and CLIP encoders (load_encoder decides): Marble puts LoRAs on CLIP's
layers, never on T5 or Qwen.

Storage: the file's tensors as frozen integer parameters, as scaled_fp8_layers keeps its fp8 weights: codes
(uint8) and int8 rows as they are, float32 statistics (absmax, quantisation maps, int8 row scales) as their
bits in int32, so `.to(dtype)` leaves them alone and `.to(device)` and the offload hooks move them. The
quantisation state's description (a JSON of shape, block size, dtype) stays with the layer on the CPU.

Runs on the generation thread; torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from desktop.engine.backends.gguf_layers import Packed, packed_linear

_PREFIX = "bnb_"  # a layer's stored tensors: bnb_weight (the codes or rows), bnb_absmax, bnb_scale, ...


@dataclass(frozen=True)
class BitsandbytesWeight(Packed):
    """A bitsandbytes weight as its file stores it: its tensors by part name (`weight` the codes), the
    load-time function that dequantises them (to float32 or the file's dtype) and its shape."""

    tensors: dict[str, Any]  # part -> torch.Tensor
    values: Callable[[dict[str, Any]], Any]
    shape: tuple[int, ...]
    shown: str  # "nf4 (bitsandbytes)", ...

    def linear(self, plain: Any) -> Any:
        # The layer's function holds the dequantiser and the parts' dtypes, never the tensors: `.to(device)`
        # replaces the parameters, and a tensor held here would keep its old copy alive.
        values = self.values
        stored = {_PREFIX + part: _as_integers(tensor) for part, tensor in self.tensors.items()}

        def unpack(layer: Any) -> Any:
            return values(stored_tensors(layer))

        layer = packed_linear(plain, stored, unpack, self.shown)
        layer.bnb_dtypes = {part: tensor.dtype for part, tensor in self.tensors.items()}
        return layer

    def unpacked(self) -> Any:
        return self.values(self.tensors)  # cast to the job's dtype by load_encoder, as the load-time weights are


def keeper(shown: str) -> Any:
    """The `keep` argument of quantised_weights.dequantise_bitsandbytes that keeps each weight packed; `shown`:
    its format as layers print it."""

    def keep(tensors: dict[str, Any], values: Callable[[dict[str, Any]], Any], shape: tuple[int, ...]) -> Packed:
        return BitsandbytesWeight(tensors, values, shape, shown)

    return keep


def stored_tensors(layer: Any) -> dict[str, Any] | None:
    """The file's tensors a layer made here holds, by part name, in their file dtypes (views of the stored
    integers); None for any other layer."""
    dtypes = getattr(layer, "bnb_dtypes", None)
    if dtypes is None:
        return None
    return {part: getattr(layer, _PREFIX + part).view(dtype) for part, dtype in dtypes.items()}


def _as_integers(tensor: Any) -> Any:
    """`tensor` itself if integer typed, else its bits as integers of the same width (a view)."""
    import torch

    if not tensor.is_floating_point():
        return tensor
    return tensor.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])
