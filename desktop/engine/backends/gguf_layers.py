"""GGUF text encoders kept quantised in memory: each linear layer holds its GGUF blocks and dequantises them
when it runs.

Why: a T5-XXL in Q8_0 is 5.1 GB and in bf16 9.5 GB; a Qwen2.5-VL 7B in Q4_K_M about 4.7 GB against 15 GB.
Dequantised once at load (as before), a GGUF encoder cost the card or the RAM as much as a full-precision
one, which defeats the reason users pick such files. transformers runs no quantised T5 or Qwen kernels, so
the layers here do what diffusers' GGUF transformer layers do: dequantise the weight for each call and run
a plain linear layer on it. The encoder runs once per prompt (and the prompt cache skips repeats), so the
extra work is small beside the memory saved.

What stays dequantised at load: embeddings and norms (not linear layers), T5's feed-forward output `wo`
(T5 casts its input to `wo`'s weight dtype, which for packed blocks would be uint8), and tensors in types
diffusers has no torch dequantiser for (and the unquantised F32/F16/BF16 ones, which gain nothing).

The blocks are dequantised in float32 and then cast to the activations' dtype: the same numbers as
gguf's numpy dequantisation at load gave (a float16 scale times its integer codes is exact in float32), so
a job's picture does not change with this; diffusers' own layers multiply in float16 (tested in
tests/engine/test_encoder_library.py).

Runs on the generation thread; torch and diffusers are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Packed:
    """A weight kept as its file stores it, standing in a state dict until `keep_packed` places it: as a
    linear layer that unpacks it on each call, or (any other tensor) unpacked once."""

    shape: tuple[int, ...]

    def linear(self, plain: Any) -> Any:
        """The module that runs as `plain` (an nn.Linear still on the meta device) with this weight."""
        raise NotImplementedError

    def unpacked(self) -> Any:
        """The weight as a plain tensor (float32 or the compute dtype), for a tensor that stays plain."""
        raise NotImplementedError


@dataclass(frozen=True)
class PackedWeight(Packed):
    """A GGUF tensor as stored: its bytes (uint8, one row per output row), its GGML type and logical shape."""

    blocks: Any  # torch.Tensor, uint8
    quant_type: int
    shape: tuple[int, ...]

    def linear(self, plain: Any) -> Any:
        kind, shape = self.quant_type, self.shape

        def unpack(layer: Any) -> Any:
            return dequantise(PackedWeight(layer.blocks, kind, shape))

        # A frozen parameter, as the scaled-fp8 and bitsandbytes layers keep theirs: never cast by .to(dtype)
        # (integer tensors are left alone), never trained, counted in the model's size for the auto memory mode,
        # and moved off the GPU by sequential offload, which leaves a text encoder's buffers where they are
        # (diffusers offloads buffers only for a module with parameters of its own; an encoder has none).
        return packed_linear(plain, {"blocks": self.blocks}, unpack, f"gguf type {kind}")

    def unpacked(self) -> Any:
        return dequantise(self)


def read_gguf(
    path: Path, rename: Callable[[str], str], keep: Callable[[str], bool] | None = None
) -> dict[str, Any]:
    """A llama.cpp-named encoder GGUF by transformers' names: 2-D tensors in a type a layer can run packed
    stay PackedWeight, the rest dequantised to float32 tensors (by gguf itself). `keep(name)`: only the
    tensors it accepts (by their new names) are read."""
    import gguf
    import numpy as np
    import torch

    packable = _packable_types()
    reader = gguf.GGUFReader(str(path))
    state: dict[str, Any] = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(list(tensor.shape)))
        name = rename(tensor.name)
        if keep is not None and not keep(name):
            continue
        if len(shape) == 2 and int(tensor.tensor_type) in packable:
            # A copy: the reader maps the file, and its arrays are read-only views of it.
            blocks = torch.from_numpy(np.array(tensor.data, dtype=np.uint8).reshape(shape[0], -1))
            state[name] = PackedWeight(blocks, int(tensor.tensor_type), shape)
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        state[name] = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
    return state


def keep_packed(model: Any, state: dict[str, Any], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Swap each linear layer of `model` whose weight `state` holds Packed for a layer that keeps it so;
    returns `state` without those weights and with every other Packed tensor unpacked.
    `skip`: layer-name endings that stay plain (T5's `wo`)."""
    import torch

    rest: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(value, Packed):
            rest[key] = value
            continue
        layer_name = key.removesuffix(".weight")
        layer = model.get_submodule(layer_name) if key.endswith(".weight") else None
        if isinstance(layer, torch.nn.Linear) and not layer_name.endswith(skip):
            parent, _, child = layer_name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, value.linear(layer))
        else:
            rest[key] = value.unpacked()
    return rest


def dequantise(weight: PackedWeight) -> Any:
    """The float32 weight a PackedWeight holds."""
    import torch
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    block_size, type_size = GGML_QUANT_SIZES[weight.quant_type]
    blocks = weight.blocks.reshape(-1, type_size)
    values = dequantize_functions[weight.quant_type](blocks, block_size, type_size, dtype=torch.float32)
    return values.reshape(weight.shape)


def _packable_types() -> set[int]:
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, UNQUANTIZED_TYPES

    return {int(kind) for kind in SUPPORTED_GGUF_QUANT_TYPES if kind not in UNQUANTIZED_TYPES}


def packed_linear(plain: Any, stored: dict[str, Any], unpack: Callable[[Any], Any], shown: str) -> Any:
    """A module that runs as `plain` (an nn.Linear still on the meta device) from the `stored` tensors (integer
    typed, so .to(dtype) leaves them as they are), held as frozen parameters (so every offload mode moves
    them); `unpack(module)` gives the weight from them on their device, cast to the activations' dtype on each
    call."""
    import torch

    class PackedLinear(torch.nn.Module):
        """y = x W^T + b with W unpacked from the stored tensors on each call."""

        def __init__(self) -> None:
            super().__init__()
            self.in_features, self.out_features = plain.in_features, plain.out_features
            for name, tensor in stored.items():
                self.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
            # Filled by load_state_dict with the file's bias, if the layer has one (T5's and Qwen's
            # projections have none; Qwen's q/k/v do).
            self.bias = None if plain.bias is None else torch.nn.Parameter(torch.empty_like(plain.bias, device="meta"))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            full = unpack(self).to(x.dtype)
            return torch.nn.functional.linear(x, full, None if self.bias is None else self.bias.to(x.dtype))

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, {shown}"

    return PackedLinear()
